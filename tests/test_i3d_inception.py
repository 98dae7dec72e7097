"""I3D Inception-v1: TF "SAME" padding by hand, shapes, published key names, the head, loading
hassony2's state_dict through the registry, two-stream fusion (ONNX: test_i3d_onnx.py)."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ig65m.models import get_model, get_spec
from ig65m.models.i3d_inception import (InceptionI3D, MaxPool3dTFSame, TFSamePad, tf_same_padding,
                                        two_stream_logits)
from tests.i3d_helpers import randomise_batch_norms

MIXED = ("3b", "3c", "4b", "4c", "4d", "4e", "4f", "5b", "5c")


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (224, 7, 2, (2, 3)),  # out 112: total (111 * 2 + 7) - 224 = 5, the extra one after
    (112, 3, 2, (0, 1)),  # out 56: total 110 + 3 - 112 = 1
    (64, 7, 2, (2, 3)),   # out 32: total 62 + 7 - 64 = 5
    (79, 7, 2, (3, 3)),   # out 40: total 78 + 7 - 79 = 6
    (7, 2, 2, (0, 1)),    # out 4: total 6 + 2 - 7 = 1
    (8, 2, 2, (0, 0)),    # out 4: total 6 + 2 - 8 = 0
    (7, 3, 1, (1, 1)),    # stride 1: kernel - 1 = 2
    (1, 3, 2, (1, 1)),    # out 1: total 0 + 3 - 1 = 2
    (5, 1, 1, (0, 0)),
])
def test_tf_same_padding_matches_hand_computed_values(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected


def test_tf_same_pad_layer_pads_each_dimension_unevenly():
    pad = TFSamePad((7, 3, 2), (2, 2, 2))
    x = torch.ones(1, 1, 64, 112, 7)
    # F.pad order (w, h, t): w 7 k2 s2 -> (0, 1); h 112 k3 s2 -> (0, 1); t 64 k7 s2 -> (2, 3)
    assert pad.padding(x.shape[2:]) == [0, 1, 0, 1, 2, 3]
    out = pad(x)
    assert out.shape == (1, 1, 69, 113, 8)
    assert out[0, 0, :2].abs().sum() == 0 and out[0, 0, -3:].abs().sum() == 0
    assert out[0, 0, 2:-3, :112, :7].eq(1).all() and out[0, 0, :, 112].abs().sum() == 0


def _tf_max_pool_by_hand(x, kernel, stride):
    """TF max_pool3d "SAME" on (T, H, W): windows start at i * s - pad_before and ignore
    positions outside the input."""
    sizes = x.shape
    pads = [tf_same_padding(n, k, s)[0] for n, k, s in zip(sizes, kernel, stride)]
    outs = [-(-n // s) for n, s in zip(sizes, stride)]
    result = np.empty(outs, dtype=x.dtype)
    for index in itertools.product(*map(range, outs)):
        window = tuple(slice(max(i * s - p, 0), min(i * s - p + k, n))
                       for i, s, p, k, n in zip(index, stride, pads, kernel, sizes))
        result[index] = x[window].max()
    return result


@pytest.mark.parametrize("kernel, stride", [((3, 3, 3), (2, 2, 2)), ((1, 3, 3), (1, 2, 2)),
                                            ((2, 2, 2), (2, 2, 2)), ((3, 3, 3), (1, 1, 1))])
def test_max_pool_ignores_padding_like_tensorflow(kernel, stride):
    # all values negative: zero padding would leak zeros into the border windows
    x = -torch.rand(1, 1, 5, 7, 6) - 0.5
    expected = _tf_max_pool_by_hand(x[0, 0].numpy(), kernel, stride)
    np.testing.assert_array_equal(MaxPool3dTFSame(kernel, stride)(x)[0, 0].numpy(), expected)


def test_unit_convolution_uses_the_uneven_padding():
    torch.manual_seed(0)
    model = InceptionI3D(num_classes=5, in_channels=2).eval()
    unit = model.conv3d_1a_7x7
    x = torch.randn(1, 2, 9, 32, 30)
    # t 9 k7 s2 -> out 5, total 8 + 7 - 9 = 6: (3, 3); h 32 -> (2, 3); w 30 -> out 15, 28 + 7 - 30 = 5
    by_hand = F.conv3d(F.pad(x, (2, 3, 2, 3, 3, 3)), unit.conv3d.weight, stride=2)
    by_hand = F.relu(unit.batch3d(by_hand))
    with torch.no_grad():
        torch.testing.assert_close(unit(x), by_hand, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, channels", [("i3d_inception_rgb_kinetics", 3),
                                            ("i3d_inception_flow_kinetics", 2)])
def test_models_run_on_small_clips_with_ceil_shapes(name, channels):
    spec = get_spec(name)
    model = spec.builder(num_classes=spec.weights.num_classes).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, channels, 9, 33, 64))
        logits = model(torch.randn(1, channels, 4, 32, 32))
    # /8 in time, /32 in space, each stride rounding up as TF "SAME" does
    # t 9 -> 5 -> 3 -> 2; h 33 -> 17 -> 9 -> 5 -> 3 -> 2; w 64 -> 32 -> 16 -> 8 -> 4 -> 2
    assert features.shape == (1, spec.feature_dim, 2, 2, 2)
    assert logits.shape == (1, 400) and torch.isfinite(logits).all()
    assert spec.weights.crop_size == 224 and spec.weights.clip_frames == 64


def test_head_is_a_2x7x7_average_pool_then_1x1_conv_then_mean():
    torch.manual_seed(0)
    model = InceptionI3D(num_classes=7).eval()
    feature_map = torch.randn(2, 1024, 8, 7, 7)  # a 64-frame 224 clip
    conv = model.conv3d_0c_1x1.conv3d
    windows = [feature_map[:, :, t:t + 2].mean(dim=(2, 3, 4)) for t in range(7)]  # VALID, stride 1
    expected = torch.stack([F.linear(w, conv.weight.flatten(1), conv.bias) for w in windows]).mean(0)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(feature_map), expected, rtol=1e-5, atol=1e-5)


def hassony2_keys():
    """Keys of hassony2/kinetics_i3d_pytorch's I3D state_dict, written from its module layout."""
    units = ["conv3d_1a_7x7", "conv3d_2b_1x1", "conv3d_2c_3x3"]
    units += [f"mixed_{m}.{branch}" for m in MIXED for branch in
              ("branch_0", "branch_1.0", "branch_1.1", "branch_2.0", "branch_2.1", "branch_3.1")]
    keys = [f"{unit}.{tensor}" for unit in units for tensor in
            ("conv3d.weight", "batch3d.weight", "batch3d.bias", "batch3d.running_mean",
             "batch3d.running_var")]
    return keys + ["conv3d_0c_1x1.conv3d.weight", "conv3d_0c_1x1.conv3d.bias"]


