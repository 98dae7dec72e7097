"""Weights file formats: read a file into its raw checkpoint, knowing nothing of any model.

`--weights` and the pretrained download accept what the authors published, not only our `.pth`:
a Caffe2 pickle (`.pkl`, read by the numpy-only unpickler), DeepMind's TensorFlow variables
(`.npz`, or a checkpoint prefix `.ckpt` / `.index`) and PyTorch state_dicts. Turning a checkpoint
into a model's state_dict is the job of the checkpoint filter its weights row names
(`ig65m.weights.Weights.filters`); this module only reads.
"""

from pathlib import Path

from ig65m.convert.caffe2 import load_caffe2_blobs
from ig65m.convert.tensorflow import read_tf_variables
from ig65m.errors import Ig65mError
from ig65m.weights import load_state_dict

FORMATS = ("pth", "caffe2", "tensorflow")
TF_SUFFIXES = (".npz", ".ckpt", ".index")
FORMAT_NAMES = {"pth": "a PyTorch state_dict", "caffe2": "a Caffe2 pickle",
                "tensorflow": "a TensorFlow checkpoint"}
FORMAT_TITLES = {"pth": "PyTorch", "caffe2": "Caffe2", "tensorflow": "TensorFlow"}


def detect_format(path):
    """The format of a weights file, from its suffix: .pkl -> caffe2, .npz/.ckpt/.index ->
    tensorflow, anything else -> pth."""
    suffix = Path(path).suffix
    if suffix == ".pkl":
        return "caffe2"
    return "tensorflow" if suffix in TF_SUFFIXES else "pth"


def read_checkpoint(path, file_format=None):
    """-> (format, checkpoint): {name: tensor} for pth, {blob: array} for caffe2, {variable:
    array} for tensorflow. `file_format` None detects it from the suffix."""
    path = Path(path)
    file_format = file_format or detect_format(path)
    if file_format == "tensorflow":
        prefix = path.with_suffix("") if path.suffix == ".index" else path
        return file_format, read_tf_variables(prefix)
    if not path.is_file():
        raise Ig65mError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise Ig65mError(f"{path} is an empty file; expected {FORMAT_NAMES[file_format]} "
                         f"(weights)")
    if file_format == "caffe2":
        return file_format, load_caffe2_blobs(path)
    return file_format, load_state_dict(path)
