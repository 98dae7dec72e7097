"""`convert`: a random R(2+1)D-34 written as a Caffe2 pickle with the VMZ blob names, converted back.

The blob names here are written out from the issue's description of the release files, not taken
from `ig65m.convert.caffe2`, so a wrong name map fails these tests.
"""

import hashlib
import re

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.convert.caffe2 import r2plus1d_34_state_dict, save_caffe2_blobs
from ig65m.convert.onnx import OnnxBackend
from ig65m.convert.release import output_paths, resolve_model
from ig65m.embedder import ClipEmbedder, run_torch
from ig65m.errors import Ig65mError
from ig65m.models import get_model
from ig65m.models.r2plus1d import r2plus1d_34

MODEL = "r2plus1d_34_8_ig65m"
CLASSES = 359
TINY = (1, 3, 8, 32, 32)


def random_r2plus1d_34(num_classes=CLASSES, seed=0):
    """Random weights, and random BN statistics so that swapping any two blobs changes outputs."""
    torch.manual_seed(seed)
    model = r2plus1d_34(num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def caffe2_blobs_of(model, num_classes):
    """The model's tensors under the VMZ Caffe2 names (as numpy float32, as Caffe2 stores them)."""
    blobs = {}

    def conv(name, module):
        blobs[name + "_w"] = module.weight

    def bn(name, module):
        blobs.update({name + "_s": module.weight, name + "_b": module.bias,
                      name + "_rm": module.running_mean, name + "_riv": module.running_var})

    conv("conv1_middle", model.stem[0])
    bn("conv1_middle_spatbn_relu", model.stem[1])
    conv("conv1", model.stem[3])
    bn("conv1_spatbn_relu", model.stem[4])
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    for i, block in enumerate(blocks):
        for j, sequence in ((1, block.conv1), (2, block.conv2)):  # (Conv2Plus1D, BN[, ReLU])
            conv2plus1d, norm = sequence[0], sequence[1]
            conv(f"comp_{i}_conv_{j}_middle", conv2plus1d[0])
            bn(f"comp_{i}_spatbn_{j}_middle", conv2plus1d[1])
            conv(f"comp_{i}_conv_{j}", conv2plus1d[3])
            bn(f"comp_{i}_spatbn_{j}", norm)
        if block.downsample is not None:
            conv(f"shortcut_projection_{i}", block.downsample[0])
            bn(f"shortcut_projection_{i}_spatbn", block.downsample[1])
    blobs[f"last_out_L{num_classes}_w"] = model.fc.weight
    blobs[f"last_out_L{num_classes}_b"] = model.fc.bias
    return {name: tensor.detach().numpy().copy() for name, tensor in blobs.items()}


@pytest.fixture(scope="module")
def model():
    return random_r2plus1d_34()


@pytest.fixture(scope="module")
def blobs(model):
    return caffe2_blobs_of(model, CLASSES)


def test_blob_names_as_released(blobs):
    assert len(blobs) == 347
    shortcuts = {int(m.group(1)) for n in blobs if (m := re.match(r"shortcut_projection_(\d+)_w", n))}
    assert shortcuts == {3, 7, 13}
    assert {int(n.split("_")[1]) for n in blobs if n.startswith("comp_")} == set(range(16))


def test_name_map_restores_every_tensor_and_the_outputs(model, blobs):
    state = r2plus1d_34_state_dict(blobs, CLASSES, build=r2plus1d_34)
    expected = model.state_dict()
    assert sorted(state) == sorted(expected)
    for key, tensor in expected.items():
        if key.endswith("num_batches_tracked"):
            assert state[key].item() == 0 and state[key].dtype == torch.long
        else:
            assert state[key].dtype == torch.float32 and torch.equal(state[key], tensor), key
    fresh = r2plus1d_34(num_classes=CLASSES)
    fresh.load_state_dict(state, strict=True)
    clips = torch.randn(*TINY)
    with torch.inference_mode():
        assert torch.equal(fresh.eval()(clips), model(clips))


def test_name_map_is_pure(blobs):
    before = {name: array.copy() for name, array in blobs.items()}
    state = r2plus1d_34_state_dict(blobs, CLASSES, build=r2plus1d_34)
    state["stem.0.weight"].zero_()
    assert sorted(blobs) == sorted(before)
    assert all(np.array_equal(blobs[name], before[name]) for name in before)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("comp_7_spatbn_2_riv"),
     r"missing blob comp_7_spatbn_2_riv \(for layer3\.0\.conv2\.1\.running_var, shape \(256,\)\)"),
    (lambda b: b.update(comp_5_conv_1_middle_w=np.zeros((2, 3), np.float32)),
     r"blob comp_5_conv_1_middle_w has shape \(2, 3\), layer2\.2\.conv1\.0\.0\.weight needs "
     r"\(\d+, 128, 1, 3, 3\)"),
    (lambda b: b.update(conv1_w_momentum=np.zeros(4, np.float32)),
     r"extra blob conv1_w_momentum \(shape \(4,\)\) fits no tensor"),
    (lambda b: b.update(conv1_spatbn_relu_s=np.ones(64, np.int64)),
     r"blob conv1_spatbn_relu_s is int64, stem\.4\.weight needs floats"),
    (lambda b: b.update(last_out_L400_w=np.zeros((400, 512), np.float32)),
     r"extra blob last_out_L400_w"),
])
def test_incomplete_or_foreign_blobs_are_named(blobs, change, message):
    broken = dict(blobs)
    change(broken)
    with pytest.raises(Ig65mError, match=message):
        r2plus1d_34_state_dict(broken, CLASSES, build=r2plus1d_34)


