"""Defaults and choices shared by the library and the command line, importable without torch
(so that commands such as `semcode` and `index-serve` start without loading it)."""

DEFAULT_MODEL = "r2plus1d_34_8_ig65m"
POOLINGS = ("mean", "max")
BACKENDS = ("torch", "onnxruntime")
# Optical flow for I3D's flow stream: TV-L1 values clipped to [-FLOW_BOUND, FLOW_BOUND], then / FLOW_BOUND.
FLOW_BOUND = 20.0
# Limits of the search API, shared by the server and its torch-free, Flask-free client.
MAX_K = 1000
MAX_VECTORS = 1024
