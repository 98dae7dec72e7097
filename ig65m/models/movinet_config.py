"""MoViNet A0-A5 architectures as data (Kondratyuk et al., "MoViNets", CVPR 2021).

The block tables are those of the TensorFlow release, in the layout of the PyTorch port
(Atze00/MoViNet-pytorch) whose state_dicts we load. A row `Bneck(out, expanded, kt, ks, stride)`
is one inverted-bottleneck block: 1x1x1 expansion to `expanded` channels, a depthwise
(kt, ks, ks) convolution with spatial stride `stride`, squeeze-excitation, 1x1x1 projection to `out`.
The input channels of a block are the output channels of the one before.

`pad` / `pad_avg` are the spatial paddings of the depthwise convolution and of the residual
average pool in the non-TF-like mode; a few stride-2 blocks of the port use 0 where the rule
(ks // 2, and 1) would give otherwise. In TF-like mode (the published weights) both are computed
from the input size instead.
"""

from typing import NamedTuple


class Bneck(NamedTuple):
    out: int
    expanded: int
    kt: int  # temporal kernel size
    ks: int  # spatial kernel size
    stride: int = 1  # spatial stride; temporal stride is always 1
    pad: int | None = None  # spatial padding of the depthwise conv (None: ks // 2)
    pad_avg: int = 1  # spatial padding of the residual average pool


class Arch(NamedTuple):
    name: str
    stem: int  # channels of conv1, a (1, 3, 3) convolution with spatial stride 2
    stages: tuple  # five tuples of Bneck
    head: int  # channels of conv7 (1x1x1): the feature dimension
    hidden: int = 2048  # dense9 of the classifier


def _row(out, expanded, kt, ks, stride=1, pad=None, pad_avg=1):
    return Bneck(out, expanded, kt, ks, stride, pad, pad_avg)


def _rows(*specs):
    """Flatten rows and (count, row) repetitions into one stage tuple."""
    blocks = []
    for spec in specs:
        if isinstance(spec[0], int) and isinstance(spec[1], tuple):
            blocks += [_row(*spec[1])] * spec[0]
        else:
            blocks.append(_row(*spec))
    return tuple(blocks)


A0 = Arch("A0", 8, (
    _rows((8, 24, 1, 5, 2)),
    _rows((32, 80, 3, 3, 2, 0, 0), (2, (32, 80, 3, 3))),
    _rows((56, 184, 5, 3, 2, 0, 0), (56, 112, 3, 3), (56, 184, 3, 3)),
    _rows((56, 184, 5, 3), (3, (56, 184, 3, 3))),
    _rows((104, 384, 5, 3, 2), (2, (104, 280, 1, 5)), (104, 344, 1, 5)),
), 480)

A1 = Arch("A1", 16, (
    _rows((16, 40, 1, 5, 2), (16, 40, 3, 3)),
    _rows((40, 96, 3, 3, 2, 0, 0), (40, 120, 3, 3), (2, (40, 96, 3, 3))),
    _rows((64, 216, 5, 3, 2, 0, 0), (64, 128, 3, 3), (64, 216, 3, 3), (64, 168, 3, 3),
          (64, 216, 3, 3)),
    _rows((64, 216, 5, 3), (2, (64, 216, 3, 3)), (64, 128, 3, 3), (64, 128, 1, 5),
          (64, 216, 3, 3)),
    _rows((136, 456, 5, 3, 2), (3, (136, 360, 1, 5)), (136, 456, 1, 5), (136, 456, 3, 3),
          (136, 544, 1, 3)),
), 600)

A2 = Arch("A2", 16, (
    _rows((16, 40, 1, 5, 2), (16, 40, 3, 3), (16, 64, 3, 3)),
    _rows((40, 96, 3, 3, 2), (40, 120, 3, 3), (2, (40, 96, 3, 3)), (40, 120, 3, 3)),
    _rows((72, 240, 5, 3, 2), (72, 160, 3, 3), (72, 240, 3, 3), (72, 192, 3, 3),
          (72, 240, 3, 3)),
    _rows((72, 240, 5, 3), (3, (72, 240, 3, 3)), (72, 144, 1, 5), (72, 240, 3, 3)),
    _rows((144, 480, 5, 3, 2), (2, (144, 384, 1, 5)), (2, (144, 480, 1, 5)), (144, 480, 3, 3),
          (144, 576, 1, 3)),
), 640)

