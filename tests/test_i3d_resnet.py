"""I3D ResNet-50: layout (stem, inflated bottlenecks), the published key names, the Caffe2
conversion round trip with the release's blob names, and its completeness checks."""

import numpy as np
import pytest
import torch

from ig65m.convert.caffe2 import save_caffe2_blobs
from ig65m.convert.i3d_resnet import convert_i3d_resnet, i3d_resnet_state_dict
from ig65m.errors import Ig65mError
from ig65m.models import get_model, get_spec
from ig65m.models.i3d_resnet import I3DResNet50, i3d_r50

LAYERS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
# temporal kernel of each block's first convolution, as the video-nonlocal-net baseline
TEMPORAL = ((3, 3, 3), (3, 1, 3, 1), (3, 1, 3, 1, 3, 1), (1, 3, 1))
BN = (("s", "weight"), ("b", "bias"), ("rm", "running_mean"), ("riv", "running_var"))


def test_stem_and_inflated_bottlenecks():
    model = I3DResNet50(num_classes=400)
    assert model.conv1.weight.shape == (64, 3, 5, 7, 7)
    assert model.conv1.stride == (2, 2, 2) and model.conv1.padding == (2, 3, 3)
    for index, temporal in enumerate(TEMPORAL):
        layer = getattr(model, f"layer{index + 1}")
        assert [block.conv1.kernel_size[0] for block in layer] == list(temporal)
        assert all(block.conv2.kernel_size == (1, 3, 3) for block in layer)
    assert model.fc.in_features == 2048


def test_runs_on_small_clips():
    spec = get_spec("i3d_r50_32_kinetics")
    model = spec.builder(num_classes=spec.weights.num_classes).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 16, 64, 64))
        logits = model.forward_head(features)
    # time: /2 stem, /2 max pool, /2 after layer1; space: /32
    assert features.shape == (1, spec.feature_dim, 2, 2, 2)
    assert logits.shape == (1, 400) and torch.isfinite(logits).all()
    assert (spec.weights.clip_frames, spec.weights.crop_size, spec.weights.frame_size) == (32, 224,
                                                                                           256)


def published_blobs(rng, num_classes=400, training_state=True):
    """Blobs named as the video-nonlocal-net release (i3d_baseline_32x2_IN_pretrain_400k.pkl)."""
    blobs = {"conv1_w": rng.standard_normal((64, 3, 5, 7, 7)).astype(np.float32) * 0.05}
    blobs.update(_bn_blobs(rng, "res_conv1_bn", 64))
    in_channels = 64
    for layer, (blocks, width, temporal) in enumerate(zip(LAYERS, WIDTHS, TEMPORAL)):
        for block in range(blocks):
            prefix = f"res{layer + 2}_{block}"
            shapes = {"a": (width, in_channels, temporal[block], 1, 1),
                      "b": (width, width, 1, 3, 3), "c": (width * 4, width, 1, 1, 1)}
            for branch, shape in shapes.items():
                blobs[f"{prefix}_branch2{branch}_w"] = _weights(rng, shape)
                blobs.update(_bn_blobs(rng, f"{prefix}_branch2{branch}_bn", shape[0]))
            if block == 0:
                blobs[f"{prefix}_branch1_w"] = _weights(rng, (width * 4, in_channels, 1, 1, 1))
                blobs.update(_bn_blobs(rng, f"{prefix}_branch1_bn", width * 4))
            in_channels = width * 4
    blobs["pred_w"] = _weights(rng, (num_classes, 2048))
    blobs["pred_b"] = _weights(rng, (num_classes,))
    if training_state:
        blobs.update({name + "_momentum": np.zeros_like(value) for name, value in blobs.items()
                      if not name.endswith(("_rm", "_riv"))})
        blobs.update(model_iter=np.asarray(400000), lr=np.asarray(0.0001, dtype=np.float32))
    return blobs


