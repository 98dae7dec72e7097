"""Converters from foreign checkpoints to this package's models (pure functions source ->
state_dict), ONNX export and the ONNX Runtime backend."""

from ig65m.convert.caffe2 import load_caffe2_blobs, save_caffe2_blobs

__all__ = ["load_caffe2_blobs", "save_caffe2_blobs"]
