"""--weights files that are not what they should be, and state_dicts from the seed projects."""

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.errors import Ig65mError
from ig65m.models import get_model, get_spec
from ig65m.models.loading import load_weights

COUNTER = "num_batches_tracked"


def _zeros_and_batch_norms(name):
    """Every tensor of model `name` as zeros (from meta shapes: no random init) and the names of
    its BatchNorm modules."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = spec.builder(num_classes=spec.weights.num_classes)
    state = {key: torch.zeros(value.shape, dtype=value.dtype)
             for key, value in model.state_dict().items()}
    return state, [module_name for module_name, module in model.named_modules()
                   if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]


def _variants(name):
    state, bn = _zeros_and_batch_norms(name)
    assert bn, name
    with_counters = dict(state, **{f"{module}.{COUNTER}": torch.tensor(7) for module in bn})
    without = {key: value for key, value in state.items() if not key.endswith(COUNTER)}
    return state, {"with": with_counters, "without": without}


@pytest.mark.parametrize("name", ["i3d_inception_rgb_kinetics", "movinet_a0_base"])
def test_seed_state_dicts_with_and_without_batchnorm_counters_load(tmp_path, name):
    """Issue 13 item 15: a family loads, through --weights, a state_dict saved by a plain PyTorch
    model (a `num_batches_tracked` per BatchNorm) and one saved without them."""
    state, variants = _variants(name)
    for label, variant in variants.items():
        path = tmp_path / f"{label}.pth"
        torch.save(variant, path)
        model, _ = get_model(name, path, progress=False)
        first = next(key for key in state if key.endswith("weight"))
        assert torch.equal(model.state_dict()[first], state[first]), (name, label)


@pytest.mark.parametrize("name", ["r2plus1d_18_16_kinetics", "i3d_r50_32_kinetics"])
def test_large_families_reconcile_counters_in_the_one_check(name):
    """The same for the two large families, in memory (their files take ~15 s each to write and
    read here; the file path is the same `read_pth` as above): `load_weights` is what --weights
    calls after reading."""
    state, variants = _variants(name)
    spec = get_spec(name)
    for label, variant in variants.items():
        with torch.device("meta"):
            model = spec.builder(num_classes=spec.weights.num_classes)
        load_weights(model, variant, source=f"{label}.pth")
        first = next(key for key in state if key.endswith("weight"))
        assert torch.equal(model.state_dict()[first], state[first]), (name, label)


def test_the_completeness_check_still_names_real_mismatches():
    model, _ = get_model("movinet_a0_base", "random:0")
    state = dict(model.state_dict())
    state.pop(next(key for key in state if key.endswith("weight")))
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(Ig65mError, match="missing: .*unexpected: extra.weight"):
        load_weights(model, state, source="x.pth")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.pth").write_bytes(b"")
    (folder / "text.pth").write_text("not weights\n")
    (folder / "notes.pkl").write_text("not a pickle\n")
    np.save(folder / "array.npy", np.zeros(3))
    (folder / "array.npy").rename(folder / "array.pth")
    return folder


@pytest.mark.parametrize("file, said", [
    ("empty.pth", "is an empty file; expected a PyTorch state_dict"),
    ("text.pth", "it is a text file of 12 bytes; expected a PyTorch state_dict"),
    ("array.pth", "it is a .npy array of .* bytes; expected a PyTorch state_dict"),
    ("notes.pkl", "is not a pickle .*a text file of 13 bytes.*expected a Caffe2 weights pickle"),
])
def test_a_wrong_weights_file_is_one_line_in_each_command(bad_files, tmp_path, file, said):
    """Issue 13 item 3: extract, classify and convert say what the file is and what they expected
    (no IndexError, no bare number from the unpickler)."""
    from tests.videos import lossless_video

    video = lossless_video(tmp_path / "v.mkv", frames=4) and tmp_path / "v.mkv"
    weights = str(bad_files / file)
    model = "i3d_r50_32_kinetics" if file.endswith(".pkl") else "movinet_a0_base"
    runs = {
        "extract": ["extract", str(video), str(tmp_path / "f.npy"), "--weights", weights,
                    "--model", model],
        "classify": ["classify", str(video), "--weights", weights, "--model", model],
        "convert": ["convert", weights, str(tmp_path / "out"), "--model",
                    "i3d_r50_32_kinetics" if file.endswith(".pkl") else "i3d_inception_rgb_kinetics"],
    }
    for command, argv in runs.items():
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 2, (command, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, result.stderr)
        assert re.search(said, lines[0]), (command, lines[0])
    assert not list(tmp_path.glob("f.*")) and not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_weights_saved_in_another_float_precision_load_as_float32(tmp_path, dtype):
    """A state_dict saved in double or half precision (a numpy conversion, a fp16 release) gives
    the features of its float32 values, not a RuntimeError traceback at the first clip."""
    from tests.videos import lossless_video

    model, _ = get_model("movinet_a0_base", "random:0")
    state = {key: value.to(dtype) if value.is_floating_point() else value
             for key, value in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    torch.save({key: value.to(dtype).float() if value.is_floating_point() else value
                for key, value in model.state_dict().items()}, tmp_path / "w32.pth")
    lossless_video(tmp_path / "v.mkv", frames=4)
    for name in ("w", "w32"):
        result = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mkv"),
                                           str(tmp_path / f"{name}.npy"), "--weights",
                                           str(tmp_path / f"{name}.pth"), "--model",
                                           "movinet_a0_base", "--frame-size", "32",
                                           "--crop-size", "32", "--backend", "torch"])
        assert result.exit_code == 0, (result.output, result.exception)
    assert np.array_equal(np.load(tmp_path / "w.npy"), np.load(tmp_path / "w32.npy"))


def test_integer_tensors_for_float_parameters_are_one_error_line():
    model, _ = get_model("movinet_a0_base", "random:0")
    state = dict(model.state_dict())
    key = next(key for key in state if key.endswith("weight"))
    state[key] = state[key].to(torch.int32)
    with pytest.raises(Ig65mError, match=f"{re.escape(key)} is torch.int32, the model's is "
                                         "torch.float32"):
        load_weights(model, state, source="x.pth")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_one_error_line_and_write_nothing(tmp_path, value):
    """They used to give a features file of NaN, exit 0, that index-build then refused."""
    from tests.videos import lossless_video

    model, _ = get_model("movinet_a0_base", "random:0")
    state = dict(model.state_dict())
    key = next(key for key in state if key.endswith("weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = value
    torch.save(state, tmp_path / "w.pth")
    lossless_video(tmp_path / "v.mkv", frames=4)
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mkv"), str(tmp_path / "f.npy"),
                                       "--weights", str(tmp_path / "w.pth"), "--model",
                                       "movinet_a0_base", "--frame-size", "32", "--crop-size", "32",
                                       "--backend", "torch"])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"error: weights in {tmp_path / 'w.pth'} hold NaN or infinite values ({key})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mkv", "w.pth"]
