"""Video deep dream: gradient ascent on a video's clips to maximise one layer's activations.

Each clip of the model's clip length starts as the video's own frames. The objective is the mean
square of the chosen layer's activations (all channels, or `channels`), relative to the
undreamt clip's, minus `tv` times the clip's total variation (mean absolute difference between
neighbouring pixels over time, height and width), which keeps the dream from turning into pixel
noise. Each step moves the clip along the objective's gradient, normalised to a mean magnitude of
`lr` (in normalised units, i.e. the model's mean/std), after a random shift of up to 1/28 of the
frame's short side (drawn from `seed`; 4 pixels at 112) that is undone afterwards; the clip is then clamped to pixels in
[0, 255]. `octaves` > 1 dreams a coarse-to-fine pyramid, as image deep dream does: the clip
shrunk by 1.4 per octave first, each octave's detail carried up to the next.

Long spans are dreamt clip by clip, consecutive clips overlapping by a quarter of a clip and
cross-faded there, holding one clip at a time: memory does not grow with the video. Frames
stream out to the writer (`ig65m.sample.write_video`: GIF or MP4) or, for `.png`, into a contact
sheet of a few evenly spaced frames, source above dream.
"""

import itertools
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ig65m.errors import Ig65mError
from ig65m.extract import resolve_device
from ig65m.fileio import atomic_path, check_writable
from ig65m.models import get_model, get_spec
from ig65m.sample import write_video
from ig65m.video import check_source, open_container, read_frames

OUTPUTS = (".gif", ".mp4", ".png")
OCTAVE_SCALE = 1.4
MIN_SIDE = 32  # smallest octave side: smaller clips vanish inside the network
_JITTER = 28  # random shifts of up to short side / _JITTER pixels per step
_SHEET_FRAMES = 6
_GAP = 4  # pixels between sheet frames


@dataclass(frozen=True)
class DreamOptions:
    """What a dream maximises and how: see the module docstring."""

    layer: str | None = None  # None: `default_layer`
    channels: tuple | None = None  # None: the whole layer
    steps: int = 10
    lr: float = 0.05
    tv: float = 0.5
    octaves: int = 3
    seed: int = 0

    def check(self):
        if self.steps < 1 or self.octaves < 1:
            raise Ig65mError("--steps and --octaves must be at least 1")
        if not (self.lr > 0 and np.isfinite(self.lr)) or not (self.tv >= 0 and np.isfinite(self.tv)):
            raise Ig65mError("--lr must be positive and --tv at least 0 (finite numbers)")
        if self.channels is not None and (not self.channels or min(self.channels) < 0):
            raise Ig65mError("--channels takes channel numbers 0, 1, ... separated by commas")
        if not 0 <= self.seed < 2**32:
            raise Ig65mError(f"--seed must be from 0 to {2**32 - 1}, got {self.seed}")


def rgb_spec(model):
    """The registry spec of `model`; Ig65mError for models that do not take RGB frames."""
    spec = get_spec(model)
    if spec.weights.modality == "flow":
        raise Ig65mError(f"{model} takes optical flow, not RGB frames: dream with an RGB model")
    return spec


def list_layers(model, size=None):
    """[(name, output shape (C, T, H, W))] of the model's layers and their blocks (names with at
    most one dot) that `forward_features` runs, in order; computed on the meta device, for one
    clip of the model's input size (or `size` = (T, H, W))."""
    spec = rgb_spec(model)
    row = spec.weights
    frames, height, width = size or (row.clip_frames, row.crop_size, row.crop_size)
    with torch.device("meta"):
        network = spec.builder(num_classes=row.num_classes)
    shapes = {}

    def record(name):
        def hook(module, inputs, output):
            if torch.is_tensor(output) and output.dim() == 5:
                shapes.setdefault(name, tuple(output.shape[1:]))
        return hook

    named = [(name, module) for name, module in network.named_modules()
             if name and name.count(".") <= 1]
    for name, module in named:
        module.register_forward_hook(record(name))
    with torch.no_grad():
        network.forward_features(torch.zeros(1, 3, frames, height, width, device="meta"))
    return [(name, shapes[name]) for name, _ in named if name in shapes]


