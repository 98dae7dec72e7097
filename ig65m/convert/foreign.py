"""Read any released weights format into a registry model's state_dict, by file kind and family.

`--weights` and the pretrained download accept what the authors published, not only our `.pth`:
a Caffe2 pickle (`.pkl`: R(2+1)D-34 IG-65M, I3D ResNet-50), DeepMind's TensorFlow variables
(`.npz`, or a checkpoint prefix `.ckpt`) and the published PyTorch ports of I3D Inception. Each goes
through its converter's name map with the completeness checks; Caffe2 pickles through the
numpy-only unpickler.
"""

from pathlib import Path

from ig65m.errors import Ig65mError
from ig65m.weights import load_state_dict

TF_SUFFIXES = (".npz", ".ckpt", ".index")
FOREIGN_FAMILIES = ("i3d_resnet", "i3d_inception")  # plus the R(2+1)D-34 Caffe2 release


def has_foreign_release(spec):
    """Whether `spec`'s authors published weights in a format `convert` reads."""
    return spec.name.startswith("r2plus1d_34") or spec.family in FOREIGN_FAMILIES


def read_weights(spec, path):
    """The file at `path` -> state_dict for `spec`'s model (a registry ModelSpec)."""
    path = Path(path)
    if path.suffix == ".pkl":
        return _from_caffe2(spec, path)
    if path.suffix in TF_SUFFIXES:
        if spec.family != "i3d_inception":
            raise Ig65mError(f"{path} is a TensorFlow checkpoint; only I3D Inception reads those")
        from ig65m.convert.tensorflow import convert_tf_i3d
        return convert_tf_i3d(path.with_suffix("") if path.suffix == ".index" else path)
    state_dict = load_state_dict(path)
    if spec.family == "i3d_inception":  # the piergiaj port's key names, mapped to ours
        from ig65m.convert.tensorflow import pytorch_port_state_dict
        return pytorch_port_state_dict(state_dict)
    return state_dict


def _from_caffe2(spec, path):
    from ig65m.convert.caffe2 import load_caffe2_blobs, r2plus1d_34_state_dict
    from ig65m.convert.i3d_resnet import i3d_resnet_state_dict

    classes = spec.weights.num_classes
    if spec.name.startswith("r2plus1d_34"):
        return r2plus1d_34_state_dict(load_caffe2_blobs(path), classes)
    if spec.family == "i3d_resnet":
        return i3d_resnet_state_dict(load_caffe2_blobs(path), classes)
    raise Ig65mError(f"{path} is a Caffe2 pickle; {spec.name} has no Caffe2 release (give a .pth)")
