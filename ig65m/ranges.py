"""A video split into parts that many workers decode at once, giving exactly the clips of one pass.

`plan_video` reads only the container's packets (no decoding): every frame's presentation timestamp
and time. It then runs the single-process clip definition (`ig65m.extract.clip_stream`: --duration,
--fps resampling, windows of --clip-frames every --step, --tail pad/drop, --max-clips) on frame
*numbers* instead of images, so each planned clip is the list of source frames it is made of, with
the same start and end times as a whole-video pass. `split` cuts the clips into parts of
`clips_per_part`; each part names the frame range it needs (parts overlap where clips share frames:
--step below --clip-frames, or --fps repeating frames). `decode_part` seeks to its first frame,
decodes just that range and builds its clips, preprocessed exactly as `Extractor.batches` does.
"""

from typing import NamedTuple

import numpy as np
import torch

from ig65m.errors import Ig65mError
from ig65m.extract import clip_stream
from ig65m.models import get_spec
from ig65m.transforms import transform_for
from ig65m.video import Frame, check_complete, open_container, read_frame_range


class VideoPlan(NamedTuple):
    """`pts[i]`: presentation timestamp of frame i; `clips[k]`: (frame numbers, start s, end s)."""

    pts: list
    clips: list


class Part(NamedTuple):
    """Clips `first_clip`.. of one video, made of frames `pts[0]..pts[-1]` (frame numbers in
    `clips` count from the part's first frame); `times` (n, 2) seconds."""

    first_clip: int
    pts: list
    clips: list
    times: np.ndarray


def frame_times(source, *, format=None, options=None):
    """Every frame's pts and time in seconds from the first frame (as `read_frames` gives them),
    read from the packets without decoding; Ig65mError for a video that cannot be planned."""
    container, stream = open_container(source, format=format, options=options)
    with container:
        pts = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.pts is None:
                raise Ig65mError(f"{source}: packets without timestamps cannot be split; "
                                 "extract it without --ray")
            pts.append(packet.pts)
        if not pts:
            raise Ig65mError(f"{source} has no decodable video frames")
        pts.sort()
        base = stream.time_base
        origin = float(pts[0] * base)  # PyAV's frame.time is float(pts * time_base)
        times = [float(p * base) - origin for p in pts]
        check_complete(source, container, stream, times[-1])
    return pts, times


def plan_video(source, settings, *, max_clips=None, duration=None, format=None, options=None):
    """The clips of `source` under `settings` (Extractor.settings) -> VideoPlan."""
    pts, times = frame_times(source, format=format, options=options)
    frames = (Frame(np.int64(number), time) for number, time in enumerate(times))
    clips = [(clip.frames.tolist(), clip.start, clip.end)
             for clip in clip_stream(frames, settings, max_clips=max_clips, duration=duration)]
    return VideoPlan(pts, clips)


def split(plan, clips_per_part):
    """The plan's clips in parts of `clips_per_part`, in order -> [Part]."""
    parts = []
    for first in range(0, len(plan.clips), clips_per_part):
        chunk = plan.clips[first:first + clips_per_part]
        low = min(min(numbers) for numbers, _, _ in chunk)
        high = max(max(numbers) for numbers, _, _ in chunk)
        parts.append(Part(first, plan.pts[low:high + 1],
                          [[n - low for n in numbers] for numbers, _, _ in chunk],
                          np.array([[start, end] for _, start, end in chunk], dtype=np.float64)))
    return parts


def clips_per_part(settings, batch_size, budget_bytes=64 << 20):
    """Clips per part: about `budget_bytes` of preprocessed float32 clips, a multiple of the batch
    size, so every part's batches are the batches of a whole-video pass."""
    clip_bytes = 3 * settings.clip_frames * settings.crop_size ** 2 * 4
    return max(1, budget_bytes // clip_bytes // batch_size) * batch_size


def decode_part(source, part, *, model, frame_size, crop_size, format=None, options=None):
    """Decode a part and preprocess its clips -> float32 (n, C, T, crop, crop), as the model takes."""
    images = [None] * len(part.pts)
    position = {p: i for i, p in enumerate(part.pts)}
    for pts, image in read_frame_range(source, part.pts[0], part.pts[-1], frame_size=frame_size,
                                       format=format, options=options):
        if pts in position:
            images[position[pts]] = image
    missing = [part.pts[i] for i, image in enumerate(images) if image is None]
    if missing:
        raise Ig65mError(f"cannot decode {source}: {len(missing)} frames from pts {missing[0]} "
                         "are missing")
    transform = transform_for(get_spec(model).weights, crop_size)
    clips = [transform(np.stack([images[n] for n in numbers])) for numbers in part.clips]
    return torch.stack(clips).numpy()
