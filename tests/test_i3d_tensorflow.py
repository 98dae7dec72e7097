"""DeepMind I3D checkpoint variables and the PyTorch ports' state_dicts -> our InceptionI3D:
round trips from synthetic sources with the exact published names, and the completeness checks."""

import numpy as np
import pytest
import torch

from ig65m.convert.tensorflow import (convert_tf_i3d, pytorch_port_state_dict, read_tf_variables,
                                      tf_i3d_state_dict)
from ig65m.errors import Ig65mError
from ig65m.models.i3d_inception import InceptionI3D, i3d_inception_flow, i3d_inception_rgb
from tests.i3d_helpers import randomise_batch_norms

MIXED = ("3b", "3c", "4b", "4c", "4d", "4e", "4f", "5b", "5c")
# (our sub-module, DeepMind's unit, piergiaj's sub-module) inside a Mixed layer
BRANCHES = (("branch_0", "Branch_0/Conv3d_0a_1x1", "b0"),
            ("branch_1.0", "Branch_1/Conv3d_0a_1x1", "b1a"),
            ("branch_1.1", "Branch_1/Conv3d_0b_3x3", "b1b"),
            ("branch_2.0", "Branch_2/Conv3d_0a_1x1", "b2a"),
            ("branch_2.1", "Branch_2/Conv3d_0b_3x3", "b2b"),
            ("branch_3.1", "Branch_3/Conv3d_0b_1x1", "b3b"))
STEM = (("conv3d_1a_7x7", "Conv3d_1a_7x7"), ("conv3d_2b_1x1", "Conv3d_2b_1x1"),
        ("conv3d_2c_3x3", "Conv3d_2c_3x3"))


def source_model(in_channels=3, num_classes=400, seed=0):
    """A random model whose batch norms have scale 1, as TensorFlow's (no scale variable)."""
    torch.manual_seed(seed)
    model = InceptionI3D(num_classes=num_classes, in_channels=in_channels)
    return randomise_batch_norms(model).eval()


def deepmind_units():
    """(our unit, DeepMind's unit): Mixed_5b's second branch-2 unit is `Conv3d_0a_3x3` in the
    release checkpoints (the name hassony2's converter fixes with `fix_typo`)."""
    units = list(STEM)
    for mixed in MIXED:
        for ours, theirs, _ in BRANCHES:
            if mixed == "5b" and ours == "branch_2.1":
                theirs = "Branch_2/Conv3d_0a_3x3"
            units.append((f"mixed_{mixed}.{ours}", f"Mixed_{mixed}/{theirs}"))
    return units


def deepmind_variables(model, prefix="RGB/inception_i3d/"):
    """The model's tensors as DeepMind's checkpoint holds them: kernels T, H, W, in, out; batch
    norm statistics shaped (1, 1, 1, 1, C); no batch norm scale; plus a global_step."""
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    variables = {"global_step": np.asarray(1000, dtype=np.int64)}
    for ours, theirs in deepmind_units():
        variables[f"{prefix}{theirs}/conv_3d/w"] = state[f"{ours}.conv3d.weight"].transpose(
            2, 3, 4, 1, 0)
        for tf_name, tensor in (("beta", "bias"), ("moving_mean", "running_mean"),
                                ("moving_variance", "running_var")):
            variables[f"{prefix}{theirs}/batch_norm/{tf_name}"] = state[
                f"{ours}.batch3d.{tensor}"].reshape(1, 1, 1, 1, -1)
    logits = f"{prefix}Logits/Conv3d_0c_1x1/conv_3d/"
    variables[logits + "w"] = state["conv3d_0c_1x1.conv3d.weight"].transpose(2, 3, 4, 1, 0)
    variables[logits + "b"] = state["conv3d_0c_1x1.conv3d.bias"]
    return variables


def _same_outputs(model_a, state, in_channels, num_classes):
    model_b = InceptionI3D(num_classes=num_classes, in_channels=in_channels).eval()
    model_b.load_state_dict(state)
    clips = torch.randn(1, in_channels, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model_b(clips), model_a(clips), rtol=0, atol=0)


def test_deepmind_variable_count_is_the_release_count():
    variables = deepmind_variables(source_model())
    # 57 units with a kernel and 3 batch-norm variables, the logits kernel and bias, global_step
    assert len(variables) == 57 * 4 + 2 + 1
    assert "RGB/inception_i3d/Mixed_5b/Branch_2/Conv3d_0a_3x3/conv_3d/w" in variables


def test_rgb_checkpoint_npz_round_trip(tmp_path):
    model = source_model()
    path = tmp_path / "rgb_imagenet.npz"
    np.savez(path, **deepmind_variables(model))
    state = convert_tf_i3d(path, build=i3d_inception_rgb)
    assert torch.equal(state["conv3d_1a_7x7.batch3d.weight"], torch.ones(64))
    _same_outputs(model, state, 3, 400)


def test_two_streams_in_one_file_need_a_scope():
    rgb, flow = source_model(3, seed=1), source_model(2, seed=2)
    variables = {**deepmind_variables(rgb), **deepmind_variables(flow, "Flow/inception_i3d/")}
    with pytest.raises(Ig65mError, match="'Flow/inception_i3d/', 'RGB/inception_i3d/'"):
        tf_i3d_state_dict(variables, build=i3d_inception_flow)
    state = tf_i3d_state_dict(variables, build=i3d_inception_flow, scope="Flow")
    assert state["conv3d_1a_7x7.conv3d.weight"].shape == (64, 2, 7, 7, 7)
    _same_outputs(flow, state, 2, 400)


