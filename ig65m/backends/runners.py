"""Build one backend: a callable clips (N, C, T, H, W) -> float32 (logits (N, K), features (N, D)).

Every backend computes the `ClipEmbedder` of ig65m.embedder: torch runs it directly; ONNX Runtime
and OpenVINO run its ONNX export, cached per model, weights, pooling, clip shape and runtime
versions (ig65m.backends.cache); the INT8 backends run that export quantized on calibration
clips, by NNCF for OpenVINO and by static quantization for ONNX Runtime. A backend that cannot run
here or cannot run the model raises `Ig65mError` with one line.
"""

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ig65m.backends import cache
from ig65m.defaults import PRECISIONS
from ig65m.embedder import run_torch
from ig65m.errors import Ig65mError


def say(message):
    print(f"backend: {message}", file=sys.stderr)


@dataclass
class Target:
    """What a backend is built for: the embedder and where and how it will run.

    `load_embedder`: a callable returning the torch ClipEmbedder, called only when a backend needs
    it (torch, an export, the gate): a converted model already in the cache runs without it.
    `calibration`: a callable returning the calibration ClipSet (or None when there is none);
    only INT8 calls it.
    """

    load_embedder: Callable
    model: str
    weights_sha256: str | None
    pooling: tuple  # (spatial, temporal), as the embedder pools
    clip_shape: tuple  # (C, T, H, W)
    device: torch.device = torch.device("cpu")
    threads: int | None = None
    calibration: Callable = lambda: None
    int8_model: str | None = None  # a quantized model already gated (auto's cached choice)
    _scratch: list = field(default_factory=list)

    @property
    def embedder(self):
        return self.load_embedder()

    def key(self, *extra):
        return cache.model_key(self.model, self.weights_sha256, self.pooling, self.clip_shape,
                               extra)

    def file(self, suffix, *extra):
        """A cache path for a converted model, or a scratch path when it must not be cached."""
        key = self.key(*extra)
        if key is None:  # unseeded random weights: a fresh conversion, deleted with the process
            scratch = tempfile.TemporaryDirectory(prefix="ig65m-backend-")
            self._scratch.append(scratch)
            return Path(scratch.name) / f"model{suffix}"
        return cache.backends_dir() / f"{key}{suffix}"


class Runner:
    """A built backend: `runner(clips)` -> (logits, features); `name` and `precision` say what
    produced them (the sidecar records both)."""

    def __init__(self, name, run):
        self.name, self.precision, self._run = name, PRECISIONS[name], run
        self.file = getattr(run, "file", None)  # the quantized model file, for INT8

    def __call__(self, clips):
        return self._run(clips)


def build(name, target):
    """The backend `name` (a key of BUILDERS) for `target` -> Runner."""
    if name not in BUILDERS:
        raise Ig65mError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BUILDERS)}")
    return Runner(name, BUILDERS[name](target))


def _torch(target, dtype=None, compiled=False):
    embedder, device = target.embedder, target.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: the autotuned kernels pay
        embedder = embedder.to(memory_format=torch.channels_last_3d)
    if dtype is torch.float16 and device.type != "cuda":
        raise Ig65mError("torch-fp16 runs on CUDA only; on the CPU use torch-bf16 or openvino-bf16")
    if compiled:
        embedder = torch.compile(embedder)
    if dtype is None:
        return lambda clips: run_torch(embedder, clips, device)

    def run(clips):
        with torch.autocast(device.type, dtype=dtype):
            return run_torch(embedder, clips, device)
    return run


def onnx_file(target):
    """The embedder exported to ONNX for the target's clip shape (cached; exported once)."""
    from ig65m.convert.onnx import export_onnx

    path = target.file(".onnx")
    if not path.is_file():
        channels, frames, crop = target.clip_shape[:3]
        try:
            export_onnx(target.embedder.cpu(), path, clip_frames=frames, crop_size=crop,
                        channels=channels)
        except Ig65mError:
            raise
        except Exception as err:  # noqa: BLE001  (the exporter raises anything on a bad graph)
            raise Ig65mError(f"{target.model} cannot be exported to ONNX, so the ONNX Runtime "
                             f"and OpenVINO backends cannot run it: {err}") from None
        finally:
            target.embedder.to(target.device)
    return path


def _onnxruntime(target):
    from ig65m.convert.onnx import OnnxBackend

    return OnnxBackend(onnx_file(target), threads=target.threads, device=target.device)


def _openvino(target, precision):
    from ig65m.backends import openvino

    if precision == "int8":
        return _int8(target, "openvino-int8", ".int8.xml", openvino.quantize_int8,
                     lambda path: openvino.OpenVinoRunner(path, precision="int8",
                                                          threads=target.threads))
    return openvino.OpenVinoRunner(onnx_file(target), precision=precision, threads=target.threads)


def _onnxruntime_int8(target):
    from ig65m.backends.ort_int8 import quantize_int8
    from ig65m.convert.onnx import OnnxBackend

    return _int8(target, "onnxruntime-int8", ".ort-int8.onnx", quantize_int8,
                 lambda path: OnnxBackend(path, threads=target.threads, device=target.device))


def _int8(target, name, suffix, quantize, load):
    """An INT8 backend: the export quantized by `quantize(onnx, clips, path)` on the target's
    calibration clips (once; cached by model, weights, shape, versions and calibration set), or
    the already gated model of auto's cached choice; `load(path)` runs it."""
    if target.int8_model:
        path = Path(target.int8_model)
    else:
        clips = target.calibration()
        if clips is None:
            raise Ig65mError(f"{name} needs calibration clips from real videos: extract "
                             f"from video files, or give --calibration FOLDER")
        path = target.file(suffix, clips.digest)
        if not path.is_file():
            say(f"quantizing {target.model} to INT8 for {name} on up to {len(clips)} clips of "
                f"{len(clips.videos)} videos (once; cached)")
            quantize(onnx_file(target), clips, path)
    runner = load(path)
    runner.file = str(path) if target.key() else None
    return runner


BUILDERS = {
    "torch": _torch,
    "torch-bf16": lambda target: _torch(target, torch.bfloat16),
    "torch-fp16": lambda target: _torch(target, torch.float16),
    "torch-compile": lambda target: _torch(target, compiled=True),
    "onnxruntime": _onnxruntime,
    "onnxruntime-int8": _onnxruntime_int8,
    "openvino": lambda target: _openvino(target, "fp32"),
    "openvino-bf16": lambda target: _openvino(target, "bf16"),
    "openvino-int8": lambda target: _openvino(target, "int8"),
}
