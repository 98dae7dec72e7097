"""ONNX export of a `ClipEmbedder` and the ONNX Runtime backend that runs it.

The exported graph computes exactly what the torch backend computes: input `clips` (N, 3, T, H, W)
float32 with a dynamic batch N and the T, H, W of the export; outputs `logits` (N, K) and
`features` (N, D), the pooled feature vector.
"""

import warnings
from pathlib import Path

import numpy as np
import torch

from ig65m.backends.ort import OPTIMIZATIONS, ort_session
from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path

INPUT = "clips"
OUTPUTS = ("logits", "features")
OPSET = 17
__all__ = ["OPTIMIZATIONS", "OnnxBackend", "export_onnx"]


def export_onnx(embedder, path, *, clip_frames, crop_size, channels=3):
    """Export `embedder` (an `ig65m.embedder.ClipEmbedder`) to `path`, atomically.

    Traced with a (1, channels, clip_frames, crop_size, crop_size) input (channels: 3 for RGB, 2 for
    optical flow) on the embedder's device; batch is dynamic, the rest fixed. The file is checked with `onnx.checker` before it is renamed into place.
    """
    import onnx

    embedder = embedder.eval()
    device = next(embedder.parameters()).device
    example = torch.zeros(1, channels, clip_frames, crop_size, crop_size, device=device)
    batch = {0: "batch"}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # the TorchScript-based exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript; this one is still supported and exact for these convolutional models
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(embedder, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=list(OUTPUTS),
                              dynamic_axes={name: batch for name in (INPUT, *OUTPUTS)})
        onnx.checker.check_model(str(tmp), full_check=True)
    return Path(path)


class OnnxBackend:
    """Runs an exported embedder with ONNX Runtime: clips (N, 3, T, H, W) -> (logits, features).

    `threads`: intra-op threads (None lets ONNX Runtime use every physical core); `optimization`:
    the graph optimisation level, a key of OPTIMIZATIONS (default "all"). Uses CUDA when
    the installed onnxruntime has it and a GPU is present, else the CPU. `clip_frames` and
    `crop_size` are read from the model's input, which the clips must match.
    """

    def __init__(self, path, *, threads=None, optimization="all", device=None):
        self.path = Path(path)
        if not self.path.is_file():
            raise Ig65mError(f"ONNX model not found: {self.path}")
        self.session = ort_session(self.path, threads=threads, optimization=optimization,
                                   device=device)
        self._check_signature()

    def _check_signature(self):
        inputs = self.session.get_inputs()
        outputs = [output.name for output in self.session.get_outputs()]
        if [i.name for i in inputs] != [INPUT] or sorted(outputs) != sorted(OUTPUTS):
            raise Ig65mError(f"{self.path} is not an ig65m clip embedder: it takes "
                             f"{[i.name for i in inputs]} and gives {outputs}, expected input "
                             f"{INPUT!r} and outputs {list(OUTPUTS)}")
        self.input_shape = tuple(inputs[0].shape)  # ("batch", 3, T, H, W)
        self.clip_frames = self.input_shape[2]
        self.crop_size = self.input_shape[3]

    def __call__(self, clips):
        """clips: torch tensor or numpy array (N, 3, T, H, W) -> float32 (N, K), (N, D)."""
        if torch.is_tensor(clips):
            clips = clips.detach().cpu().numpy()
        clips = np.ascontiguousarray(clips, dtype=np.float32)
        if clips.ndim != 5 or clips.shape[1:] != self.input_shape[1:]:
            raise Ig65mError(f"{self.path} takes clips of shape (N, "
                             f"{', '.join(map(str, self.input_shape[1:]))}), got "
                             f"{tuple(clips.shape)}; export it again with these --clip-frames "
                             f"and crop, or extract with the exported ones")
        logits, features = self.session.run(list(OUTPUTS), {INPUT: clips})
        return logits.astype(np.float32, copy=False), features.astype(np.float32, copy=False)

