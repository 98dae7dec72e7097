"""Caffe2 video-nonlocal-net I3D ResNet-50 blobs -> state_dict of `ig65m.models.i3d_resnet`.

The release file (`i3d_baseline_32x2_IN_pretrain_400k.pkl`) is a training checkpoint: besides the
parameters it holds `model_iter`, `lr` and one `<param>_momentum` blob per trainable parameter. Those
are training state and are set aside; every other blob must be used exactly once.

Blob names (as Tushar-N/pytorch-resnet3d maps them): `conv1_w`, `res_conv1_bn_{s,b,rm,riv}`,
`res{2-5}_{block}_branch2{a,b,c}_w` and `..._bn_{s,b,rm,riv}` for the bottleneck convolutions,
`res{2-5}_0_branch1_w` and `..._bn_*` for the shortcut projections, `pred_w`, `pred_b`.
"""

import numpy as np

from ig65m.convert.caffe2 import load_caffe2_blobs
from ig65m.convert.shapes import fit_problems, on_meta
from ig65m.errors import Ig65mError

TRAINING_STATE = ("model_iter", "lr")
_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
_BRANCH2 = {"1": "a", "2": "b", "3": "c"}


def _blob_of(key):
    """Caffe2 blob name of one state_dict key, e.g. layer1.0.bn2.running_var ->
    res2_0_branch2b_bn_riv; layer3.0.downsample.0.weight -> res4_0_branch1_w."""
    module, tensor = key.rsplit(".", 1)
    if module == "fc":
        return "pred_" + tensor[0]  # pred_w, pred_b
    if module == "conv1":
        return "conv1_w"
    if module == "bn1":
        return "res_conv1_bn_" + _BN[tensor]
    layer, block, rest = module.split(".", 2)
    prefix = f"res{int(layer[len('layer'):]) + 1}_{block}_"
    if rest == "downsample.0":
        return prefix + "branch1_w"
    if rest == "downsample.1":
        return prefix + "branch1_bn_" + _BN[tensor]
    kind, index = rest[:-1], rest[-1]
    branch = prefix + "branch2" + _BRANCH2[index]
    return branch + "_w" if kind == "conv" else f"{branch}_bn_{_BN[tensor]}"


def i3d_resnet_blob_names(expected):
    """{state_dict key: Caffe2 blob name} for every tensor of an I3D ResNet-50 state_dict."""
    names = {key: _blob_of(key) for key in expected}
    assert len(set(names.values())) == len(names), "two tensors would read the same blob"
    return names


def split_training_state(blobs):
    """-> (parameter blobs, names set aside: model_iter, lr and the `_momentum` blobs)."""
    aside = sorted(name for name in blobs
                   if name in TRAINING_STATE or name.endswith("_momentum"))
    return {name: value for name, value in blobs.items() if name not in aside}, aside


def i3d_resnet_state_dict(blobs, num_classes=None, *, build):
    """Caffe2 I3D ResNet-50 blobs {name: array} -> state_dict of `build(num_classes=...)`, the
    I3D ResNet-50 builder (called on the meta device for names and shapes): the checkpoint filter
    of the video-nonlocal-net release.

    Pure: `blobs` is not modified, arrays are copied as float32. `num_classes` defaults to the rows
    of `pred_w`. Every parameter blob is used exactly once and every tensor is written; otherwise
    Ig65mError lists each missing, extra or wrongly shaped blob with both shapes.
    """
    import torch

    params, _ = split_training_state(blobs)
    if num_classes is None:
        num_classes = int(params["pred_w"].shape[0]) if "pred_w" in params else 400
    expected = on_meta(build, num_classes).state_dict()
    names = i3d_resnet_blob_names(expected)
    problems = fit_problems(params, names, expected, kind="blob")
    if problems:
        shown = "; ".join(problems[:6])
        more = f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        raise Ig65mError(f"the Caffe2 blobs do not fit I3D ResNet-50 with {num_classes} classes: "
                         f"{shown}{more}")
    return {key: torch.from_numpy(np.array(params[names[key]], dtype=np.float32))
            for key in expected}


def convert_i3d_resnet(path, num_classes=None, *, build):
    """Read the Caffe2 pickle at `path` with the safe loader -> state_dict (see above)."""
    return i3d_resnet_state_dict(load_caffe2_blobs(path), num_classes, build=build)
