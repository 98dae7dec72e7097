"""INT8 by ONNX Runtime static quantization: the exported embedder with QuantizeLinear /
DequantizeLinear pairs (QDQ) around its convolutions and matrix products, activation ranges
measured on clips of real videos, weights quantized per output channel.

Activations are unsigned 8-bit and weights signed (U8S8), ONNX Runtime's fast combination on x86;
the CPU provider fuses each DequantizeLinear -> Conv -> QuantizeLinear into one QLinearConv.
"""

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

from ig65m.convert.onnx import INPUT
from ig65m.fileio import atomic_path


class ClipReader:
    """ONNX Runtime's CalibrationDataReader interface over a ClipSet: {input: (1, C, T, H, W)}
    items, then None."""

    def __init__(self, clips):
        self.clips = iter(clips)

    def get_next(self):
        clip = next(self.clips, None)
        return None if clip is None else {INPUT: clip}

    def rewind(self):  # not called by MinMax calibration, part of the reader interface
        pass


def quantize_int8(onnx_path, clips, target):
    """Static QDQ quantization of the exported embedder at `onnx_path`, calibrated (MinMax) on
    `clips` (an iterable of (1, C, T, H, W) float32 arrays), written atomically to `target`.

    MinMax keeps only each tensor's min and max per clip (ReduceMin/ReduceMax outputs), so memory
    does not grow with the clips. (Its CalibMaxIntermediateOutputs option is not used: in
    onnxruntime 1.32 it drops the ranges collected so far instead of folding them in.)"""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="ig65m-ort-int8-") as scratch, \
            atomic_path(target) as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(sys.stderr):  # stdout carries only results here
        warnings.simplefilter("ignore")
        # shape inference and graph optimisation first, as ONNX Runtime recommends
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(os.fspath(onnx_path), os.fspath(prepared), skip_symbolic_shape=True)
        quantize_static(os.fspath(prepared), os.fspath(tmp), ClipReader(clips),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return Path(target)
