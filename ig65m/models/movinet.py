"""MoViNet A0-A5: base models (3D convolutions) and stream models (causal, with stream buffers).

D. Kondratyuk et al., "MoViNets: Mobile Video Networks for Efficient Video Recognition", CVPR 2021.
Module and parameter names follow the PyTorch port Atze00/MoViNet-pytorch, so the state_dicts it
publishes (converted from the TensorFlow release, Kinetics-600) load as they are: base models are
its `causal=False, conv_type="3d", tf_like=True`, stream models its `causal=True,
conv_type="2plus1d", tf_like=True`.

Stream state. A causal model keeps, per temporal convolution, the last `kt - 1` frames of its input
and, per cumulative average (every squeeze-excitation and the final pooling), a running sum; plus
one count of frames seen. `stream_features(clips, state)` is the pure function (state in, state
out: what ONNX export writes); `forward` keeps the state inside the module when `streaming` is
set, like the port, and `clean_activation_buffers()` drops it.
"""

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ig65m.models.movinet_config import ARCHS
from ig65m.models.padding import tf_same_padding


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class HardSigmoid(nn.Module):
    """TensorFlow's hard sigmoid, clip(0.2 x + 0.5, 0, 1): not PyTorch's (x / 6 + 0.5)."""

    def forward(self, x):
        return (0.2 * x + 0.5).clamp(0.0, 1.0)


