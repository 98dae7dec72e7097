"""I3D ResNet-50, the baseline of Facebook's video-nonlocal-net (Caffe2), Kinetics-400.

X. Wang, R. Girshick, A. Gupta, K. He, "Non-local Neural Networks", CVPR 2018 (the I3D baseline
without non-local blocks, `run_i3d_baseline_400k_32f`: 32-frame clips sampled every 2nd frame).

Layout as the Caffe2 model and its PyTorch port Tushar-N/pytorch-resnet3d: a 5x7x7 stem with stride
2 in time and space, a 2x3x3 max pool with stride 2, a 2x1x1 temporal max pool after `layer1`,
bottlenecks whose first convolution is inflated to 3x1x1 in alternate blocks, 2048-d features.
Parameter names are the port's, so its converted `i3d_r50_kinetics.pth` loads as it is; the Caffe2
pickle goes through `ig65m.convert.i3d_resnet`.
"""

import torch
import torch.nn as nn

from ig65m.models.batchnorm import FrozenCounterBatchNorm3d

# Which blocks of layers 1-4 have a 3x1x1 (1) rather than 1x1x1 (0) first convolution.
INFLATED = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


class Bottleneck(nn.Module):
    """(N, C, T, H, W) -> (N, 4 * planes, T, H / stride, W / stride).

    conv1 is 3x1x1 (padding 1 in time) when `inflated`, else 1x1x1; conv2 is 1x3x3 with the
    spatial stride; conv3 is 1x1x1 to 4 * planes; `downsample` projects the shortcut.
    """

    def __init__(self, in_channels, planes, *, stride, inflated, downsample=None):
        super().__init__()
        temporal = 3 if inflated else 1
        self.conv1 = nn.Conv3d(in_channels, planes, (temporal, 1, 1), padding=(temporal // 2, 0, 0),
                               bias=False)
        self.bn1 = FrozenCounterBatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride),
                               padding=(0, 1, 1), bias=False)
        self.bn2 = FrozenCounterBatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = FrozenCounterBatchNorm3d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def _make_layer(in_channels, planes, inflated, stride):
    downsample = None
    if stride != 1 or in_channels != planes * EXPANSION:
        downsample = nn.Sequential(
            nn.Conv3d(in_channels, planes * EXPANSION, 1, stride=(1, stride, stride), bias=False),
            FrozenCounterBatchNorm3d(planes * EXPANSION))
    blocks = [Bottleneck(in_channels, planes, stride=stride, inflated=inflated[0],
                         downsample=downsample)]
    blocks += [Bottleneck(planes * EXPANSION, planes, stride=1, inflated=flag)
               for flag in inflated[1:]]
    return nn.Sequential(*blocks)


class I3DResNet50(nn.Module):
    """I3D ResNet-50: clips (N, 3, T, H, W) -> feature map (N, 2048, T/8, H/32, W/32) -> logits.

    Input: RGB, (x / 255 - 0.45) / 0.225 (Caffe2's 114.75 and 57.375 on the 0-255 scale), T >= 8.
    Head: global average pool, dropout 0.5 (training only), fully connected `fc`.
    """

    def __init__(self, *, num_classes=400, dropout=0.5):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, (5, 7, 7), stride=2, padding=(2, 3, 3), bias=False)
        self.bn1 = FrozenCounterBatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool1 = nn.MaxPool3d((2, 3, 3), stride=2)
        self.maxpool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
        in_channels = 64
        for index, (planes, inflated) in enumerate(zip(WIDTHS, INFLATED)):
            stride = 1 if index == 0 else 2
            self.add_module(f"layer{index + 1}", _make_layer(in_channels, planes, inflated, stride))
            in_channels = planes * EXPANSION
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, clips):
        x = self.maxpool1(self.relu(self.bn1(self.conv1(clips))))
        x = self.maxpool2(self.layer1(x))
        return self.layer4(self.layer3(self.layer2(x)))

    def forward_head(self, feature_map):
        return self.fc(self.drop(torch.flatten(feature_map.mean(dim=(2, 3, 4)), 1)))

    def forward(self, clips):
        return self.forward_head(self.forward_features(clips))

    def reset_classifier(self, num_classes):
        """Replace `fc` by a new, randomly initialised 2048 -> num_classes layer (fine-tuning)."""
        self.fc = nn.Linear(self.fc.in_features, num_classes)

    def feature_blocks(self):
        """The stem convolution, then every bottleneck of layer1..layer4, in forward order."""
        return [nn.ModuleList([self.conv1, self.bn1])] + [
            block for layer in (self.layer1, self.layer2, self.layer3, self.layer4)
            for block in layer]


def i3d_r50(*, num_classes=400):
    """I3D ResNet-50: (N, 3, 32, 224, 224) -> 2048-d features (feature map 4x7x7), 400 logits."""
    return I3DResNet50(num_classes=num_classes)