def test_wrong_classes_names_the_head_found(blobs):
    with pytest.raises(Ig65mError, match=r"head for 359 classes \(last_out_L359_w\), not 400"):
        r2plus1d_34_state_dict(blobs, 400, build=r2plus1d_34)


@pytest.mark.parametrize("args, error", [
    ((MODEL, None, None), None),
    ((None, 8, 359), None),
    ((None, 8, 400), None),
    ((None, 8, 487), "no model has 8-frame clips and 487 classes"),
    ((None, None, 359), "give --model, or --frames and --classes"),
    ((MODEL, 32, None), "--frames 32 does not match r2plus1d_34_8_ig65m"),
    ((MODEL, None, 400), "--classes 400 does not match"),
    (("r2plus1d_18_16_kinetics", None, None), "no Caffe2 / TensorFlow release"),
])
def test_model_choice(args, error):
    model, frames, classes = args
    if error:
        with pytest.raises(Ig65mError, match=error):
            resolve_model(model, frames=frames, classes=classes)
    else:
        spec = resolve_model(model, frames=frames, classes=classes)
        assert spec.weights.clip_frames == 8 and spec.weights.num_classes in (359, 400)


def test_output_paths(tmp_path):
    for given in ("w", "w.pth", "w.onnx"):
        assert output_paths(tmp_path / given) == (tmp_path / "w.pth", tmp_path / "w.onnx")
    assert output_paths(tmp_path / "w.v2") == (tmp_path / "w.v2.pth", tmp_path / "w.v2.onnx")


# --- the command, end to end --------------------------------------------------------------------

def convert(*args):
    return CliRunner().invoke(main, ["convert", *map(str, args)])


@pytest.fixture(scope="module")
def pickle_path(tmp_path_factory, blobs):
    return save_caffe2_blobs(tmp_path_factory.mktemp("caffe2") / "r2plus1d_34_clip8.pkl", blobs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, pickle_path):
    out = tmp_path_factory.mktemp("converted") / "r2plus1d_34_clip8_ig65m"
    result = convert(pickle_path, out, "--model", MODEL)
    return result, out


def test_convert_writes_verified_pth_and_onnx(converted, model):
    result, out = converted
    assert result.exit_code == 0, result.output
    pth, onnx_path = out.with_name(out.name + ".pth"), out.with_name(out.name + ".onnx")
    assert result.stdout.splitlines() == [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path}" for path in (pth, onnx_path)]
    diff = float(re.search(r"max abs difference (\S+)", result.stderr).group(1))
    assert 0 <= diff <= 1e-4
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([pth.name, onnx_path.name])

    loaded, sha = get_model(MODEL, pth)  # the registry's own, weights_only loading path
    assert sha == hashlib.sha256(pth.read_bytes()).hexdigest()
    for key, tensor in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded.state_dict()[key], tensor), key


