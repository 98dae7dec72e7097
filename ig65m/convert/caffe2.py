"""Caffe2 weight pickles (VMZ IG-65M release): safe loading and the R(2+1)D-34 name map.

The release files are Python 2 pickles of `{"blobs": {name: numpy array}}`. Unpickling can run
arbitrary code, so `load_caffe2_blobs` uses an unpickler that resolves only the few globals a numpy
array needs; anything else (os.system, eval, ...) is refused before it is called.
"""

import codecs
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path

_ARRAY_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
_SCALAR = np.float32(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
_FROM_BUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (protocol 5)


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as Python 3 protocol-2 pickles use it for bytes; only latin-1 allowed."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin-1 strings")
    return text.encode("latin1")


# (module, name) as written in the pickle -> the object it may resolve to. numpy 1 wrote
# numpy.core.*, numpy 2 writes numpy._core.*; Python 2 files name `copy_reg`/`__builtin__`.
_ALLOWED = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _ARRAY_RECONSTRUCT
    _ALLOWED[(_module, "scalar")] = _SCALAR
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = _FROM_BUFFER
for _module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "ndarray")] = np.ndarray
    _ALLOWED[(_module, "dtype")] = np.dtype
_ALLOWED[("_codecs", "encode")] = _latin1_encode


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are numpy array and dtype reconstruction."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {pid!r}")


class _Refused(pickle.UnpicklingError):
    """A pickle asked for something a weights file never needs."""


def load_caffe2_blobs(path):
    """Read a Caffe2 weights pickle safely -> {blob name: numpy array}.

    Raises Ig65mError when `path` is missing, is not a pickle, is truncated, has no `blobs` dict,
    holds something other than numeric arrays, or asks for any global beyond numpy's array
    reconstruction (a hostile pickle is refused before anything in it runs).
    """
    path = Path(path)
    if not path.is_file():
        raise Ig65mError(f"Caffe2 pickle not found: {path}")
    try:
        with path.open("rb") as stream:
            _check_pickle_start(stream, path)
            content = _NumpyOnlyUnpickler(stream, encoding="latin1").load()
    except _Refused as err:
        raise Ig65mError(f"refusing to load {path}: it asks for {err}, which a Caffe2 weights "
                         f"pickle never needs (possibly hostile); nothing in it was run") from None
    except EOFError:
        raise Ig65mError(f"{path} is truncated (the pickle ends early)") from None
    except pickle.UnpicklingError as err:
        if "truncated" in str(err):
            raise Ig65mError(f"{path} is truncated (the pickle ends early)") from None
        raise Ig65mError(f"{path} is not a Caffe2 weights pickle ({_first_line(err)})") from None
    except MemoryError:
        raise Ig65mError(f"{path} asks for more memory than there is; not a weights "
                         f"pickle") from None
    except Exception as err:  # the unpickler raises many types for a corrupt file
        raise Ig65mError(f"{path} is not a Caffe2 weights pickle ({_first_line(err)})") from None
    return _blobs_of(content, path)


# The first opcode of any pickle of a dict or a global: PROTO (protocol 2+), MARK, EMPTY_DICT,
# EMPTY_LIST, GLOBAL. Checking it turns "not a pickle at all" into a clear message.
_PICKLE_STARTS = b"\x80(}]c"


def _check_pickle_start(stream, path):
    first = stream.read(1)
    if not first:
        raise Ig65mError(f"{path} is empty (truncated?); not a Caffe2 weights pickle")
    if first not in _PICKLE_STARTS:
        raise Ig65mError(f"{path} is not a pickle (it starts with byte {first!r}); expected a "
                         f"Caffe2 weights pickle (.pkl)")
    stream.seek(0)


def _first_line(err):
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _blobs_of(content, path):
    """Check the unpickled object is {"blobs": {str: numeric array}} -> the blobs dict."""
    if not isinstance(content, dict) or not isinstance(content.get("blobs"), dict):
        found = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise Ig65mError(f"{path} has no 'blobs' dict (found {found}); not a Caffe2 weights pickle")
    blobs = {}
    for name, value in content["blobs"].items():
        if isinstance(name, bytes):
            name = name.decode("latin1")
        if isinstance(value, (int, float, np.generic)) and not isinstance(value, bool):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise Ig65mError(f"blob {name!r} in {path} is not a numeric array ({kind})")
        blobs[str(name)] = value
    return blobs


class _Python2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 `str` (BINSTRING), as the Caffe2 release files have them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def save_caffe2_blobs(path, blobs):
    """Write {name: numpy array} as a Caffe2-style pickle `{"blobs": ...}`, atomically.

    The file is what Python 2 Caffe2 wrote (protocol 2, latin-1 strings, numpy.core globals), so
    tests and fixtures exercise the same bytes as the released weights.
    """
    stream = io.BytesIO()
    arrays = {str(name): np.asarray(value) for name, value in blobs.items()}
    _Python2Pickler(stream, protocol=2).dump({"blobs": arrays})
    # numpy 2 names its module numpy._core; numpy 1 (and so every release file) numpy.core
    data = stream.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
