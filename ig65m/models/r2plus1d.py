"""R(2+1)D-34 pre-trained on IG-65M (and fine-tuned on Kinetics-400).

D. Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition", CVPR 2018;
D. Ghadiyaram et al., "Large-scale weakly-supervised pre-training for video action recognition",
CVPR 2019. Weights converted from the VMZ Caffe2 release by moabitcoin/ig65m-pytorch.
"""

import torch
import torch.nn as nn
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet



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


def r2plus1d_18(*, num_classes=400):
    """R(2+1)D-18 exactly as torchvision builds it (layers [2, 2, 2, 2]), so torchvision's
    published state_dict loads as is. Input (N, 3, 16, 112, 112) -> 512-d features."""
    return R2Plus1D(block=BasicBlock, conv_makers=[Conv2Plus1D] * 4, layers=[2, 2, 2, 2],
                    stem=R2Plus1dStem, num_classes=num_classes)