def test_state_dict_has_exactly_the_published_keys_and_shapes():
    state = InceptionI3D(num_classes=400).state_dict()
    assert sorted(state) == sorted(hassony2_keys())
    assert state["conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert state["mixed_4f.branch_2.1.conv3d.weight"].shape == (128, 32, 3, 3, 3)
    assert state["mixed_5c.branch_0.conv3d.weight"].shape == (384, 832, 1, 1, 1)
    assert state["conv3d_0c_1x1.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    flow = InceptionI3D(num_classes=400, in_channels=2).state_dict()
    assert flow["conv3d_1a_7x7.conv3d.weight"].shape == (64, 2, 7, 7, 7)


def test_hassony2_state_dict_loads_through_the_registry(tmp_path):
    torch.manual_seed(1)
    source = randomise_batch_norms(InceptionI3D(num_classes=400, in_channels=2)).eval()
    path = tmp_path / "model_flow.pth"
    # as the port saved it: a plain dict of tensors, no num_batches_tracked
    torch.save({key: value.clone() for key, value in source.state_dict().items()}, path)
    model, sha256 = get_model("i3d_inception_flow_kinetics", weights=str(path))
    assert sha256 and len(sha256) == 64
    clips = torch.randn(1, 2, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(clips), source(clips), rtol=0, atol=0)


def test_two_stream_fusion_sums_logits():
    rgb, flow = torch.randn(3, 400), torch.randn(3, 400)
    torch.testing.assert_close(two_stream_logits(rgb, flow), rgb + flow)
    with pytest.raises(ValueError, match="differ in shape"):
        two_stream_logits(rgb, flow[:2])


def test_reset_classifier_changes_the_number_of_classes():
    model = InceptionI3D(num_classes=400).eval()
    model.reset_classifier(10)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 10)
