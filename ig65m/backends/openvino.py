"""OpenVINO on the CPU: the exported embedder in fp32 or bf16, and INT8 by NNCF post-training
quantization calibrated on clips of real videos.

bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX); OpenVINO reports it as the `BF16`
optimisation capability, which `has_bf16` reads. On a CPU without it bf16 is refused.
"""

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ig65m.errors import Ig65mError

# the INFERENCE_PRECISION_HINT per precision: fp32 must be asked for, since OpenVINO's default
# on a bf16 CPU is bf16; INT8 models keep their unquantised layers in the CPU's best precision
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}


def _core():
    import openvino as ov

    return ov.Core()


def has_bf16():
    """Whether OpenVINO's CPU plugin runs bf16 natively here."""
    try:
        return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001  (no OpenVINO, or no CPU plugin: then no bf16 either)
        return False


class OpenVinoRunner:
    """A compiled OpenVINO model: clips (N, C, T, H, W) -> float32 (logits, features).

    `path`: an .onnx export or an OpenVINO .xml; `precision`: a key of HINTS; `threads`: inference
    threads (None: OpenVINO's choice).
    """

    def __init__(self, path, *, precision="fp32", threads=None):
        if precision == "bf16" and not has_bf16():
            raise Ig65mError("openvino-bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX); "
                             "this one has none: use openvino")
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if HINTS[precision]:
            config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = _core()
        try:
            self.compiled = core.compile_model(core.read_model(os.fspath(path)), "CPU", config)
        except RuntimeError as err:  # OpenVINO's CPU plugin lacks a kernel for some layer
            reason = [line for line in str(err).splitlines() if line.strip()][-1:] or ["?"]
            raise Ig65mError(f"OpenVINO cannot compile {Path(path).name} in {precision} on this "
                             f"CPU: {reason[0].strip()}") from None
        self.request = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(name) for name in ("logits", "features")]

    def __call__(self, clips):
        if torch.is_tensor(clips):
            clips = clips.detach().cpu().numpy()
        result = self.request.infer({"clips": np.ascontiguousarray(clips, dtype=np.float32)})
        return tuple(np.array(result[output], dtype=np.float32) for output in self.outputs)


def quantize_int8(onnx_path, clips, target):
    """NNCF post-training quantization of the exported embedder at `onnx_path`, its activation
    ranges measured on `clips` (an iterable of (1, C, T, H, W) float32 arrays, re-iterable),
    saved as OpenVINO IR at `target` (.xml + .bin, both renamed into place together) -> target.
    """
    import nncf
    import openvino as ov

    target = Path(target)
    model = _core().read_model(os.fspath(onnx_path))
    dataset = nncf.Dataset(clips)
    # NNCF draws its progress bar and logs on stdout, which carries only results here
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        level = nncf.common.logging.nncf_logger.level
        nncf.set_log_level(logging.ERROR)  # "fewer samples than the subset size" is expected
        try:
            quantized = nncf.quantize(model, dataset, subset_size=max(1, len(clips)),
                                      fast_bias_correction=True)
        finally:
            nncf.set_log_level(level)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp"))
    try:
        ov.save_model(quantized, os.fspath(folder / target.name), compress_to_fp16=False)
        os.replace(folder / target.with_suffix(".bin").name, target.with_suffix(".bin"))
        os.replace(folder / target.name, target)  # the .xml last: present means complete
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return target
