"""The one ONNX Runtime session factory of the package (clip embedders and stream models alike)."""

import os

import torch

from ig65m.errors import Ig65mError

# ONNX Runtime graph optimisation levels, by the name the options use
OPTIMIZATIONS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                 "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def ort_session(path, *, threads=None, optimization="all", device=None):
    """An `onnxruntime.InferenceSession` for the model at `path`.

    `threads`: intra-op threads (None: ONNX Runtime's choice, every physical core); inter-op is
    1 (the graphs here are one chain of convolutions). `optimization`: a key of OPTIMIZATIONS.
    CUDA is used when the installed onnxruntime has it, a GPU is present and `device` is not a CPU
    device; else the CPU. Errors in the file become one `Ig65mError` line.
    """
    import onnxruntime as ort

    if optimization not in OPTIMIZATIONS:
        raise Ig65mError(f"unknown ONNX Runtime optimization {optimization!r}; choose one of: "
                         f"{', '.join(OPTIMIZATIONS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               OPTIMIZATIONS[optimization])
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: stderr stays readable
    try:
        return ort.InferenceSession(os.fspath(path), options,
                                    providers=providers(ort.get_available_providers(), device))
    except Exception as err:  # noqa: BLE001  (ORT raises its own types for any bad file)
        raise Ig65mError(f"cannot load ONNX model {path}: "
                         f"{str(err).strip().splitlines()[0]}") from None


def providers(available, device=None):
    """Execution providers, best first: CUDA where it can run, then the CPU."""
    wanted = ["CPUExecutionProvider"]
    on_cpu = device is not None and torch.device(device).type == "cpu"
    if "CUDAExecutionProvider" in available and torch.cuda.is_available() and not on_cpu:
        wanted.insert(0, "CUDAExecutionProvider")
    return wanted
