"""R(2+1)D-34 pre-trained on IG-65M (and fine-tuned on Kinetics-400).

D. Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition", CVPR 2018;
D. Ghadiyaram et al., "Large-scale weakly-supervised pre-training for video action recognition",
CVPR 2019. Weights converted from the VMZ Caffe2 release by moabitcoin/ig65m-pytorch.
"""

import torch
import torch.nn as nn
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

from ig65m.models.registry import register_model
from ig65m.weights import Weights

_RELEASE = "https://github.com/moabitcoin/ig65m-pytorch/releases/download/v1.0.0/"


class R2Plus1D(VideoResNet):
    """torchvision's VideoResNet with the interface of the registry.

    Input (N, 3, T, H, W) float32, normalised; `forward_features` -> (N, 512, T/8, H/16, W/16).
    """

    def forward_features(self, clips):
        x = self.stem(clips)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, feature_map):
        return self.fc(torch.flatten(self.avgpool(feature_map), 1))

    def forward(self, clips):
        return self.forward_head(self.forward_features(clips))

    def reset_classifier(self, num_classes):
        """Replace `fc` by a new, randomly initialised (512 -> num_classes) layer (fine-tuning)."""
        self.fc = nn.Linear(self.fc.in_features, num_classes)

    def feature_blocks(self):
        """The stem, then every residual block of layer1..layer4, in forward order (--freeze)."""
        return [self.stem] + [block for layer in (self.layer1, self.layer2, self.layer3,
                                                  self.layer4) for block in layer]


def r2plus1d_34(*, num_classes):
    """R(2+1)D-34 as in the Caffe2 VMZ release: layers [3, 4, 6, 3], 512-d features.

    Two differences from torchvision's builder: the mid channels of the second (2+1)D conv in the
    first block of layers 2-4 are computed from (planes, planes) in Caffe2, i.e. 288, 576, 1152
    (VMZ issue 89, torchvision issue 1265), and BatchNorm uses Caffe2's eps 1e-3.
    """
    model = R2Plus1D(block=BasicBlock, conv_makers=[Conv2Plus1D] * 4, layers=[3, 4, 6, 3],
                     stem=R2Plus1dStem, num_classes=num_classes)
    model.layer2[0].conv2[0] = Conv2Plus1D(128, 128, 288)
    model.layer3[0].conv2[0] = Conv2Plus1D(256, 256, 576)
    model.layer4[0].conv2[0] = Conv2Plus1D(512, 512, 1152)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.eps = 1e-3
            module.momentum = 0.9  # Caffe2's value, kept as the original port did
    return model


def _register(name, file_name, num_classes, clip_frames, labels, what):
    weights = Weights(url=_RELEASE + file_name, num_classes=num_classes, clip_frames=clip_frames,
                      labels=labels)

    @register_model(name, family="r2plus1d", weights=weights, feature_dim=512,
                    description=f"R(2+1)D-34, {clip_frames}-frame clips, {what}")
    def build(*, num_classes=num_classes):
        return r2plus1d_34(num_classes=num_classes)

    return build


# The IG-65M heads: 359 classes for 8-frame clips, 487 for 32-frame clips (as the released weights).
r2plus1d_34_8_ig65m = _register("r2plus1d_34_8_ig65m",
                                "r2plus1d_34_clip8_ig65m_from_scratch-9bae36ae.pth",
                                359, 8, None, "pre-trained on IG-65M")
r2plus1d_34_32_ig65m = _register("r2plus1d_34_32_ig65m",
                                 "r2plus1d_34_clip32_ig65m_from_scratch-449a7af9.pth",
                                 487, 32, None, "pre-trained on IG-65M")
r2plus1d_34_8_kinetics = _register("r2plus1d_34_8_kinetics",
                                   "r2plus1d_34_clip8_ft_kinetics_from_ig65m-0aa0550b.pth",
                                   400, 8, "kinetics400", "IG-65M fine-tuned on Kinetics-400")
r2plus1d_34_32_kinetics = _register("r2plus1d_34_32_kinetics",
                                    "r2plus1d_34_clip32_ft_kinetics_from_ig65m-ade133f1.pth",
                                    400, 32, "kinetics400", "IG-65M fine-tuned on Kinetics-400")


@register_model("r2plus1d_18_16_kinetics", family="r2plus1d", feature_dim=512,
                weights=Weights(url="https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
                                num_classes=400, clip_frames=16, labels="kinetics400"),
                description="R(2+1)D-18, 16-frame clips, Kinetics-400 (torchvision's weights)")
def r2plus1d_18(*, num_classes=400):
    """R(2+1)D-18 exactly as torchvision builds it (layers [2, 2, 2, 2]), so torchvision's
    published state_dict loads as is. Input (N, 3, 16, 112, 112) -> 512-d features."""
    return R2Plus1D(block=BasicBlock, conv_makers=[Conv2Plus1D] * 4, layers=[2, 2, 2, 2],
                    stem=R2Plus1dStem, num_classes=num_classes)
