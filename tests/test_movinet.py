"""MoViNet: builds, port-compatible state_dicts, TF padding, stream == causal model, ONNX streams."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ig65m.embedder import ClipEmbedder
from ig65m.models import get_model, get_spec, list_models
from ig65m.models.movinet import ConvUnit, MoViNet, TFSameAvgPool, _Tape, movinet, pad_same
from ig65m.models.padding import tf_same_padding
from ig65m.models.movinet_config import A0
from ig65m.stream import StreamRunner, export_stream_onnx

SIZE, FRAMES = 72, 8  # 72 -> 36, 18, 9, 5, 3: odd sizes on the way, as at 172


def randomise(model, seed=0):
    """Non-trivial weights of realistic scale: the default init keeps every ReZero `alpha` at 0
    (silent residual branches) and BatchNorm at identity, which would hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("alpha"):
                tensor.uniform_(0.3, 1.0, generator=generator)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif name.endswith(("running_mean", "bias")):
                tensor.normal_(0.0, 0.1, generator=generator)
            elif name.endswith("norm.weight"):
                tensor.normal_(1.0, 0.1, generator=generator)
            elif name.endswith("weight"):
                tensor.mul_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stream_a0():
    return randomise(movinet("A0", stream=True))


@pytest.fixture(scope="module")
def clip():
    return torch.rand(1, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_registry_lists_every_variant():
    names = {spec.name for spec in list_models() if spec.family == "movinet"}
    assert names == {f"movinet_a{i}_base" for i in range(6)} | {
        f"movinet_a{i}_stream" for i in range(3)}
    spec = get_spec("movinet_a2_base")
    assert (spec.weights.crop_size, spec.weights.num_classes, spec.feature_dim) == (224, 600, 640)
    assert spec.weights.mean == (0.0, 0.0, 0.0) and spec.weights.std == (1.0, 1.0, 1.0)
    assert spec.weights.labels == "kinetics600"


def test_base_model_shapes_and_parameters(clip):
    model = randomise(movinet("A0"))
    with torch.no_grad():
        feature_map = model.forward_features(clip)
        logits = model(clip)
    assert feature_map.shape == (1, 480, FRAMES, 3, 3)
    assert logits.shape == (1, 600) and torch.isfinite(logits).all()
    # The paper's MoViNet-A0 has 3.1M parameters.
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 3.1) < 0.05


def test_state_dict_keys_follow_the_port():
    """Names and shapes as Atze00/MoViNet-pytorch builds them (its published state_dicts)."""
    base, stream = movinet("A0").state_dict(), movinet("A0", stream=True).state_dict()
    expected_base = {
        "conv1.conv_1.conv3d.weight": (8, 3, 1, 3, 3),
        "conv1.conv_1.norm.running_var": (8,),
        "blocks.b0_l0.expand.conv_1.conv3d.weight": (24, 8, 1, 1, 1),
        "blocks.b0_l0.deep.conv_1.conv3d.weight": (24, 1, 1, 5, 5),
        "blocks.b0_l0.se.fc1.conv_1.conv3d.weight": (8, 24, 1, 1, 1),
        "blocks.b0_l0.se.fc2.conv_1.conv3d.bias": (24,),
        "blocks.b0_l0.project.conv_1.conv3d.weight": (8, 24, 1, 1, 1),
        "blocks.b0_l0.res.1.conv_1.conv3d.weight": (8, 8, 1, 1, 1),
        "blocks.b0_l0.alpha": (),
        "blocks.b2_l0.deep.conv_1.conv3d.weight": (184, 1, 5, 3, 3),
        "conv7.conv_1.conv3d.weight": (480, 104, 1, 1, 1),
        "classifier.0.conv_1.conv3d.weight": (2048, 480, 1, 1, 1),
        "classifier.3.conv_1.conv3d.bias": (600,),
    }
    expected_stream = {
        "conv1.conv_1.conv2d.weight": (8, 3, 3, 3),
        "blocks.b1_l0.deep.conv_1.conv2d.weight": (80, 1, 3, 3),
        "blocks.b1_l0.deep.conv_2.conv2d.weight": (80, 1, 3, 1),
        "blocks.b1_l0.deep.conv_2.norm.weight": (80,),
        "blocks.b1_l0.se.fc1.conv_1.conv2d.weight": (40, 160, 1, 1),
        "classifier.3.conv_1.conv2d.weight": (600, 2048, 1, 1),
    }
    for state, expected in ((base, expected_base), (stream, expected_stream)):
        assert {key: tuple(state[key].shape) for key in expected} == expected
    assert "blocks.b0_l0.deep.conv_2.conv2d.weight" not in stream  # kt = 1: no temporal conv
    assert "blocks.b1_l1.res.0.conv_1.conv3d.weight" not in base  # same shape: identity residual
    assert not any("cgap" in key or "activation" in key for key in stream)