def test_kinetics_600_checkpoint_without_scope():
    model = source_model(num_classes=600)
    state = tf_i3d_state_dict(deepmind_variables(model, prefix=""), build=i3d_inception_rgb)
    _same_outputs(model, state, 3, 600)


def test_optimizer_slots_are_set_aside():
    variables = deepmind_variables(source_model())
    name = "RGB/inception_i3d/Mixed_4b/Branch_0/Conv3d_0a_1x1/conv_3d/w"
    variables[name + "/Momentum"] = np.zeros_like(variables[name])
    assert len(tf_i3d_state_dict(variables, build=i3d_inception_rgb)) == len(InceptionI3D().state_dict())


@pytest.mark.parametrize("edit, message", [
    (lambda v: v.pop("RGB/inception_i3d/Mixed_5b/Branch_2/Conv3d_0a_3x3/conv_3d/w"),
     r"missing variable RGB/inception_i3d/Mixed_5b/Branch_2/Conv3d_0a_3x3/conv_3d/w \(for "
     r"mixed_5b.branch_2.1.conv3d.weight"),
    (lambda v: v.update({"RGB/inception_i3d/Mixed_6a/conv_3d/w": np.zeros(3)}),
     "extra variable RGB/inception_i3d/Mixed_6a/conv_3d/w"),
    (lambda v: v.update({"RGB/inception_i3d/Conv3d_2b_1x1/batch_norm/beta": np.zeros(32)}),
     r"Conv3d_2b_1x1/batch_norm/beta has shape \(32,\), conv3d_2b_1x1.batch3d.bias needs \(64,\)"),
])
def test_completeness_checks_name_the_variable(edit, message):
    variables = deepmind_variables(source_model())
    edit(variables)
    with pytest.raises(Ig65mError, match=message):
        tf_i3d_state_dict(variables, build=i3d_inception_rgb)


def test_tensorflow_checkpoint_without_tensorflow_is_a_clear_error(tmp_path):
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        with pytest.raises(Ig65mError, match="needs tensorflow.*npz"):
            read_tf_variables(tmp_path / "model.ckpt")
    else:
        pytest.skip("tensorflow is installed")


def test_tensorflow_checkpoint_reader(tmp_path):
    tf = pytest.importorskip("tensorflow")
    model = source_model()
    with tf.Graph().as_default():
        variables = {name: tf.compat.v1.Variable(value, name=name.replace("global_step", "gs"))
                     for name, value in deepmind_variables(model).items()}
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(session, str(tmp_path / "model.ckpt"))
    _same_outputs(model, convert_tf_i3d(prefix, build=i3d_inception_rgb), 3, 400)


def test_bad_npz_is_a_user_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(Ig65mError, match="cannot read"):
        read_tf_variables(path)
    with pytest.raises(Ig65mError, match="not found"):
        read_tf_variables(tmp_path / "absent.npz")


def piergiaj_state_dict(model):
    """The model's tensors under piergiaj/pytorch-i3d's names (with BatchNorm counters)."""
    state = model.state_dict()
    out = {}
    units = [(ours, theirs) for ours, theirs in STEM]
    units += [(f"mixed_{m}.{ours}", f"Mixed_{m}.{theirs}") for m in MIXED
              for ours, _, theirs in BRANCHES]
    for ours, theirs in units:
        out[f"{theirs}.conv3d.weight"] = state[f"{ours}.conv3d.weight"]
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            out[f"{theirs}.bn.{tensor}"] = state[f"{ours}.batch3d.{tensor}"]
        out[f"{theirs}.bn.num_batches_tracked"] = torch.tensor(0)
    out["logits.conv3d.weight"] = state["conv3d_0c_1x1.conv3d.weight"]
    out["logits.conv3d.bias"] = state["conv3d_0c_1x1.conv3d.bias"]
    return out


def test_piergiaj_state_dict_round_trip():
    model = source_model(in_channels=2, num_classes=157, seed=3)  # e.g. flow_charades.pt
    state = pytorch_port_state_dict(piergiaj_state_dict(model), build=i3d_inception_flow)
    _same_outputs(model, state, 2, 157)


def test_hassony2_state_dict_with_dataparallel_prefix():
    model = source_model()
    published = {"module." + key: value for key, value in model.state_dict().items()}
    _same_outputs(model, pytorch_port_state_dict(published, build=i3d_inception_rgb), 3, 400)


def test_port_with_wrong_shapes_names_both_shapes():
    published = piergiaj_state_dict(source_model())
    published["Mixed_4c.b1b.conv3d.weight"] = torch.zeros(224, 112, 1, 3, 3)
    with pytest.raises(Ig65mError, match=r"mixed_4c.branch_1.1.conv3d.weight has shape "
                                         r"\(224, 112, 1, 3, 3\), the model needs "
                                         r"\(224, 112, 3, 3, 3\)"):
        pytorch_port_state_dict(published, build=i3d_inception_rgb)
