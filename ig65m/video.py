"""Video sources decoded with PyAV: files, cameras and any ffmpeg input format.

`read_frames` yields RGB uint8 frames scaled at decode time so the short side is `frame_size`,
turned upright as their display matrix says, each with its presentation time in seconds. Nothing
holds more than one frame: a 10-hour video or a live camera runs in the memory of a 10-second clip.
"""

from pathlib import Path
from typing import Iterator, NamedTuple

import av
import numpy as np

from ig65m.errors import Ig65mError

# ffmpeg input formats that capture live: they never end by themselves
# File suffixes taken as videos when a folder is searched (extract --output-dir, datasets).
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg",
                            ".flv", ".wmv", ".ogv", ".3gp", ".ts"})
LIVE_FORMATS = frozenset({"v4l2", "video4linux2", "lavfi", "avfoundation", "dshow", "x11grab",
                          "gdigrab", "kmsgrab", "decklink"})
# A file whose decoded frames cover less than this part of its stated duration is truncated.
_COMPLETE_FRACTION = 0.9
# FFmpeg decoder threads (frame and slice threading); 0 lets FFmpeg choose: one per core plus one.
# Measured by benchmarks/decode.py on 2 cores (README, "Speed"): FFmpeg's choice decoded 480p 1.12x
# and 1080p 1.60x faster than one thread, and beat two threads at both sizes.
DECODE_THREADS = 0


class Frame(NamedTuple):
    """A decoded frame: `image` RGB uint8 (H, W, 3), `time` seconds from the first frame."""

    image: np.ndarray
    time: float


def is_live(source, format=None):
    """True for cameras and other capture inputs, which run until stopped."""
    return (format or _default_format(source)) in LIVE_FORMATS


def _default_format(source):
    return "v4l2" if str(source).startswith("/dev/video") else None


def open_container(source, *, format=None, options=None, hwaccel=None):
    """Open `source` with PyAV -> (container, its first video stream); Ig65mError if impossible.

    `hwaccel`: a hardware decoder device type (e.g. "cuda") to try first; the CPU decodes where
    the device or the codec's hardware path is missing."""
    format = format or _default_format(source)
    if format is None:
        path = Path(source)
        if not path.exists():
            raise Ig65mError(f"video not found: {source}")
        if path.is_dir():
            raise Ig65mError(f"{source} is a folder, not a video")
    try:
        container = _open_hw(source, format, options, hwaccel) or \
            av.open(str(source), format=format, options=dict(options or {}))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise Ig65mError(f"cannot open {source}: {_describe(err)}") from None
    if not container.streams.video:
        container.close()
        raise Ig65mError(f"{source} has no video stream")
    return container, container.streams.video[0]


def _open_hw(source, format, options, device_type):
    if not device_type:
        return None
    from av.codec.hwaccel import HWAccel

    try:
        return av.open(str(source), format=format, options=dict(options or {}),
                       hwaccel=HWAccel(device_type=device_type, allow_software_fallback=True))
    except (av.FFmpegError, OSError, ValueError):
        return None  # no such device here: the CPU decodes


def check_source(source, *, format=None, options=None):
    """Raise Ig65mError now if `source` cannot be opened as a video (cameras are left alone)."""
    if not is_live(source, format):
        container, _ = open_container(source, format=format, options=options)
        container.close()


def _describe(err):
    return getattr(err, "strerror", None) or str(err)


def scaled_size(width, height, frame_size):
    """(width, height) with the short side `frame_size` and the aspect ratio kept."""
    if not frame_size:
        return width, height
    scale = frame_size / min(width, height)
    return max(int(round(width * scale)), 1), max(int(round(height * scale)), 1)


def decode_threads(stream, threads=None):
    """Set the decoder threads of `stream` before its first frame: `threads` (None:
    DECODE_THREADS; 0: FFmpeg's choice), frame and slice threading both allowed."""
    stream.thread_type = "AUTO"
    stream.thread_count = DECODE_THREADS if threads is None else threads


def read_frames(source, *, frame_size=128, format=None, options=None,
                hwaccel=None, threads=None) -> Iterator[Frame]:
    """Decode `source` -> Frames, short side `frame_size` (None: native size), times in seconds.

    Times come from presentation timestamps, relative to the first frame; never index / fps.
    `threads`: decoder threads (see `decode_threads`). Raises Ig65mError for a missing, corrupt,
    truncated or frameless source.
    """
    container, stream = open_container(source, format=format, options=options, hwaccel=hwaccel)
    decode_threads(stream, threads)
    with container:
        count, origin, last = 0, None, 0.0
        try:
            for frame in container.decode(stream):
                time = frame.time if frame.time is not None else last + _frame_period(stream)
                origin = time if origin is None else origin
                count, last = count + 1, time
                yield Frame(_image(frame, frame_size), time - origin)
        except (av.FFmpegError, OSError) as err:
            raise Ig65mError(f"cannot decode {source} after {count} frames: {_describe(err)}") \
                from None
        if count == 0:
            raise Ig65mError(f"{source} has no decodable video frames")
        if not is_live(source, format):
            check_complete(source, container, stream, last - (origin or 0.0))


def _image(frame, frame_size):
    """A decoded frame as RGB uint8 (H, W, 3), short side `frame_size` (None: native size), turned
    upright as its display matrix says."""
    size = scaled_size(frame.width, frame.height, frame_size)
    return upright(frame.reformat(width=size[0], height=size[1], format="rgb24",
                                  interpolation="AREA").to_ndarray(), frame)


def read_frame_range(source, first_pts, last_pts, *, frame_size=128, format=None, options=None):
    """Decode only frames with presentation timestamps first_pts..last_pts (inclusive), seeking to
    the keyframe before first_pts -> (pts, RGB uint8 image) in display order, scaled as in
    `read_frames`, so a long video can be decoded in parts by many workers."""
    container, stream = open_container(source, format=format, options=options)
    decode_threads(stream)
    with container:
        try:
            container.seek(first_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts < first_pts:
                    continue
                if frame.pts > last_pts:
                    return
                yield frame.pts, _image(frame, frame_size)
        except (av.FFmpegError, OSError) as err:
            raise Ig65mError(f"cannot decode {source} from pts {first_pts}: {_describe(err)}") \
                from None


def upright(image, frame):
    """`image` turned as the frame's display matrix says (phones store portrait video as landscape
    frames plus a rotation): the model sees what a player shows. Quarter turns; flips ignored."""
    turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as av reports it
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def _frame_period(stream):
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else 0.0


def _stated_duration(container, stream):
    """Seconds the file says its video lasts (stream, else container), or None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def probe(source, *, format=None, options=None):
    """(stated duration in seconds, frame rate) of a file without decoding it; (None, None) for a
    live source or where the file does not say."""
    if is_live(source, format):
        return None, None
    container, stream = open_container(source, format=format, options=options)
    with container:
        rate = stream.average_rate or stream.guessed_rate
        return _stated_duration(container, stream), float(rate) if rate else None


def check_complete(source, container, stream, last_time):
    """Raise if the frames stop well before the duration the file states (a cut-off download)."""
    stated = _stated_duration(container, stream)
    if stated is None:
        return
    covered = last_time + _frame_period(stream)
    if stated > 1.0 and covered < _COMPLETE_FRACTION * stated:
        raise Ig65mError(f"{source} looks truncated: its frames end at {covered:.2f} s of the "
                         f"{stated:.2f} s it states")
