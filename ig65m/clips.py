"""Clips: sliding windows of frames, and frame-rate resampling by timestamp.

Both work on iterators of `ig65m.video.Frame` and hold at most one window of frames.
"""

import itertools
from collections import deque
from typing import Iterator, NamedTuple

import numpy as np

from ig65m.video import Frame, read_frames

TAILS = ("pad", "drop")
_EPS = 1e-6


class Clip(NamedTuple):
    """`frames` uint8 (T, H, W, 3); `start` = time of the first frame, `end` = time of the last
    real frame plus one frame period (seconds)."""

    frames: np.ndarray
    start: float
    end: float


def resample_fps(frames, fps) -> Iterator[Frame]:
    """Frames at `fps` on the stream's own clock, without re-encoding.

    Sample k is the frame on screen at time t0 + k / fps (the latest frame at or before it), so
    lower rates drop frames and higher rates repeat them; times are the sample instants.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    period, origin, index, previous, shown = 1.0 / fps, None, 0, None, 0.0
    for frame in frames:
        if previous is None:
            origin = frame.time
        else:
            shown = frame.time - previous.time
        while previous is not None and origin + index * period < frame.time - _EPS:
            yield Frame(previous.image, origin + index * period)
            index += 1
        previous = frame
    # the last frame stays on screen for one more frame period
    while previous is not None and (index == 0 or origin + index * period < previous.time + shown - _EPS):
        yield Frame(previous.image, origin + index * period)
        index += 1


def source_frames(source, settings, *, duration=None, format=None, input_options=None,
                  hwaccel=None):
    """The frames a model sees of `source`: decoded at `settings.frame_size` (on `hwaccel`, e.g.
    "cuda", where PyAV can), cut at `duration` seconds, resampled to `settings.fps` when set (a
    resolved `ig65m.preprocess.Preprocess`)."""
    frames = read_frames(source, frame_size=settings.frame_size, format=format,
                         options=input_options, hwaccel=hwaccel)
    return timed_frames(frames, settings, duration=duration)


def timed_frames(frames, settings, *, duration=None):
    """`frames` cut at `duration` seconds and resampled to `settings.fps` when set: the one place
    both the decoded frames of a source and the Ray planner's frame numbers are timed."""
    if duration is not None:
        frames = itertools.takewhile(lambda frame: frame.time < duration, frames)
    return resample_fps(frames, settings.fps) if settings.fps else frames


def clip_windows(frames, *, clip_frames, step=None, tail="pad", frame_stride=1) -> Iterator[Clip]:
    """Windows of `clip_frames` frames every `step` frames (default: no overlap), taking every
    `frame_stride`-th frame (stride 2: a 32-frame clip covers 64 frames of the video; `step`
    counts taken frames, and a clip ends one taken-frame period after its last frame).

    The last partial window is padded by repeating its last frame (`tail="pad"`) or dropped
    (`"drop"`); with "pad" a video shorter than one clip gives exactly one clip.
    """
    step = step or clip_frames
    if clip_frames < 1 or step < 1 or frame_stride < 1 or tail not in TAILS:
        raise ValueError(f"bad window: clip_frames={clip_frames} step={step} tail={tail} "
                         f"frame_stride={frame_stride}")
    if frame_stride > 1:
        frames = itertools.islice(frames, 0, None, frame_stride)
    window, next_start, last_index, covered_until, period = deque(), 0, -1, -1, 0.0
    for last_index, frame in enumerate(frames):
        if window:
            period = frame.time - window[-1].time
        if last_index >= next_start:
            window.append(frame)
        if len(window) == clip_frames:
            yield _make_clip(window, clip_frames, period)
            covered_until, next_start = last_index, next_start + step
            for _ in range(min(step, len(window))):
                window.popleft()
    if tail == "pad" and window and last_index > covered_until:
        yield _make_clip(window, clip_frames, period)


def _make_clip(window, clip_frames, period):
    images = [frame.image for frame in window]
    images += [images[-1]] * (clip_frames - len(images))
    return Clip(np.stack(images), window[0].time, window[-1].time + period)


def expected_clips(frames, *, clip_frames, step=None, tail="pad", frame_stride=1):
    """How many clips `clip_windows` makes of `frames` frames (for progress totals)."""
    taken = -(-frames // frame_stride)
    step = step or clip_frames
    if taken < clip_frames:
        return 1 if tail == "pad" and taken > 0 else 0
    full = (taken - clip_frames) // step + 1
    covered = max((full - 1) * step + clip_frames, full * step)  # frames seen by the full clips
    return full + (1 if tail == "pad" and taken > covered else 0)