def _make_divisible(value, divisor=8):
    """Round channels to a multiple of `divisor`, never below 90% of `value` (TF's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def pad_same(x, kernel, stride):
    """Pad the last two dims (H, W) of `x` as TensorFlow "SAME" does for (kh, kw), (sh, sw)."""
    top, bottom = tf_same_padding(x.shape[-2], kernel[0], stride[0])
    left, right = tf_same_padding(x.shape[-1], kernel[1], stride[1])
    return F.pad(x, (left, right, top, bottom))


class TFSameAvgPool(nn.Module):
    """(1, 3, 3) average pool, spatial stride 2, TF "SAME" padding that is not counted."""

    def forward(self, x):
        padded = pad_same(x, (3, 3), (2, 2))
        valid = pad_same(x.new_ones(1, 1, 1, *x.shape[-2:]), (3, 3), (2, 2))
        pool = lambda t: F.avg_pool3d(t, (1, 3, 3), (1, 2, 2))  # noqa: E731
        return pool(padded) / pool(valid)


class _Tape:
    """The stream state of one forward: old buffers are taken in module order, new ones put."""

    def __init__(self, frames, buffers=None):
        self.frames = frames  # (1,) float: frames seen before this chunk
        self._old = iter(buffers) if buffers is not None else None
        self.new = []

    def take(self):
        return None if self._old is None else next(self._old)

    def put(self, buffer):
        self.new.append(buffer)


def cumulative_mean(x, tape):
    """Mean over all frames so far, at every frame: x (N, C, T, 1, 1) -> same shape."""
    total = torch.cumsum(x, 2)
    previous = tape.take()
    if previous is not None:
        total = total + previous
    tape.put(total[:, :, -1:])
    steps = tape.frames + torch.arange(1, x.shape[2] + 1, device=x.device, dtype=x.dtype)
    return total / steps.view(1, 1, -1, 1, 1)


def _conv_bn_act(dims, cin, cout, kernel, stride, padding, groups, bias, norm, act):
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(cin, cout, kernel, stride, padding,
                                                   groups=groups, bias=bias)
    return nn.Sequential(OrderedDict([(f"conv{dims}d", conv),
                                      ("norm", norm(cout, eps=1e-3) if norm else nn.Identity()),
                                      ("act", act() if act else nn.Identity())]))


class ConvUnit(nn.Module):
    """Convolution + norm + activation, 3D or (2+1)D, optionally causal and TF-padded.

    (N, Cin, T, H, W) -> (N, Cout, T, H', W'). "3d": one Conv3d (`conv_1`). "2plus1d": a spatial
    Conv2d on every frame (`conv_1`) then, when kt > 1, a temporal Conv2d (kt, 1) over (T, H*W)
    (`conv_2`), each with its own norm and activation. Causal: no temporal padding; the last
    kt - 1 input frames of the previous chunk (zeros at the start) are put in front instead.
    TF-like: spatial "SAME" padding computed from the input size, temporal (kt - 1) // 2.
    """

    def __init__(self, cin, cout, kernel, *, stride=(1, 1, 1), padding=(0, 0, 0), groups=1,
                 bias=False, norm=None, act=None, conv_type="3d", causal=False, tf_like=False):
        super().__init__()
        if conv_type not in ("3d", "2plus1d"):
            raise ValueError(f"conv_type must be '3d' or '2plus1d', not {conv_type!r}")
        kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        if tf_like:
            padding = ((kernel[0] - 1) // 2, 0, 0)
        if causal:
            padding = (0, *padding[1:])
        self.kernel, self.stride = kernel, stride
        self.conv_type, self.causal, self.tf_like = conv_type, causal, tf_like
        common = dict(groups=groups, bias=bias, norm=norm, act=act)
        self.conv_2 = None
        if conv_type == "3d":
            self.conv_1 = _conv_bn_act(3, cin, cout, kernel, stride, padding, **common)
            return
        self.conv_1 = _conv_bn_act(2, cin, cout, kernel[1:], stride[1:], padding[1:], **common)
        if kernel[0] > 1:
            self.conv_2 = _conv_bn_act(2, cout, cout, (kernel[0], 1), (stride[0], 1),
                                       (padding[0], 0), **common)

    def forward(self, x, tape=None):
        if self.tf_like:
            x = pad_same(x, self.kernel[1:], self.stride[1:])
        if self.conv_type == "3d":
            return self.conv_1(self._buffered(x, tape) if self.kernel[0] > 1 else x)
        n, t = x.shape[0], x.shape[2]
        x = self.conv_1(x.transpose(1, 2).flatten(0, 1)).unflatten(0, (n, t)).transpose(1, 2)
        if self.conv_2 is None:
            return x
        x = self._buffered(x, tape)
        height, width = x.shape[-2], x.shape[-1]
        return self.conv_2(x.flatten(3)).unflatten(3, (height, width))

    def _buffered(self, x, tape):
        if not self.causal:
            return x
        keep = self.kernel[0] - 1
        previous = tape.take()
        if previous is None:
            previous = x.new_zeros(x.shape[0], x.shape[1], keep, x.shape[3], x.shape[4])
        x = torch.cat((previous, x), 2)
        tape.put(x[:, :, x.shape[2] - keep:])
        return x


class SqueezeExcitation(nn.Module):
    """Channel gates from the clip mean (base) or, causal, from the mean of the frames so far
    concatenated with the current frame's spatial mean. (N, C, T, H, W) -> same shape."""

    def __init__(self, channels, *, act, gate, conv_type, causal):
        super().__init__()
        inputs = channels * (2 if causal else 1)
        squeeze = _make_divisible(channels // 4 * (2 if causal else 1))
        common = dict(bias=True, conv_type=conv_type, causal=causal)
        self.fc1 = ConvUnit(inputs, squeeze, 1, **common)
        self.activation_1 = act()
        self.fc2 = ConvUnit(squeeze, channels, 1, **common)
        self.activation_2 = gate()
        self.causal = causal

    def forward(self, x, tape=None):
        if self.causal:
            space = x.mean((3, 4), keepdim=True)
            scale = torch.cat((cumulative_mean(space, tape), space), 1)
        else:
            scale = x.mean((2, 3, 4), keepdim=True)
        scale = self.activation_2(self.fc2(self.activation_1(self.fc1(scale))))
        return x * scale


class Bottleneck(nn.Module):
    """Inverted bottleneck with squeeze-excitation and a ReZero residual (`alpha`, init 0).

    (N, Cin, T, H, W) -> (N, Cout, T, H / stride, W / stride).
    """

    def __init__(self, cin, spec, *, norm, act, conv_type, causal, tf_like):
        super().__init__()
        common = dict(norm=norm, conv_type=conv_type, causal=causal, tf_like=tf_like)
        self.expand = None
        if spec.expanded != spec.out:  # the port's rule, kept for its key names
            self.expand = ConvUnit(cin, spec.expanded, 1, act=act, **common)
        pad = spec.ks // 2 if spec.pad is None else spec.pad
        self.deep = ConvUnit(spec.expanded, spec.expanded, (spec.kt, spec.ks, spec.ks),
                             stride=(1, spec.stride, spec.stride), padding=(spec.kt // 2, pad, pad),
                             groups=spec.expanded, act=act, **common)
        self.se = SqueezeExcitation(spec.expanded, act=act, conv_type=conv_type, causal=causal,
                                    gate=nn.Sigmoid if conv_type == "3d" else HardSigmoid)
        self.project = ConvUnit(spec.expanded, spec.out, 1, **common)
        self.res = None
        if spec.stride != 1 or cin != spec.out:
            layers = [ConvUnit(cin, spec.out, 1, **common)]
            if spec.stride != 1:
                layers.insert(0, TFSameAvgPool() if tf_like else nn.AvgPool3d(
                    (1, 3, 3), (1, spec.stride, spec.stride), (0, spec.pad_avg, spec.pad_avg)))
            self.res = nn.Sequential(*layers)
        self.alpha = nn.Parameter(torch.tensor(0.0))

    def forward(self, x, tape=None):
        residual = x if self.res is None else self.res(x)
        if self.expand is not None:
            x = self.expand(x)
        x = self.project(self.se(self.deep(x, tape), tape))
        return residual + self.alpha * x


class MoViNet(nn.Module):
    """MoViNet classifier. Input (N, 3, T, H, W) RGB in [0, 1].

    Base (`causal=False`): `forward_features` -> conv7 map (N, D, T, H/32, W/32), D = 480 (A0) ...
    992 (A5); `forward_head` averages it and applies the two-layer classifier -> (N, num_classes).
    Stream (`causal=True`): `forward_features` -> the pooled pre-classifier vector (N, D, 1, 1, 1),
    the mean of every frame seen so far (the clip alone unless `streaming` is set); logits at
    frame t depend on frames <= t only.
    """

    def __init__(self, arch, *, num_classes=600, causal=False, conv_type="3d", tf_like=True):
        super().__init__()
        norm = nn.BatchNorm3d if conv_type == "3d" else nn.BatchNorm2d
        act = Swish if conv_type == "3d" else nn.Hardswish
        common = dict(norm=norm, conv_type=conv_type, causal=causal, tf_like=tf_like)
        self.conv1 = ConvUnit(3, arch.stem, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1),
                              act=act, **common)
        blocks, cin = OrderedDict(), arch.stem
        for i, stage in enumerate(arch.stages):
            for j, spec in enumerate(stage):
                blocks[f"b{i}_l{j}"] = Bottleneck(cin, spec, act=act, **common)
                cin = spec.out
        self.blocks = nn.Sequential(blocks)
        self.conv7 = ConvUnit(cin, arch.head, 1, act=act, **common)
        head = dict(bias=True, conv_type=conv_type, causal=causal, tf_like=tf_like)
        self.classifier = nn.Sequential(ConvUnit(arch.head, arch.hidden, 1, **head), Swish(),
                                        nn.Dropout(0.2), ConvUnit(arch.hidden, num_classes, 1, **head))
        self.arch, self.causal, self.num_classes = arch, causal, num_classes
        self.streaming, self._state = False, None
        self.apply(_init_weights)

    def _map(self, clips, tape):
        x = self.conv1(clips, tape)
        for block in self.blocks:
            x = block(x, tape)
        return self.conv7(x, tape)

    def stream_features(self, clips, state=None):
        """Causal features of `clips` after `state` -> (pooled (N, D, 1, 1, 1), new state).

        `state` None starts a stream (zero buffers); else the tuple a previous call returned:
        (frames seen (1,), then every buffer in module order).
        """
        if not self.causal:
            raise ValueError("stream_features needs a causal (stream) model")
        frames = state[0] if state else clips.new_zeros(1)
        tape = _Tape(frames, state[1:] if state else None)
        x = self._map(clips, tape)
        pooled = cumulative_mean(x.mean((3, 4), keepdim=True), tape)[:, :, -1:]
        return pooled, (frames + clips.shape[2], *tape.new)

    def stream_step(self, clips, *state):
        """ONNX-friendly step: (clips, *state) -> (logits, features (N, D), *new state)."""
        pooled, new_state = self.stream_features(clips, state or None)
        return (self.forward_head(pooled), pooled.flatten(1), *new_state)

    def initial_state(self, batch, height, width, device=None):
        """Zero stream state for (batch, 3, *, height, width) inputs (shapes from a 1-frame run)."""
        probe = torch.zeros(batch, 3, 1, height, width, device=device)
        with torch.no_grad():
            _, state = self.stream_features(probe)
        return tuple(torch.zeros_like(buffer) for buffer in state)

    def forward_features(self, clips):
        if not self.causal:
            return self._map(clips, None)
        pooled, state = self.stream_features(clips, self._state if self.streaming else None)
        if self.streaming:
            self._state = tuple(buffer.detach() for buffer in state)
        return pooled

    def forward_head(self, feature_map):
        return self.classifier(feature_map.mean((2, 3, 4), keepdim=True)).flatten(1)

    def forward(self, clips):
        return self.forward_head(self.forward_features(clips))

    def clean_activation_buffers(self):
        """Forget the stream: the next chunk starts a new video (the port's method name)."""
        self._state = None

    def reset_classifier(self, num_classes):
        """Replace the classifier's last 1x1x1 conv (hidden -> classes, with bias) by a new one."""
        unit = self.classifier[-1].conv_1
        old = unit[0]
        unit[0] = type(old)(old.in_channels, num_classes, old.kernel_size, bias=True)
        self.num_classes = num_classes

    def feature_blocks(self):
        """conv1, every bottleneck (b0_l0 ...), then conv7, in forward order (for --freeze)."""
        return [self.conv1, *self.blocks, self.conv7]


def _init_weights(module):
    if isinstance(module, (nn.Conv3d, nn.Conv2d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm3d, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def movinet(variant, *, stream=False, num_classes=600, tf_like=True):
    """MoViNet `variant` ("A0" ... "A5"): base (3D convs) or stream (causal (2+1)D, as the port's
    published stream weights). `tf_like=False` uses PyTorch padding (not for published weights)."""
    arch = ARCHS[variant.upper()]
    if stream:
        return MoViNet(arch, num_classes=num_classes, causal=True, conv_type="2plus1d",
                       tf_like=tf_like)
    return MoViNet(arch, num_classes=num_classes, causal=False, conv_type="3d", tf_like=tf_like)