A3 = Arch("A3", 16, (
    _rows((16, 40, 1, 5, 2), (16, 40, 3, 3), (16, 64, 3, 3), (16, 40, 3, 3)),
    _rows((48, 112, 3, 3, 2), (48, 144, 3, 3), (48, 112, 3, 3), (48, 112, 1, 5),
          (2, (48, 144, 3, 3))),
    _rows((80, 240, 5, 3, 2), (80, 152, 3, 3), (80, 240, 3, 3), (80, 192, 3, 3),
          (80, 240, 3, 3)),
    _rows((88, 264, 5, 3), (3, (88, 264, 3, 3)), (88, 160, 1, 5), (3, (88, 264, 3, 3))),
    _rows((168, 560, 5, 3, 2), (2, (168, 448, 1, 5)), (2, (168, 560, 1, 5)), (168, 560, 3, 3),
          (2, (168, 448, 1, 5)), (168, 560, 3, 3), (168, 672, 1, 3)),
), 744)

A4 = Arch("A4", 24, (
    _rows((24, 64, 1, 5, 2, 1, 0), (24, 64, 3, 3), (24, 96, 3, 3), (24, 64, 3, 3),
          (24, 96, 3, 3), (24, 64, 3, 3)),
    _rows((56, 168, 3, 3, 2), (56, 168, 3, 3), (2, (56, 136, 3, 3)), (3, (56, 168, 3, 3)),
          (56, 136, 1, 5), (56, 136, 3, 3)),
    _rows((96, 320, 5, 3, 2), (96, 160, 3, 3), (96, 320, 3, 3), (96, 192, 3, 3),
          (96, 320, 3, 3), (96, 160, 3, 3), (96, 320, 3, 3), (96, 256, 3, 3), (96, 320, 3, 3)),
    _rows((96, 320, 5, 3), (3, (96, 320, 3, 3)), (96, 192, 1, 5), (2, (96, 320, 3, 3)),
          (96, 192, 3, 3), (2, (96, 320, 3, 3))),
    _rows((192, 640, 5, 3, 2), (2, (192, 512, 1, 5)), (2, (192, 640, 1, 5)), (192, 640, 3, 3),
          (2, (192, 512, 1, 5)), (192, 640, 1, 5), (192, 768, 1, 5), (192, 640, 1, 5),
          (192, 640, 3, 3), (192, 768, 3, 3)),
), 856)

A5 = Arch("A5", 24, (
    _rows((24, 64, 1, 5, 2), (24, 64, 1, 5), (24, 96, 3, 3), (24, 64, 3, 3), (24, 96, 3, 3),
          (24, 64, 3, 3)),
    _rows((64, 192, 5, 3, 2), (3, (64, 152, 3, 3)), (3, (64, 192, 3, 3)), (2, (64, 152, 3, 3)),
          (2, (64, 192, 3, 3))),
    _rows((112, 376, 5, 3, 2), (112, 224, 3, 3), (2, (112, 376, 3, 3)), (112, 296, 3, 3),
          (112, 376, 3, 3), (112, 224, 3, 3), (2, (112, 376, 3, 3)), (112, 296, 3, 3),
          (3, (112, 376, 3, 3))),
    _rows((120, 376, 5, 3), (3, (120, 376, 3, 3)), (120, 224, 1, 5), (2, (120, 376, 3, 3)),
          (120, 224, 3, 3), (3, (120, 376, 3, 3))),
    _rows((224, 744, 5, 3, 2), (224, 744, 3, 3), (2, (224, 600, 1, 5)), (2, (224, 744, 1, 5)),
          (224, 744, 3, 3), (224, 896, 1, 5), (2, (224, 600, 1, 5)), (224, 896, 1, 5),
          (224, 744, 1, 5), (224, 744, 3, 3), (224, 896, 1, 5), (2, (224, 600, 1, 5)),
          (224, 744, 1, 5), (224, 744, 3, 3)),
), 992)

ARCHS = {arch.name: arch for arch in (A0, A1, A2, A3, A4, A5)}
