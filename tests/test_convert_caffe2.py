"""Safe loading of Caffe2 weight pickles: round trips, every malformed file, hostile pickles."""

import os
import pickle
import re

import numpy as np
import pytest

from ig65m.convert.caffe2 import load_caffe2_blobs, save_caffe2_blobs
from ig65m.errors import Ig65mError


def _blobs():
    rng = np.random.default_rng(0)
    return {"conv1_w": rng.standard_normal((4, 3, 1, 7, 7)).astype(np.float32),
            "conv1_spatbn_relu_riv": rng.random(4).astype(np.float32),
            "model_iter": np.array([1200], dtype=np.int64)}


def _assert_same(loaded, expected):
    assert sorted(loaded) == sorted(expected)
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)


def test_python2_style_pickle_round_trips(tmp_path):
    path = save_caffe2_blobs(tmp_path / "w.pkl", _blobs())
    data = path.read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in data and b"_codecs" not in data
    _assert_same(load_caffe2_blobs(path), _blobs())


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_python3_pickles_of_every_protocol_load(tmp_path, protocol):
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"blobs": _blobs()}, protocol=protocol))
    _assert_same(load_caffe2_blobs(path), _blobs())


def test_numpy_scalars_become_arrays(tmp_path):
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"lr": np.float32(0.1), "it": 3}}, protocol=2))
    blobs = load_caffe2_blobs(path)
    assert blobs["lr"].shape == () and blobs["lr"].dtype == np.float32 and blobs["it"] == 3


def _write(tmp_path, data):
    path = tmp_path / "bad.pkl"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"PK\x03\x04 this is a zip file, not a pickle", "is not a pickle .*starts with byte b'P'"),
    (b"\x89PNG\r\n\x1a\n", "is not a pickle"),
    (pickle.dumps([1, 2, 3], protocol=2), re.escape("no 'blobs' dict (found list)")),
    (pickle.dumps({"weights": {}}, protocol=2), re.escape("no 'blobs' dict (found ['weights'])")),
    (pickle.dumps({"blobs": [np.zeros(2)]}, protocol=2), "no 'blobs' dict"),
    (pickle.dumps({"blobs": {"name": "text"}}, protocol=2), "blob 'name'"),
    (pickle.dumps({"blobs": {"o": np.array([1, "a"], dtype=object)}}, protocol=2),
     "blob 'o' in .* is not a numeric array \\(object\\)"),
])
def test_malformed_files_fail_with_one_clear_error(tmp_path, data, message):
    with pytest.raises(Ig65mError, match=message):
        load_caffe2_blobs(_write(tmp_path, data))


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.999])
def test_truncated_pickle_is_reported_as_truncated(tmp_path, keep):
    data = save_caffe2_blobs(tmp_path / "w.pkl", _blobs()).read_bytes()
    with pytest.raises(Ig65mError, match="is truncated"):
        load_caffe2_blobs(_write(tmp_path, data[:int(len(data) * keep)]))


def test_missing_file(tmp_path):
    with pytest.raises(Ig65mError, match="not found"):
        load_caffe2_blobs(tmp_path / "absent.pkl")


def _hostile_pickles(marker):
    """Pickles that would create `marker` if any of their globals were resolved and called."""
    command = f"touch {marker}"

    class System:
        def __reduce__(self):
            return os.system, (command,)

    class Eval:
        def __reduce__(self):
            return eval, (f"open({str(marker)!r}, 'w').close()",)

    system = pickle.dumps({"blobs": {"conv1_w": System()}}, protocol=2)
    return {
        "os.system inside blobs": system,
        "eval inside blobs": pickle.dumps({"blobs": {"conv1_w": Eval()}}, protocol=2),
        "os.system at top level, protocol 4": pickle.dumps(System(), protocol=4),
        # hand-written Python 2 opcodes: __builtin__.eval / os.system via GLOBAL + REDUCE
        "python 2 __builtin__.eval": (b"c__builtin__\neval\n(S'open(%r, \"w\").close()'\ntR."
                                      % str(marker).encode()),
        "python 2 os.system": b"cos\nsystem\n(S'%s'\ntR." % command.encode(),
        # INST calls find_class too; subprocess is never a numpy name
        "INST subprocess.Popen": b"(S'touch'\nS'%s'\nlp0\nisubprocess\nPopen\n." % str(
            marker).encode(),
        "numpy's own file loader": b"cnumpy\nload\n(S'%s'\ntR." % str(marker).encode(),
        "persistent id": b"\x80\x02P0\n.",
        "_codecs.encode with another codec": b"c_codecs\nencode\nX\x04\x00\x00\x00abcdX\x05\x00"
                                             b"\x00\x00rot13\x86R.",
    }


@pytest.mark.parametrize("name", sorted(_hostile_pickles("x")))
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    path = _write(tmp_path, _hostile_pickles(marker)[name])
    with pytest.raises(Ig65mError, match="refusing to load|not a Caffe2 weights pickle") as err:
        load_caffe2_blobs(path)
    assert "\n" not in str(err.value)
    assert not marker.exists(), "the hostile pickle's code ran"


def test_hostile_pickle_names_the_refused_global(tmp_path):
    path = _write(tmp_path, _hostile_pickles(tmp_path / "pwned")["python 2 os.system"])
    with pytest.raises(Ig65mError, match=r"refusing to load .*asks for os\.system.*nothing in it "
                                         r"was run"):
        load_caffe2_blobs(path)


def test_control_the_hostile_pickle_does_run_with_plain_pickle(tmp_path):
    """Proves the hostile fixtures are real: the standard unpickler does create the marker."""
    marker = tmp_path / "pwned"
    pickle.loads(_hostile_pickles(marker)["python 2 os.system"])
    assert marker.exists()
