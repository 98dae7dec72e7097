"""Defaults and choices shared by the library and the command line, importable without torch
(so that commands such as `semcode` and `index-serve` start without loading it)."""

import os

DEFAULT_MODEL = "r2plus1d_34_8_ig65m"
POOLINGS = ("mean", "max")
# every backend and the precision of the numbers it computes in (see ig65m.backends)
PRECISIONS = {"torch": "fp32", "torch-bf16": "bf16", "torch-fp16": "fp16", "torch-compile": "fp32",
              "onnxruntime": "fp32", "onnxruntime-int8": "int8", "openvino": "fp32",
              "openvino-bf16": "bf16", "openvino-int8": "int8"}
BACKENDS = ("auto", *PRECISIONS)
BACKEND_VARIABLE = "IG65M_BACKEND"


def default_backend():
    """The backend used when none is asked for: $IG65M_BACKEND if set, else "auto"."""
    return os.environ.get(BACKEND_VARIABLE) or "auto"
# Optical flow for I3D's flow stream: TV-L1 values clipped to [-FLOW_BOUND, FLOW_BOUND], then / FLOW_BOUND.
FLOW_BOUND = 20.0
# Limits of the search API, shared by the server and its torch-free, Flask-free client.
MAX_K = 1000
MAX_THREADS = 1024  # --threads: beyond, torch fails to allocate the threads' stacks
MAX_VECTORS = 1024