def test_converted_onnx_has_the_interface_and_agrees(converted, model):
    _, out = converted
    onnx_path = out.with_name(out.name + ".onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["clips"]
    assert [o.name for o in graph.output] == ["logits", "features"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 8, 112, 112]
    clips = torch.randn(2, 3, 8, 112, 112)
    logits, features = OnnxBackend(onnx_path)(clips)
    expected_logits, expected_features = run_torch(ClipEmbedder(model), clips, "cpu")
    assert logits.shape == (2, CLASSES) and features.shape == (2, 512)
    np.testing.assert_allclose(features, expected_features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)


def _assert_failed_cleanly(result, folder, message):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert re.search(message, errors[0]), errors[0]
    assert result.stdout == ""
    assert not [p.name for p in folder.iterdir() if p.name.startswith(("out", ".out"))]


def test_bad_inputs_fail_cleanly(tmp_path, pickle_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {
        "not_a_pickle.pkl": (b"\x89PNG\r\n\x1a\n\x00\x00", "is not a pickle"),
        "no_blobs.pkl": (b"\x80\x02}q\x00X\x05\x00\x00\x00modelq\x01K\x01s.", "no 'blobs' dict"),
        "truncated.pkl": (pickle_path.read_bytes()[:5_000_000], "is truncated"),
    }
    for name, (data, message) in cases.items():
        (bad / name).write_bytes(data)
        _assert_failed_cleanly(convert(bad / name, tmp_path / "out", "--model", MODEL),
                               tmp_path, message)
    _assert_failed_cleanly(convert(tmp_path / "absent.pkl", tmp_path / "out", "--model", MODEL),
                           tmp_path, "not found")


def test_wrong_classes_fails_cleanly(tmp_path, pickle_path):
    result = convert(pickle_path, tmp_path / "out", "--frames", "8", "--classes", "400")
    _assert_failed_cleanly(result, tmp_path, "head for 359 classes .* not 400")


def test_unwritable_output_fails_before_any_work(tmp_path, pickle_path):
    result = convert(pickle_path, tmp_path / "missing" / "out", "--model", MODEL)
    _assert_failed_cleanly(result, tmp_path, "folder .* does not exist")
    (tmp_path / "out.onnx").mkdir()
    result = convert(pickle_path, tmp_path / "out", "--model", MODEL)
    assert result.exit_code == 2 and "is a folder" in result.stderr
    assert not (tmp_path / "out.pth").exists()


def test_hostile_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "weights.pkl"
    hostile.write_bytes(b"\x80\x02}q\x00X\x05\x00\x00\x00blobsq\x01}q\x02X\x07\x00\x00\x00conv1_w"
                        b"q\x03cposix\nsystem\nq\x04X%s\x00\x00\x00touch %sq\x05\x85q\x06Rq\x07ss."
                        % (bytes([len(f"touch {marker}")]), str(marker).encode()))
    result = convert(hostile, tmp_path / "out", "--model", MODEL)
    _assert_failed_cleanly(result, tmp_path, r"refusing to load .* posix\.system")
    assert not marker.exists()


def test_a_failed_check_leaves_no_output(tmp_path, pickle_path, monkeypatch):
    """A failure after both files were written (here: ONNX disagreeing) leaves nothing behind."""
    import ig65m.convert.release as release

    def disagree(embedder, onnx_path, **kwargs):
        assert onnx_path.is_file() and onnx_path.stat().st_size > 1_000_000
        raise Ig65mError("the ONNX model disagrees with PyTorch: max abs difference 1")

    monkeypatch.setattr(release, "compare_backends", disagree)
    result = convert(pickle_path, tmp_path / "out", "--model", MODEL)
    _assert_failed_cleanly(result, tmp_path, "disagrees with PyTorch")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