def default_layer(layers):
    """`layer2` where the model has one (R(2+1)D, I3D ResNet), else the layer a third of the way
    into the network: early enough for textures, deep enough for more than edges."""
    names = [name for name, _ in layers]
    return "layer2" if "layer2" in names else names[len(names) // 3]


class _Reached(Exception):
    def __init__(self, output):
        super().__init__()
        self.output = output


class LayerObjective:
    """clip (N, 3, T, H, W) normalised -> mean square of `layer`'s activations over `channels`.

    The forward pass stops at the layer, so early layers cost little. `activations` gives the
    layer's raw output.
    """

    def __init__(self, network, layer, channels=None):
        self.network, self.channels = network, channels
        self.module = dict(network.named_modules())[layer]

    def activations(self, clip):
        def stop(module, inputs, output):
            raise _Reached(output)

        handle = self.module.register_forward_hook(stop)
        try:
            self.network.forward_features(clip)
        except _Reached as reached:
            return reached.output
        finally:
            handle.remove()
        raise Ig65mError("the chosen layer is not run by the model's forward_features")

    def __call__(self, clip):
        output = self.activations(clip)
        if self.channels is not None:
            output = output[:, list(self.channels)]
        return output.pow(2).mean()


def total_variation(clip):
    """Mean absolute difference between neighbouring values along T, H and W of (N, C, T, H, W)."""
    return sum(clip.diff(dim=axis).abs().mean() for axis in (2, 3, 4))


def octave_sizes(height, width, octaves):
    """[(h, w)] from coarsest to the full size, each 1.4x the previous, sides >= MIN_SIDE."""
    sizes = []
    for k in reversed(range(octaves)):
        scale = OCTAVE_SCALE ** k
        if min(height, width) / scale >= MIN_SIDE or k == 0:
            sizes.append((round(height / scale), round(width / scale)))
    return sizes


class Normaliser:
    """uint8 pixels <-> the model's normalised input, and the bounds that keep pixels in [0, 255]."""

    def __init__(self, weights, device):
        self.mean = torch.tensor(weights.mean, device=device).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(weights.std, device=device).view(1, 3, 1, 1, 1)
        self.low, self.high = (0 - self.mean) / self.std, (1 - self.mean) / self.std
        self.device = device

    def to_clip(self, frames):
        """uint8 (T, H, W, 3) -> (1, 3, T, H, W) float32 normalised."""
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return (pixels.permute(3, 0, 1, 2)[None].float() / 255 - self.mean) / self.std

    def to_pixels(self, clip):
        """(1, 3, T, H, W) normalised -> float32 (T, H, W, 3) pixels in [0, 255]."""
        pixels = (clip * self.std + self.mean).clamp(0, 1) * 255
        return pixels[0].permute(1, 2, 3, 0).cpu().numpy()


def ascend(objective, clip, reference, options, normaliser, generator, on_step=None):
    """`options.steps` steps of gradient ascent on `clip` -> the dreamt clip (detached).

    `on_step(gain, loss)` sees the objective relative to `reference` and the minimised loss.
    """
    clip = clip.detach().clone()
    jitter = max(1, round(min(clip.shape[3:]) / _JITTER))
    for _ in range(options.steps):
        dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
        shifted = clip.roll((dy, dx), dims=(3, 4)).requires_grad_(True)
        gain = objective(shifted) / reference
        loss = options.tv * total_variation(shifted) - gain
        (grad,) = torch.autograd.grad(loss, shifted)
        grad = grad.roll((-dy, -dx), dims=(3, 4))
        step = options.lr * grad / grad.abs().mean().clamp_min(1e-12)
        clip = torch.maximum(torch.minimum(clip - step, normaliser.high), normaliser.low)
        if on_step is not None:
            on_step(gain.item(), loss.item())
    return clip


def dream_clip(objective, frames, options, normaliser, generator, on_step=None):
    """uint8 frames (T, H, W, 3) -> float32 dreamt pixels (T, H, W, 3) in [0, 255]."""
    base = normaliser.to_clip(frames)
    frames_count = base.shape[2]
    with torch.no_grad():
        reference = objective(base).clamp_min(1e-12)
    clip = previous_base = None
    for height, width in octave_sizes(base.shape[3], base.shape[4], options.octaves):
        size = (frames_count, height, width)
        octave_base = F.interpolate(base, size=size, mode="trilinear")
        # carry the detail dreamt so far up to this octave
        detail = 0 if clip is None else F.interpolate(clip - previous_base, size=size,
                                                      mode="trilinear")
        clip = ascend(objective, octave_base + detail, reference, options, normaliser, generator,
                      on_step)
        previous_base = octave_base
    return normaliser.to_pixels(clip)


def windows(frames, size, step):
    """(first index, [frames]) windows of `size` consecutive frames every `step` frames; the last
    one is shorter when the video ends inside it, and is left out when it adds no new frame."""
    window, first = [], 0
    for frame in frames:
        window.append(frame)
        if len(window) == size:
            yield first, window
            window, first = window[step:], first + step
    if len(window) > size - step or (window and first == 0):
        yield first, window


def blend(dreamt_windows, overlap):
    """(originals, dreamt float pixels) per window, consecutive windows sharing `overlap` frames ->
    (original uint8, dreamt uint8) frame pairs, the shared frames cross-faded linearly."""
    pending = []  # the previous window's last frames, not yet emitted
    for originals, dreamt in dreamt_windows:
        pairs = list(zip(originals, dreamt))
        for j, (old, new) in enumerate(zip(pending, pairs)):
            weight = (j + 1) / (len(pending) + 1)
            yield _pixels(old[0], (1 - weight) * old[1] + weight * new[1])
        keep = max(len(pending), len(pairs) - overlap)
        for original, pixels in pairs[len(pending):keep]:
            yield _pixels(original, pixels)
        pending = pairs[keep:]
    for original, pixels in pending:
        yield _pixels(original, pixels)


def _pixels(original, dreamt):
    return original, np.clip(np.rint(dreamt), 0, 255).astype(np.uint8)


def span_frames(source, *, frame_size, start=0.0, duration=None):
    """Decoded frames from `start` for `duration` seconds, cropped to even sides (MP4 needs them)."""
    frames = read_frames(source, frame_size=frame_size)
    frames = itertools.dropwhile(lambda frame: frame.time < start - 1e-6, frames)
    if duration is not None:
        frames = itertools.takewhile(lambda frame: frame.time < start + duration - 1e-6, frames)
    for frame in frames:
        height, width = frame.image.shape[:2]
        yield frame.image[:height - height % 2, :width - width % 2]


def source_rate(source):
    """The source's average frame rate as a Fraction (30 when the stream does not say)."""
    container, stream = open_container(source)
    with container:
        rate = stream.average_rate or stream.guessed_rate
    return Fraction(rate) if rate else Fraction(30)


class Dreamer:
    """A model loaded once, dreaming videos: see the module docstring."""

    def __init__(self, model, weights=None, *, device=None, progress=True):
        self.spec = rgb_spec(model)
        self.device = resolve_device(device)
        network, self.weights_sha256 = get_model(model, weights, progress=progress)
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.normaliser = Normaliser(self.spec.weights, self.device)
        self.progress = progress

    def objective(self, options, frame_size):
        """The LayerObjective of `options`, checked against the model's layers at this size."""
        row = self.spec.weights
        layers = dict(list_layers(self.spec.name, (row.clip_frames, frame_size, frame_size)))
        layer = options.layer or default_layer(list(layers.items()))
        if layer not in layers:
            raise Ig65mError(f"{self.spec.name} has no layer {layer!r}; its layers: "
                             f"{', '.join(layers)} (ig65m dreamer --list-layers {self.spec.name})")
        if options.channels is not None and max(options.channels) >= layers[layer][0]:
            raise Ig65mError(f"layer {layer} has channels 0 to {layers[layer][0] - 1}, "
                             f"not {max(options.channels)}")
        return LayerObjective(self.network, layer, options.channels)

    def frames(self, source, options, *, frame_size=None, start=0.0, duration=None):
        """Dream `source` from `start` for `duration` seconds -> (original, dreamt) uint8 frames,
        streamed in constant memory."""
        options.check()
        # 0 is a bad size, not "the default"; NaN passes every comparison, so test finiteness
        frame_size = self.spec.weights.crop_size if frame_size is None else frame_size
        if (frame_size < MIN_SIDE or not (np.isfinite(start) and start >= 0)
                or (duration is not None and not (np.isfinite(duration) and duration > 0))):
            raise Ig65mError(f"--frame-size must be at least {MIN_SIDE}, --start at least 0 and "
                             f"--duration positive (finite numbers)")
        objective = self.objective(options, frame_size)
        size = self.spec.weights.clip_frames
        overlap = size // 4
        generator = torch.Generator().manual_seed(options.seed)
        frames = span_frames(source, frame_size=frame_size, start=start, duration=duration)
        with tqdm(desc="dreaming", unit="step", disable=not self.progress, file=sys.stderr,
                  leave=False) as bar:
            def on_step(gain, loss):
                bar.update()
                bar.set_postfix(objective=f"{gain:.3g}x", loss=f"{loss:.4g}", refresh=False)

            def dreamt():
                for _, window in windows(frames, size, size - overlap):
                    padded = np.stack(window + [window[-1]] * (size - len(window)))
                    pixels = dream_clip(objective, padded, options, self.normaliser, generator,
                                        on_step)
                    yield window, pixels[:len(window)]

            count = 0
            for pair in blend(dreamt(), overlap):
                count += 1
                yield pair
        if count == 0:
            raise Ig65mError(f"{source} has no frames from {start} s"
                             + (f" for {duration} s" if duration else ""))

    def dream(self, source, output, options, *, frame_size=None, start=0.0, duration=None):
        """Dream `source` into `output` (.gif, .mp4 or .png contact sheet), atomically."""
        suffix = Path(output).suffix.lower()
        if suffix not in OUTPUTS:
            raise Ig65mError(f"cannot write {output}: the dream is a {', '.join(OUTPUTS)} file")
        check_writable(output)
        check_source(source)
        pairs = self.frames(source, options, frame_size=frame_size, start=start,
                            duration=duration)
        if suffix == ".png":
            return write_sheet(output, pairs)
        codec = {"gif": dict(codec="gif", pix_fmt="pal8"),
                 "mp4": dict(codec="libx264", options={"crf": "18", "threads": "1"})}
        return write_video(output, (dreamt for _, dreamt in pairs), fps=source_rate(source),
                           **codec[suffix[1:]])


def evenly_spaced(items, count, spare=8):
    """`count` items evenly spaced over an iterable of unknown length (first and last included),
    holding at most `spare` * count of them: every k-th item is kept, k doubling when too many are
    kept; each pick is the kept item nearest to its ideal position."""
    kept, stride, index = [], 1, -1
    for index, item in enumerate(items):
        if index % stride == 0:
            kept.append((index, item))
            if len(kept) > spare * count:
                kept, stride = kept[::2], stride * 2
        last = (index, item)
    if index < 0:
        return []
    if kept[-1][0] != index:
        kept.append(last)
    positions = np.array([position for position, _ in kept])
    targets = np.linspace(0, index, min(count, index + 1))
    return [kept[np.abs(positions - target).argmin()][1] for target in targets]


def write_sheet(path, pairs, count=_SHEET_FRAMES):
    """`count` evenly spaced (original, dreamt) pairs side by side as a PNG: sources above, dreams
    below, on white, in 256 colours (a third of the bytes of full colour)."""
    from PIL import Image  # matplotlib's dependency

    chosen = evenly_spaced(pairs, count)
    height, width = chosen[0][0].shape[:2]
    sheet = np.full((2 * height + _GAP, len(chosen) * (width + _GAP) - _GAP, 3), 255, np.uint8)
    for k, (original, dreamt) in enumerate(chosen):
        left = k * (width + _GAP)
        sheet[:height, left:left + width] = original
        sheet[height + _GAP:, left:left + width] = dreamt
    with atomic_path(path) as tmp:
        picture = Image.fromarray(sheet).quantize(256, method=Image.Quantize.MEDIANCUT,
                                                  dither=Image.Dither.NONE)
        picture.save(tmp, format="PNG", optimize=True)
    return path
