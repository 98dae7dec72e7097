"""Where clips start and where crops sit: random in training, deterministic in evaluation.

Clips are `clip_frames` frames, every `frame_stride`-th (starts are placed with the clip's span). A video shorter than a clip repeats its last frame
(`clip_indices`). Crops are squares of `crop_size` inside frames whose short side is `frame_size`.

- training: a uniformly random start, a uniformly random crop, a horizontal flip with p = 0.5;
- `--mode clip`: the centred clip and the centre crop;
- `--mode video`: `num_clips` starts spaced uniformly from the first to the last possible start,
  times three crops along the long side of the frame (start, centre, end; the width for square
  frames), centred on the short side: seed 001's 10 x 3 protocol, made deterministic.
"""

import numpy as np


def clip_indices(num_frames, clip_frames, start, frame_stride=1):
    """Frame indices of the clip starting at `start`, every `frame_stride`-th frame; past the end,
    the last frame repeats. Starts are chosen with `span` frames per clip."""
    return [min(start + offset * frame_stride, num_frames - 1) for offset in range(clip_frames)]


def span(clip_frames, frame_stride=1):
    """Frames of the video one clip covers."""
    return (clip_frames - 1) * frame_stride + 1


def last_start(num_frames, clip_frames):
    return max(num_frames - clip_frames, 0)


def random_start(num_frames, clip_frames, rng):
    """A uniformly random start in [0, last_start]."""
    return int(rng.integers(0, last_start(num_frames, clip_frames) + 1))


def centre_start(num_frames, clip_frames):
    """The start of the clip centred in the video (rounded down)."""
    return last_start(num_frames, clip_frames) // 2


def uniform_starts(num_frames, clip_frames, num_clips):
    """`num_clips` starts spaced uniformly over [0, last_start], rounded to the nearest frame.

    The first clip starts at frame 0 and the last one ends at the last frame; a video shorter
    than `clip_frames * num_clips` frames gets overlapping (or repeated) clips.
    """
    if num_clips == 1:
        return [centre_start(num_frames, clip_frames)]
    positions = np.linspace(0, last_start(num_frames, clip_frames), num_clips)
    return [int(p) for p in np.floor(positions + 0.5)]


def random_crop(height, width, crop_size, rng):
    """(top, left) of a uniformly random `crop_size` square inside a height x width frame."""
    return (int(rng.integers(0, height - crop_size + 1)),
            int(rng.integers(0, width - crop_size + 1)))


def centre_crop(height, width, crop_size):
    """(top, left) of the centred square (rounded down, as `ClipTransform` crops)."""
    return (height - crop_size) // 2, (width - crop_size) // 2


def three_crops(height, width, crop_size):
    """[(top, left)] x 3: start, centre and end of the long side (the width when square)."""
    top, left = centre_crop(height, width, crop_size)
    if height > width:
        return [(0, left), (top, left), (height - crop_size, left)]
    return [(top, 0), (top, left), (top, width - crop_size)]
