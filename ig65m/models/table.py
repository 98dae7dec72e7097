"""Every registered model as data: builder (named, imported when first built), family, feature
dimension, parameter count and pretrained `Weights` row. Importing this module does not import
torch, so `ig65m models` and `ig65m --help` start without it.

Pins: the IG-65M and torchvision releases carry a sha256 prefix in their file names (torch.hub's
convention); the MoViNet and I3D Inception files, published inside git repositories, are pinned by
a raw URL at a commit and their git blob SHA-1 (read from the repositories' trees); the
video-nonlocal-net Caffe2 pickle has no published hash, so only its size is recorded, and
`ig65m models` says that it is not a content check.
"""

import importlib
from dataclasses import dataclass

from ig65m.convert.caffe2 import r2plus1d_34_state_dict
from ig65m.convert.i3d_resnet import i3d_resnet_state_dict
from ig65m.convert.tensorflow import pytorch_port_state_dict, tf_i3d_state_dict
from ig65m.defaults import FLOW_BOUND
from ig65m.models.movinet_config import ARCHS
from ig65m.weights import Pin, Weights


@dataclass(frozen=True)
class Builder:
    """`module.function(**kwargs, num_classes=...)`, the module imported at the first call."""

    module: str
    function: str
    kwargs: tuple = ()

    def __call__(self, *, num_classes):
        build = getattr(importlib.import_module(self.module), self.function)
        return build(**dict(self.kwargs), num_classes=num_classes)


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    builder: Builder
    weights: Weights
    feature_dim: int
    parameters: int
    description: str


ENTRIES = []


def _add(name, family, builder, weights, feature_dim, parameters, description):
    ENTRIES.append(Entry(name, family, builder, weights, feature_dim, parameters, description))


# --- R(2+1)D ----------------------------------------------------------------------------------------
_IG65M = "https://github.com/moabitcoin/ig65m-pytorch/releases/download/v1.0.0/"
_R34 = Builder("ig65m.models.r2plus1d", "r2plus1d_34")
_R34_FILTERS = {"caffe2": r2plus1d_34_state_dict}  # the VMZ Caffe2 release, for `convert`

# name, file, classes, clip frames, labels, parameters, what. The IG-65M heads: 359 classes for
# 8-frame clips, 487 for 32-frame clips (as the released weights).
for _name, _file, _classes, _frames, _labels, _params, _what in (
        ("r2plus1d_34_8_ig65m", "r2plus1d_34_clip8_ig65m_from_scratch-9bae36ae.pth", 359, 8, None,
         63676142, "pre-trained on IG-65M"),
        ("r2plus1d_34_32_ig65m", "r2plus1d_34_clip32_ig65m_from_scratch-449a7af9.pth", 487, 32, None,
         63741806, "pre-trained on IG-65M"),
        ("r2plus1d_34_8_kinetics", "r2plus1d_34_clip8_ft_kinetics_from_ig65m-0aa0550b.pth", 400, 8,
         "kinetics400", 63697175, "IG-65M fine-tuned on Kinetics-400"),
        ("r2plus1d_34_32_kinetics", "r2plus1d_34_clip32_ft_kinetics_from_ig65m-ade133f1.pth", 400,
         32, "kinetics400", 63697175, "IG-65M fine-tuned on Kinetics-400")):
    _add(_name, "r2plus1d", _R34,
         Weights(url=_IG65M + _file, num_classes=_classes, clip_frames=_frames, labels=_labels,
                 filters=_R34_FILTERS, source="facebookresearch/VMZ Caffe2, converted by "
                                              "moabitcoin/ig65m-pytorch"),
         512, _params, f"R(2+1)D-34, {_frames}-frame clips, {_what}")

_add("r2plus1d_18_16_kinetics", "r2plus1d", Builder("ig65m.models.r2plus1d", "r2plus1d_18"),
     Weights(url="https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth", num_classes=400,
             clip_frames=16, labels="kinetics400"),
     512, 31505325, "R(2+1)D-18, 16-frame clips, Kinetics-400 (torchvision's weights)")

# --- I3D ResNet-50 (video-nonlocal-net) ---------------------------------------------------------------
_add("i3d_r50_32_kinetics", "i3d_resnet", Builder("ig65m.models.i3d_resnet", "i3d_r50"),
     Weights(url="https://dl.fbaipublicfiles.com/video-nonlocal/i3d_baseline_32x2_IN_pretrain_400k.pkl",
             num_classes=400, clip_frames=32, frame_stride=2, crop_size=224, frame_size=256,
             mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), labels="kinetics400",
             pin=None, file_format="caffe2", filters={"caffe2": i3d_resnet_state_dict},
             source="facebookresearch/video-nonlocal-net run_i3d_baseline_400k_32f (no published "
                    "hash: the download is not content-checked)"),
     2048, 28043472, "I3D ResNet-50 (video-nonlocal-net baseline), 32-frame clips (every 2nd frame), "
                     "Kinetics-400")