@pytest.mark.parametrize("size, kernel, stride, pads", [
    (7, 3, 2, (1, 1)), (8, 3, 2, (0, 1)), (8, 5, 1, (2, 2)), (9, 5, 2, (2, 2)), (6, 1, 1, (0, 0)),
])
def test_same_padding_matches_hand_computed(size, kernel, stride, pads):
    assert tf_same_padding(size, kernel, stride) == pads
    x = torch.randn(1, 2, size, size)
    weight = torch.randn(3, 2, kernel, kernel)
    ours = F.conv2d(pad_same(x, (kernel, kernel), (stride, stride)), weight, stride=stride)
    reference = F.conv2d(F.pad(x, (pads[0], pads[1], pads[0], pads[1])), weight, stride=stride)
    assert ours.shape[-1] == -(-size // stride)
    torch.testing.assert_close(ours, reference)


def test_tf_average_pool_does_not_count_padding():
    x = torch.arange(16.0).view(1, 1, 1, 4, 4)
    pooled = TFSameAvgPool()(x)[0, 0, 0]
    # Even size: TF pads one row/column after; the last window holds 3x2, 2x3 and 2x2 values.
    torch.testing.assert_close(pooled, torch.tensor([[5.0, 6.5], [11.0, 12.5]]))
    odd = TFSameAvgPool()(torch.ones(1, 1, 1, 5, 5))
    assert odd.shape[-1] == 3 and torch.allclose(odd, torch.ones_like(odd))


def test_causal_convolution_pads_the_past_only():
    unit = ConvUnit(2, 3, (3, 3, 3), padding=(1, 1, 1), conv_type="3d", causal=True)
    x = torch.randn(1, 2, 5, 6, 6)
    ours = unit(x, _Tape(torch.zeros(1)))
    reference = F.conv3d(F.pad(x, (1, 1, 1, 1, 2, 0)), unit.conv_1.conv3d.weight)
    torch.testing.assert_close(ours, reference)


def _stream(model, clip, chunk):
    model.streaming = True
    model.clean_activation_buffers()
    with torch.no_grad():
        outputs = [model(clip[:, :, start:start + chunk]) for start in range(0, FRAMES, chunk)]
    model.streaming = False
    model.clean_activation_buffers()
    return outputs


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_stream_in_chunks_equals_causal_model_on_whole_clip(stream_a0, clip, chunk):
    with torch.no_grad():
        whole = stream_a0(clip)
    outputs = _stream(stream_a0, clip, chunk)
    assert (outputs[-1] - whole).abs().max().item() <= 1e-4
    assert whole.std().item() > 1e-2  # not a trivially constant output
    # Every intermediate prediction equals the causal model on the frames so far.
    with torch.no_grad():
        first = stream_a0(clip[:, :, :chunk])
    assert (outputs[0] - first).abs().max().item() <= 1e-4


def test_stream_is_causal_and_the_base_model_is_not(stream_a0, clip):
    changed = clip.clone()
    changed[:, :, -1] = torch.rand_like(changed[:, :, -1])
    with torch.no_grad():
        before = _stream(stream_a0, clip, 1)
        after = _stream(stream_a0, changed, 1)
    assert all(torch.equal(a, b) for a, b in zip(before[:-1], after[:-1]))
    assert not torch.allclose(before[-1], after[-1])
    base = randomise(movinet("A0"))  # the base model's first frame sees the last one
    with torch.no_grad():
        first, first_changed = (base.forward_features(x)[:, :, 0] for x in (clip, changed))
    assert not torch.allclose(first, first_changed)


def test_explicit_state_equals_internal_buffers(stream_a0, clip):
    state = None
    with torch.no_grad():
        for start in range(0, FRAMES, 2):
            pooled, state = stream_a0.stream_features(clip[:, :, start:start + 2], state)
        whole = stream_a0.forward_features(clip)
    assert state[0].item() == FRAMES
    assert (pooled - whole).abs().max().item() <= 1e-4
    zero = stream_a0.initial_state(1, SIZE, SIZE)
    assert [s.shape for s in zero] == [s.shape for s in state] and not any(s.any() for s in zero)


def test_stream_onnx_matches_torch(stream_a0, clip, tmp_path):
    path = tmp_path / "a0_stream.onnx"
    torch_runner = StreamRunner(stream_a0, height=SIZE, width=SIZE, chunk_frames=2)
    onnx_runner = StreamRunner(stream_a0, height=SIZE, width=SIZE, chunk_frames=2,
                               backend="onnxruntime", onnx=path)
    import onnx
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input][:2] == ["clips", "state_0"]
    assert len(graph.input) == len(graph.output) - 1 > 10  # every buffer in and out
    for start in range(0, FRAMES, 2):
        chunk = clip[:, :, start:start + 2]
        ours, ours_features = onnx_runner.step(chunk.numpy())
        reference, reference_features = torch_runner.step(chunk)
        assert np.abs(ours - reference).max() <= 1e-4
        assert np.abs(ours_features - reference_features).max() <= 1e-4
    with torch.no_grad():
        whole = stream_a0(clip)[0].numpy()
    assert np.abs(ours - whole).max() <= 1e-4