def _weights(rng, shape):
    fan_in = int(np.prod(shape[1:])) or 1
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _bn_blobs(rng, prefix, channels):
    return {f"{prefix}_s": rng.uniform(0.5, 1.5, channels).astype(np.float32),
            f"{prefix}_b": rng.uniform(-0.1, 0.1, channels).astype(np.float32),
            f"{prefix}_rm": rng.uniform(-0.1, 0.1, channels).astype(np.float32),
            f"{prefix}_riv": rng.uniform(0.5, 1.5, channels).astype(np.float32)}


def test_state_dict_keys_are_the_published_port_keys():
    """Tushar-N/pytorch-resnet3d's converted file: one key per Caffe2 parameter blob."""
    blob_count = len(published_blobs(np.random.default_rng(0), training_state=False))
    state = I3DResNet50(num_classes=400).state_dict()
    assert len(state) == blob_count
    assert not any(key.endswith("num_batches_tracked") for key in state)
    assert {"layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
            "layer4.2.bn3.running_mean", "fc.weight", "bn1.bias"} <= set(state)


def test_caffe2_release_round_trip_through_the_registry(tmp_path):
    rng = np.random.default_rng(0)
    blobs = published_blobs(rng)
    pkl = save_caffe2_blobs(tmp_path / "i3d_baseline_32x2_IN_pretrain_400k.pkl", blobs)
    state = convert_i3d_resnet(pkl, build=i3d_r50)
    np.testing.assert_array_equal(state["layer2.1.conv1.weight"].numpy(),
                                  blobs["res3_1_branch2a_w"])
    np.testing.assert_array_equal(state["layer3.0.downsample.1.running_var"].numpy(),
                                  blobs["res4_0_branch1_bn_riv"])
    np.testing.assert_array_equal(state["bn1.weight"].numpy(), blobs["res_conv1_bn_s"])
    np.testing.assert_array_equal(state["fc.bias"].numpy(), blobs["pred_b"])
    pth = tmp_path / "i3d_r50.pth"
    torch.save(state, pth)
    model, _ = get_model("i3d_r50_32_kinetics", weights=str(pth))
    round_trip = {key: value.numpy() for key, value in model.state_dict().items()}
    assert all(np.array_equal(round_trip[key], value.numpy()) for key, value in state.items())


def test_class_count_follows_pred_w():
    state = i3d_resnet_state_dict(published_blobs(np.random.default_rng(0), num_classes=10), build=i3d_r50)
    assert state["fc.weight"].shape == (10, 2048)


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.pop("res4_3_branch2b_bn_rm"), "missing blob res4_3_branch2b_bn_rm"),
    (lambda b: b.update(res6_0_branch2a_w=np.zeros((1,), np.float32)), "extra blob res6_0_branch2a_w"),
    (lambda b: b.update(res3_1_branch2a_w=np.zeros((128, 512, 3, 1, 1), np.float32)),
     r"res3_1_branch2a_w has shape \(128, 512, 3, 1, 1\), layer2.1.conv1.weight needs "
     r"\(128, 512, 1, 1, 1\)"),
])
def test_completeness_checks_name_the_blob(edit, message):
    blobs = published_blobs(np.random.default_rng(0))
    edit(blobs)
    with pytest.raises(Ig65mError, match=message):
        i3d_resnet_state_dict(blobs, build=i3d_r50)


def test_every_problem_is_reported_at_once():
    blobs = published_blobs(np.random.default_rng(0))
    blobs.pop("conv1_w")
    blobs["stray_w"] = np.zeros(3, np.float32)
    with pytest.raises(Ig65mError, match="missing blob conv1_w.*extra blob stray_w"):
        i3d_resnet_state_dict(blobs, build=i3d_r50)


def test_truncated_pickle_is_a_user_error(tmp_path):
    pkl = save_caffe2_blobs(tmp_path / "w.pkl", published_blobs(np.random.default_rng(0)))
    pkl.write_bytes(pkl.read_bytes()[:1000])
    with pytest.raises(Ig65mError, match="truncated"):
        convert_i3d_resnet(pkl, build=i3d_r50)
