"""ONNX export of the I3D models' ClipEmbedder, run with ONNX Runtime: same logits and features as
PyTorch (max abs diff <= 1e-4 for outputs of order 1), with inputs whose TF "SAME" padding is
uneven."""

import pytest
import torch

from ig65m.convert.onnx import OPSET, OnnxBackend, export_onnx
from ig65m.convert.release import compare_backends
from ig65m.embedder import ClipEmbedder
from ig65m.models import get_spec
from tests.i3d_helpers import randomise_batch_norms

pytest.importorskip("onnxruntime")


def _embedder(name, pool_temporal="mean"):
    torch.manual_seed(0)
    spec = get_spec(name)
    model = randomise_batch_norms(spec.builder(num_classes=spec.weights.num_classes)).eval()
    return ClipEmbedder(model, pool_spatial="mean", pool_temporal=pool_temporal).eval()


@pytest.mark.parametrize("name, frames, size, pool", [
    ("i3d_r50_32_kinetics", 8, 32, "mean"),
    # 9 frames and 33 pixels: every TF "SAME" layer pads unevenly somewhere
    ("i3d_inception_rgb_kinetics", 9, 33, "max"),
])
def test_rgb_models_export_and_match_onnxruntime(tmp_path, name, frames, size, pool):
    embedder = _embedder(name, pool)
    path = export_onnx(embedder, tmp_path / f"{name}.onnx", clip_frames=frames, crop_size=size)
    backend = OnnxBackend(path, threads=2)
    assert backend.input_shape[1:] == (3, frames, size, size)
    # seeded random clips, batch 2 (the batch axis is dynamic)
    assert compare_backends(embedder, path, batch=2) <= 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_flow_model_exports_with_two_input_channels(tmp_path):
    embedder = _embedder("i3d_inception_flow_kinetics")
    path = tmp_path / "flow.onnx"
    batch = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(embedder, (torch.zeros(1, 2, 9, 33, 33),), str(path), dynamo=False,
                          opset_version=OPSET, input_names=["clips"],
                          output_names=["logits", "features"],
                          dynamic_axes={"clips": batch, "logits": batch, "features": batch})
    assert OnnxBackend(path, threads=2).input_shape[1:] == (2, 9, 33, 33)
    assert compare_backends(embedder, path, batch=2) <= 1e-4
