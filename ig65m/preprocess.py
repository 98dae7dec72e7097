"""The one resolver of how a model's clips are cut: extract, classify, evaluate and finetune all
call `resolve(weights, **options)` and read the `Preprocess` it returns.

A weights row carries the model's own settings (`ig65m.weights.Weights`); each option, when not
None, overrides one of them. Torch-free.
"""

from dataclasses import asdict, dataclass

from ig65m.errors import Ig65mError

TAILS = ("pad", "drop")


@dataclass(frozen=True)
class Preprocess:
    """How clips are cut and normalised.

    `clip_frames` frames per clip, taken every `frame_stride`-th frame (a clip spans
    `(clip_frames - 1) * frame_stride + 1` frames); windows start every `step` sampled frames;
    frames decoded with short side `frame_size` and centre-cropped to `crop_size`; values in [0, 1]
    normalised by `mean`/`std`; `modality` "rgb" or "flow" (bounded by `flow_bound`); frames
    resampled to `fps` first when set; the last partial window padded or dropped (`tail`).
    """

    clip_frames: int
    frame_stride: int
    step: int
    frame_size: int
    crop_size: int
    mean: tuple
    std: tuple
    modality: str
    flow_bound: float | None
    fps: float | None
    tail: str

    @property
    def span(self):
        """Decoded frames one clip covers."""
        return (self.clip_frames - 1) * self.frame_stride + 1

    def clip_settings(self):
        """The fields a sidecar records."""
        return {key: value for key, value in asdict(self).items()
                if key in ("clip_frames", "frame_stride", "step", "fps", "frame_size", "crop_size",
                           "tail")}


def resolve(weights, *, clip_frames=None, frame_stride=None, step=None, frame_size=None,
            crop_size=None, fps=None, tail=None):
    """The model's settings from its weights row, each overridden by an option that is not None.

    The frame size defaults to the row's, but at least the crop; Ig65mError for a non-positive
    option, a frame size smaller than the crop or an unknown tail.
    """
    for name, value in (("--clip-frames", clip_frames), ("--frame-stride", frame_stride),
                        ("--step", step), ("--fps", fps), ("--frame-size", frame_size),
                        ("--crop-size", crop_size)):
        if value is not None and not value > 0:  # 0 is an error, never "the default"; so is NaN
            raise Ig65mError(f"{name} must be positive, got {value}")
    tail = tail or "pad"
    if tail not in TAILS:
        raise Ig65mError(f"--tail must be one of {', '.join(TAILS)}, not {tail!r}")
    crop_size = crop_size or weights.crop_size
    frame_size = frame_size or max(weights.frame_size, crop_size)
    if frame_size < crop_size:
        raise Ig65mError(f"--frame-size {frame_size} is smaller than the model's {crop_size} crop "
                         f"(a crop larger than the frames cannot be cut)")
    clip_frames = clip_frames or weights.clip_frames
    return Preprocess(clip_frames=clip_frames, frame_stride=frame_stride or weights.frame_stride,
                      step=step or clip_frames, frame_size=frame_size, crop_size=crop_size,
                      mean=tuple(weights.mean), std=tuple(weights.std), modality=weights.modality,
                      flow_bound=weights.flow_bound, fps=fps if fps is not None else weights.fps,
                      tail=tail)