# --- I3D Inception-v1 (DeepMind, ported by hassony2) --------------------------------------------------
_HASSONY2 = ("https://github.com/hassony2/kinetics_i3d_pytorch/raw/"
             "786fbae06a6fd5df419e1961cd32e32fbe8b396d/model/")
_INCEPTION_FILTERS = {"pth": pytorch_port_state_dict, "tensorflow": tf_i3d_state_dict}
# RGB in [-1, 1]: x / 255 * 2 - 1 == (x / 255 - 0.5) / 0.5. Flow: TV-L1 clipped to +-20, / 20.
_add("i3d_inception_rgb_kinetics", "i3d_inception",
     Builder("ig65m.models.i3d_inception", "i3d_inception_rgb"),
     Weights(url=_HASSONY2 + "model_rgb.pth", num_classes=400, clip_frames=64, crop_size=224,
             frame_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), labels="kinetics400",
             pin=Pin("git_blob_sha1", "2a7c22e23e6c74f50a0166ce61110bccd2ab48bb"),
             filters=_INCEPTION_FILTERS,
             source="deepmind/kinetics-i3d rgb_imagenet, converted by hassony2/kinetics_i3d_pytorch"),
     1024, 12697264, "I3D Inception-v1 RGB stream, 64-frame clips, Kinetics-400")
_add("i3d_inception_flow_kinetics", "i3d_inception",
     Builder("ig65m.models.i3d_inception", "i3d_inception_flow"),
     Weights(url=_HASSONY2 + "model_flow.pth", num_classes=400, clip_frames=64, crop_size=224,
             frame_size=256, mean=(0.0, 0.0), std=(FLOW_BOUND, FLOW_BOUND), modality="flow",
             flow_bound=FLOW_BOUND, labels="kinetics400",
             pin=Pin("git_blob_sha1", "5d552d2206f41089c428b0d9d8de3b1fccc85b5a"),
             filters=_INCEPTION_FILTERS,
             source="deepmind/kinetics-i3d flow_imagenet, converted by hassony2/kinetics_i3d_pytorch"),
     1024, 12675312, "I3D Inception-v1 optical-flow stream (TV-L1), 64-frame clips, Kinetics-400")

# --- MoViNet (Atze00/MoViNet-pytorch) -------------------------------------------------------------
_MOVINET = ("https://github.com/Atze00/MoViNet-pytorch/raw/"
            "c2d1edf48fc6c5259707f9d833f22171b4f63493/weights/")
# variant: (input size, clip frames, fps) of the TF release: 10-second clips
_INPUTS = {"A0": (172, 50, 5), "A1": (172, 50, 5), "A2": (224, 50, 5), "A3": (256, 120, 12),
           "A4": (290, 80, 8), "A5": (320, 120, 12)}
_MOVINET_BLOBS = {
    "modelA0_statedict_v3": "8c3bf9376a49d9db72709d5fb60bd0a635069044",
    "modelA0_stream_statedict_v3": "1b467adcbf00040713526ec927b3fbfd5aaac487",
    "modelA1_statedict_v3": "b0cd3abd2ea411382e8e999c7d2cdf2992728d2a",
    "modelA1_stream_statedict_v3": "85acc3e843b293c3a26c7baabd0af711073c1fb7",
    "modelA2_statedict_v3": "999f187b11ee6d477c5f3c8141119d8183c0e072",
    "modelA2_stream_statedict_v3": "fdf1c2e57d36d86607b9b29063ab798eabc1bb83",
    "modelA3_statedict_v3": "dd9a1b1e5cf46068d0beb3d6edc5c3f0c350f694",
    "modelA4_statedict_v3": "34e8b8c2c9488bc14161ffacae58fa94b6791f43",
    "modelA5_statedict_v3": "fce6b0ac5636ed15419ebcaaa6a6067838d2591a",
}
_MOVINET_PARAMETERS = {("A0", False): 3111799, ("A0", True): 3748031, ("A1", False): 4690296,
                       ("A1", True): 6447352, ("A2", False): 5249562, ("A2", True): 7326962,
                       ("A3", False): 7397545, ("A4", False): 11349463, ("A5", False): 18650523}

for (_variant, _stream), _params in _MOVINET_PARAMETERS.items():
    _size, _frames, _fps = _INPUTS[_variant]
    _kind = "stream" if _stream else "base"
    _file = f"model{_variant}_stream_statedict_v3" if _stream else f"model{_variant}_statedict_v3"
    _what = "causal (2+1)D with stream buffers" if _stream else "3D convolutions"
    _add(f"movinet_{_variant.lower()}_{_kind}", "movinet",
         Builder("ig65m.models.movinet", "movinet", (("variant", _variant), ("stream", _stream))),
         Weights(url=_MOVINET + _file, num_classes=600, clip_frames=_frames, crop_size=_size,
                 frame_size=_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), fps=_fps,
                 stream=_stream, labels="kinetics600", pin=Pin("git_blob_sha1", _MOVINET_BLOBS[_file])),
         ARCHS[_variant].head, _params, f"MoViNet-{_variant} {_kind}, {_what}, Kinetics-600")
