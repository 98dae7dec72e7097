import json
import os

import numpy as np
import pytest

from ig65m.errors import Ig65mError
from ig65m.fileio import FeatureWriter, atomic_path, load_features, save_features, sidecar_path


def test_streamed_rows_make_a_plain_npy(tmp_path):
    rows = np.random.default_rng(0).standard_normal((1001, 7)).astype(np.float32)
    with FeatureWriter(tmp_path / "f.npy") as writer:
        for start in range(0, 1001, 300):
            writer.write(rows[start:start + 300])
            assert not (tmp_path / "f.npy").exists()
        writer.commit({"clips": [[0, 1]] * 1001})
    loaded = np.load(tmp_path / "f.npy", allow_pickle=False)
    assert loaded.dtype == np.float32 and loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, rows)
    features, meta = load_features(tmp_path / "f.npy")
    assert meta["clips"][0] == [0, 1] and features.shape == (1001, 7)
    assert sorted(os.listdir(tmp_path)) == ["f.json", "f.npy"]
    assert oct((tmp_path / "f.npy").stat().st_mode & 0o777) != oct(0o600)


def test_an_error_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with FeatureWriter(tmp_path / "f.npy") as writer:
            writer.write(np.ones((2, 3)))
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "g.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_no_rows_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(Ig65mError):
        with FeatureWriter(tmp_path / "f.npy") as writer:
            writer.commit({})
    assert os.listdir(tmp_path) == []


def test_existing_output_survives_a_failed_rewrite(tmp_path):
    save_features(tmp_path / "f.npy", np.ones((2, 3)), {"v": 1})
    with pytest.raises(RuntimeError):
        with FeatureWriter(tmp_path / "f.npy") as writer:
            writer.write(np.zeros((5, 3)))
            raise RuntimeError("killed")
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), np.ones((2, 3)))
    assert json.loads(sidecar_path(tmp_path / "f.npy").read_text())["v"] == 1


def test_load_features_errors(tmp_path):
    with pytest.raises(Ig65mError, match="not found"):
        load_features(tmp_path / "nope.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(Ig65mError, match="not a .npy"):
        load_features(tmp_path / "text.npy")
    np.save(tmp_path / "one.npy", np.ones(5))
    with pytest.raises(Ig65mError, match="2-d"):
        load_features(tmp_path / "one.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(Ig65mError):
        load_features(tmp_path / "obj.npy")


def test_unwritable_destination(tmp_path):
    with pytest.raises(Ig65mError, match="does not exist"):
        FeatureWriter(tmp_path / "missing" / "f.npy")
    with pytest.raises(Ig65mError, match="folder"):
        FeatureWriter(tmp_path)
