"""The sidecar dataclass: validation, unknown keys kept, and one clear error in every reader."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.errors import Ig65mError
from ig65m.fileio import load_features, save_features
from ig65m.sidecar import Sidecar

ROWS = 3
GOOD = {"source": "v.mp4", "model": "m", "clips": [[0, 1], [1, 2], [2, 3.5]],
        "backend": "onnxruntime", "onnx": {"path": "m.onnx", "sha256": "ab"},
        "calibration": "cd", "precision": "int8", "interrupted": False, "step": 8}


def test_unknown_keys_survive_a_write_and_a_read(tmp_path):
    save_features(tmp_path / "f.npy", np.ones((ROWS, 4), np.float32), GOOD)
    _, meta = load_features(tmp_path / "f.npy")
    content = hashlib.sha256((tmp_path / "f.npy").read_bytes()).hexdigest()
    assert meta == {**GOOD, "clips": [[0.0, 1.0], [1.0, 2.0], [2.0, 3.5]],
                    "features_sha256": content}  # the writer records the content it wrote
    sidecar = Sidecar.read(tmp_path / "f.json", rows=ROWS)
    assert sidecar.model == "m" and sidecar.get("onnx") == GOOD["onnx"] and sidecar.get("step") == 8
    assert sidecar.clip_times(ROWS)[2] == (2.0, 3.5)
    assert Sidecar.from_dict({}).clip_times(2) == [(None, None)] * 2


@pytest.mark.parametrize("data, message", [
    ([[0, 1]], "must be a JSON object of the extraction's settings, got a list"),
    ("clips", "got a string"),
    ({"clips": "0-1"}, "'clips' must be a list of"),
    ({"clips": [[0, 1], [1]]}, "clip 1 is"),
    ({"clips": [[0, 1]] * 2}, "lists 2 clips for 3 feature rows"),
    ({"model": 3}, "'model' must be a string"),
])
def test_bad_sidecars_are_one_clear_error(data, message):
    with pytest.raises(Ig65mError, match=message):
        Sidecar.from_dict(data, rows=ROWS)


@pytest.fixture
def bad_sidecars(tmp_path):
    cases = {"list": [[0, 1]], "string": "hello", "count": {"clips": [[0, 1]]}}
    for name, data in cases.items():
        np.save(tmp_path / f"{name}.npy", np.ones((ROWS, 4), np.float32))
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    return tmp_path, cases


def _one_line_error(result):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sidecar" in lines[0], lines
    assert "IndexError" not in result.stderr and "Traceback" not in result.stderr


def test_semcode_index_build_and_index_query_refuse_bad_sidecars(bad_sidecars):
    """Issue 13 item 2: a sidecar that is a list or a string, or lists the wrong number of clips,
    is one `error:` line in each reader (index-query refuses before asking any server)."""
    folder, cases = bad_sidecars
    runner = CliRunner()
    for name in cases:
        features = str(folder / f"{name}.npy")
        _one_line_error(runner.invoke(main, ["semcode", features, str(folder / f"{name}.png")]))
        _one_line_error(runner.invoke(main, ["index-build", features, str(folder / f"idx_{name}")]))
        _one_line_error(runner.invoke(main, ["index-query", features, "--url",
                                             "http://127.0.0.1:9"]))
        assert not (folder / f"{name}.png").exists() and not (folder / f"idx_{name}").exists()


def test_index_client_imports_neither_flask_nor_faiss():
    code = ("import sys; import ig65m.index.client, ig65m.index.query; "
            "print(sorted(m for m in ('flask', 'faiss', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