def test_base_onnx_matches_torch(clip, tmp_path):
    from ig65m.convert.onnx import OnnxBackend, export_onnx
    embedder = ClipEmbedder(randomise(movinet("A0"))).eval()
    export_onnx(embedder, tmp_path / "a0.onnx", clip_frames=4, crop_size=SIZE)
    logits, features = OnnxBackend(tmp_path / "a0.onnx")(clip[:, :, :4].numpy())
    with torch.no_grad():
        reference_logits, reference_features = embedder(clip[:, :, :4])
    assert np.abs(logits - reference_logits.numpy()).max() <= 1e-4
    assert np.abs(features - reference_features.numpy()).max() <= 1e-4


def test_export_refuses_base_models(tmp_path):
    from ig65m.errors import Ig65mError
    with pytest.raises(Ig65mError):
        export_stream_onnx(movinet("A0"), tmp_path / "x.onnx", height=32, width=32)
    assert not (tmp_path / "x.onnx").exists()


def test_published_layout_loads_through_the_registry(tmp_path, clip):
    """Save a state_dict as the port does and load it the way a user's download does."""
    source = randomise(movinet("A0", stream=True), seed=3)
    path = tmp_path / "modelA0_stream_statedict_v3"
    torch.save(source.state_dict(), path)
    model, sha = get_model("movinet_a0_stream", weights=str(path))
    assert isinstance(model, MoViNet) and model.causal and len(sha) == 64
    with torch.no_grad():
        torch.testing.assert_close(model(clip), source(clip))


def test_non_tf_padding_variant_runs():
    model = MoViNet(A0, num_classes=5, tf_like=False).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 2, 64, 64)).shape == (1, 5)
