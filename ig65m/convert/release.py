"""Convert released weights (Caffe2, TensorFlow, PyTorch ports) into `OUT.pth` and `OUT.onnx`, verified.

Both files are written under temporary names and renamed into place only after every check passed:
the state_dict fills the registry model strictly, reloads from disk (weights_only) to equal tensors,
and the ONNX model agrees with PyTorch through ONNX Runtime on random clips.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ig65m.convert.onnx import OnnxBackend, export_onnx
from ig65m.embedder import ClipEmbedder, run_torch
from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path, check_writable
from ig65m.models import get_spec, list_models
from ig65m.models.loading import WeightsFile, load_weights, read_state_dict
from ig65m.models.registry import has_foreign_release
from ig65m.weights import load_state_dict, sha256_file

ONNX_TOLERANCE = 1e-4
_log = logging.getLogger(__name__)
_OUTPUT_SUFFIXES = (".pth", ".onnx", ".pb")


@dataclass(frozen=True)
class Converted:
    """What `convert_caffe2` wrote: paths, their sha256, and the ONNX-vs-torch agreement."""

    pth: Path
    onnx: Path
    pth_sha256: str
    onnx_sha256: str
    max_abs_diff: float


def convertible_models():
    """Registry specs whose authors released weights in a foreign format (Caffe2, TensorFlow,
    PyTorch ports)."""
    return [spec for spec in list_models() if has_foreign_release(spec)]


def resolve_model(model=None, *, frames=None, classes=None):
    """The spec to convert into: `model` by name, or the one with these clip frames and classes.

    Options given beside `model` must agree with it (a wrong --classes is a user error).
    """
    choices = [spec for spec in convertible_models() if spec.name.startswith("r2plus1d_34_")]
    listing = ", ".join(f"{s.name} (--frames {s.weights.clip_frames} --classes "
                        f"{s.weights.num_classes})" for s in choices)
    if model is not None:
        spec = get_spec(model)
        if not has_foreign_release(spec):
            names = ", ".join(s.name for s in convertible_models())
            raise Ig65mError(f"{spec.name} has no Caffe2 / TensorFlow release to convert; "
                             f"convert reads the released weights of: {names}")
    else:
        if frames is None or classes is None:
            raise Ig65mError(f"give --model, or --frames and --classes; one of: {listing}")
        matches = [s for s in choices
                   if (s.weights.clip_frames, s.weights.num_classes) == (frames, classes)]
        if not matches:
            raise Ig65mError(f"no model has {frames}-frame clips and {classes} classes; "
                             f"choose: {listing}")
        spec = matches[0]
    for option, given, own in (("--frames", frames, spec.weights.clip_frames),
                               ("--classes", classes, spec.weights.num_classes)):
        if given is not None and given != own:
            raise Ig65mError(f"{option} {given} does not match {spec.name}, which has {own}")
    return spec


def output_paths(out):
    """OUT -> (OUT.pth, OUT.onnx); a trailing .pth/.onnx/.pb on OUT is dropped first."""
    out = Path(out)
    if out.suffix.lower() in _OUTPUT_SUFFIXES:
        out = out.with_suffix("")
    return out.with_name(out.name + ".pth"), out.with_name(out.name + ".onnx")


def convert_release(source, out, spec, *, check_batch=2, log=None):
    """Released weights `source` -> verified `OUT.pth` and `OUT.onnx` for registry model `spec`.

    `source` is read by `ig65m.models.loading.read_state_dict`, through the checkpoint filter
    `spec`'s weights row names for its format: a Caffe2 pickle (R(2+1)D-34,
    I3D ResNet-50), TensorFlow variables or a PyTorch port (I3D Inception).

    Raises Ig65mError for any bad input or failed check, leaving no OUT.* file behind.
    """
    log = log or _log.info
    pth, onnx_path = output_paths(out)
    for path in (pth, onnx_path):
        check_writable(path)
    if not Path(source).is_file():
        raise Ig65mError(f"weights file not found: {source}")
    state = read_state_dict(spec, WeightsFile(Path(source), ""))
    model = spec.builder(num_classes=spec.weights.num_classes)
    load_weights(model, state, source=source)
    embedder = ClipEmbedder(model.eval())
    with atomic_path(pth) as tmp_pth, atomic_path(onnx_path) as tmp_onnx:
        torch.save(model.state_dict(), tmp_pth)
        _check_reload(tmp_pth, state, pth)
        log(f"wrote the state_dict ({len(state)} tensors); exporting ONNX")
        export_onnx(embedder, tmp_onnx, clip_frames=spec.weights.clip_frames,
                    crop_size=spec.weights.crop_size, channels=2 if spec.weights.modality == "flow" else 3)
        diff = compare_backends(embedder, tmp_onnx, batch=check_batch)
        log(f"ONNX Runtime vs PyTorch on random clips: max abs difference {diff:.3g}")
    return Converted(pth, onnx_path, sha256_file(pth), sha256_file(onnx_path), diff)


def _check_reload(tmp_pth, state, pth):
    reloaded = load_state_dict(tmp_pth)
    different = [key for key in state if not torch.equal(reloaded.get(key), state[key])]
    if different or set(reloaded) != set(state):
        raise Ig65mError(f"{pth} did not reload to the same tensors ({', '.join(different[:3])})")


def compare_backends(embedder, onnx_path, *, batch=2, seed=0):
    """Max abs difference of logits and features between PyTorch and ONNX Runtime on random clips.

    Raises Ig65mError when it exceeds ONNX_TOLERANCE times the output scale (at least 1), which
    for trained weights, whose outputs are of order 1, is an absolute 1e-4.
    """
    backend = OnnxBackend(onnx_path)
    generator = torch.Generator().manual_seed(seed)
    clips = torch.randn(batch, *backend.input_shape[1:], generator=generator)
    device = next(embedder.parameters()).device
    expected = run_torch(embedder, clips, device)
    got = backend(clips)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
    scale = max(1.0, *(float(np.abs(a).max()) for a in expected))
    if not diff <= ONNX_TOLERANCE * scale:
        raise Ig65mError(f"the ONNX model disagrees with PyTorch: max abs difference {diff:.3g} "
                         f"(outputs up to {scale:.3g}, tolerance {ONNX_TOLERANCE} x that)")
    return diff
