"""Caffe2 weight pickles (VMZ IG-65M release): safe loading and the R(2+1)D-34 name map.

The release files are Python 2 pickles of `{"blobs": {name: numpy array}}`. Unpickling can run
arbitrary code, so `load_caffe2_blobs` uses an unpickler that resolves only the few globals a numpy
array needs; anything else (os.system, eval, ...) is refused before it is called.
"""

import codecs
import io
import pickle
import re
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np

from ig65m.convert.shapes import fit_problems, on_meta
from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path
from ig65m.weights import describe_file

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
    except Ig65mError:
        raise
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
    except Exception as err:  # noqa: BLE001  (the unpickler raises many types for a corrupt file)
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
        raise Ig65mError(f"{path} is not a pickle (it starts with byte {first!r}: "
                         f"{describe_file(path)}); expected a Caffe2 weights pickle (.pkl)")
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

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

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


# --- R(2+1)D-34: Caffe2 VMZ blob names -> this package's state_dict keys -------------------------

_FIRST_BLOCK = {"layer1": 0, "layer2": 3, "layer3": 7, "layer4": 13}  # Caffe2 numbers blocks 0..15
_STEM = {"stem.0": "conv1_middle", "stem.1": "conv1_middle_spatbn_relu",
         "stem.3": "conv1", "stem.4": "conv1_spatbn_relu"}
# inside a block: torchvision's Conv2Plus1D is (spatial conv, BN, ReLU, temporal conv)
_BLOCK = {"conv{j}.0.0": "comp_{i}_conv_{j}_middle", "conv{j}.0.1": "comp_{i}_spatbn_{j}_middle",
          "conv{j}.0.3": "comp_{i}_conv_{j}", "conv{j}.1": "comp_{i}_spatbn_{j}",
          "downsample.0": "shortcut_projection_{i}", "downsample.1": "shortcut_projection_{i}_spatbn"}
# Caffe2 SpatialBN: scale, bias, running mean, running variance (named "riv" though it is not
# inverted); Conv and FC: weight (same layout as torch), FC bias
_SUFFIX = {"BatchNorm3d": {"weight": "_s", "bias": "_b", "running_mean": "_rm",
                           "running_var": "_riv"},
           "Conv3d": {"weight": "_w"}, "Linear": {"weight": "_w", "bias": "_b"}}


def _module_blob(module_name, num_classes):
    """Caffe2 blob prefix of a torch module name, e.g. layer2.0.conv1.0.3 -> comp_3_conv_1."""
    if module_name in _STEM:
        return _STEM[module_name]
    if module_name == "fc":
        return f"last_out_L{num_classes}"
    layer, block, rest = module_name.split(".", 2)
    index = _FIRST_BLOCK[layer] + int(block)
    for pattern, blob in _BLOCK.items():
        for j in (1, 2):
            if rest == pattern.format(j=j):
                return blob.format(i=index, j=j)
    raise KeyError(module_name)


def r2plus1d_34_blob_names(model, num_classes):
    """{state_dict key: Caffe2 blob name} for every parameter and running statistic of `model`, an
    R(2+1)D-34 with `num_classes` outputs (num_batches_tracked has no Caffe2 blob)."""
    names = {}
    for module_name, module in model.named_modules():
        for tensor_name, suffix in _SUFFIX.get(type(module).__name__, {}).items():
            names[f"{module_name}.{tensor_name}"] = _module_blob(module_name, num_classes) + suffix
    assert len(set(names.values())) == len(names), "two tensors would read the same blob"
    return names


def caffe2_head_classes(blobs):
    """Class counts of the classifier heads (`last_out_L{classes}_w`) found in `blobs`."""
    return sorted(int(m.group(1)) for name in blobs
                  if (m := re.fullmatch(r"last_out_L(\d+)_w", name)))


def r2plus1d_34_state_dict(blobs, num_classes, *, build):
    """Caffe2 VMZ R(2+1)D-34 blobs {name: array} -> state_dict of `build(num_classes=...)`, the
    R(2+1)D-34 builder (called on the meta device, for names and shapes only).

    The checkpoint filter of the IG-65M Caffe2 release. Pure: `blobs` is left as it is and the arrays are copied. Every blob is used exactly once and
    every parameter and buffer is written; otherwise Ig65mError names each missing, extra or wrongly
    shaped blob with both shapes. num_batches_tracked (no Caffe2 counterpart) is written as 0.
    """
    import torch

    heads = caffe2_head_classes(blobs)
    if heads and num_classes not in heads:
        raise Ig65mError(f"the Caffe2 blobs have a head for {' and '.join(map(str, heads))} "
                         f"classes (last_out_L{heads[0]}_w), not {num_classes}; use --classes "
                         f"{heads[0]} or the model that has it")
    model = on_meta(build, num_classes)
    expected = model.state_dict()
    names = r2plus1d_34_blob_names(model, num_classes)
    problems = fit_problems(blobs, names, expected, kind="blob")
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6
                                           else "")
        raise Ig65mError(f"the Caffe2 blobs do not fit R(2+1)D-34 with {num_classes} classes: "
                         f"{shown}")
    state = {}
    for key, tensor in expected.items():
        if key in names:
            state[key] = torch.from_numpy(np.array(blobs[names[key]], dtype=np.float32))
        else:
            state[key] = torch.zeros((), dtype=tensor.dtype)
    return state
