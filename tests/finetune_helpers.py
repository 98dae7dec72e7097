"""Small registry models for the finetune/evaluate tests, which must run in minutes on 2 CPU cores.

`TinyVideoNet` follows the model interface and the fine-tuning conventions (forward_features,
forward_head, reset_classifier, feature_blocks) with 3D convolutions small enough to train in
seconds; `ColourProbe` scores each class by the mean of one colour channel, so evaluation results
can be computed by hand.
"""

import contextlib

import torch
import torch.nn as nn

from ig65m.models import registry
from ig65m.weights import Weights


def _conv3d(cin, cout, spatial_stride, temporal_stride):
    """3x3x3 convolution, BatchNorm, ReLU: direction-selective filters from the first layer."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, (temporal_stride, spatial_stride, spatial_stride), 1, bias=False),
        nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class TinyVideoNet(nn.Module):
    """(N, 3, T, H, W) -> map (N, 48, (T-1)/2, H/8, W/8) -> logits (N, num_classes)."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = _conv3d(3, 24, 2, 1)
        self.block1 = _conv3d(24, 32, 2, 2)
        self.block2 = _conv3d(32, 48, 2, 1)
        self.fc = nn.Linear(48, num_classes)

    def feature_blocks(self):
        return [self.stem, self.block1, self.block2]

    def forward_features(self, clips):
        # frame differences first: motion is what the toy classes differ in, and a network this
        # small must learn it from a few dozen videos
        motion = clips[:, :, 1:] - clips[:, :, :-1]
        return self.block2(self.block1(self.stem(motion)))

    def forward_head(self, feature_map):
        return self.fc(feature_map.mean((2, 3, 4)))

    def forward(self, clips):
        return self.forward_head(self.forward_features(clips))

    def reset_classifier(self, num_classes):
        self.fc = nn.Linear(self.fc.in_features, num_classes)


class ColourProbe(nn.Module):
    """Logits = 10 x the mean of each input channel (classes red, green, blue); no parameters
    but a scale buffer, so a weights file for it exists and loads strictly."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.register_buffer("scale", torch.tensor(10.0))

    def forward_features(self, clips):
        return clips.mean((2, 3, 4), keepdim=True)

    def forward_head(self, feature_map):
        return self.scale * feature_map.flatten(1)

    def forward(self, clips):
        return self.forward_head(self.forward_features(clips))


@contextlib.contextmanager
def registered(name, builder, *, num_classes, family, mean=(0.5, 0.5, 0.5), std=(0.25,) * 3):
    """Register `builder` under `name` for the duration of the block (then remove it again)."""
    weights = Weights(url=f"file:///nonexistent/{name}-00000000.pth", num_classes=num_classes,
                      clip_frames=8, crop_size=32, frame_size=40, mean=mean, std=std)
    registry.register_model(name, family=family, weights=weights, feature_dim=48)(builder)
    try:
        yield registry.get_spec(name)
    finally:
        registry._MODELS.pop(name, None)
