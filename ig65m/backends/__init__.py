"""Backends: the same clip embedder run by torch, ONNX Runtime or OpenVINO, in fp32, bf16 or INT8.

- `runners`: build one backend (`build(name, target)` -> Runner).
- `select`: `choose("auto" | name, ...)`: explicit backends behind the accuracy gate, auto measured.
- `gate`: features and top-1 against torch fp32 on real clips.
- `cache`: converted models and measured choices, keyed by model, weights, shape and versions.
- `ort`: the one ONNX Runtime session factory; `ort_int8`: its static INT8 quantization;
  `openvino`: OpenVINO and NNCF INT8.
"""
