"""Synthetic sample videos: a moving, colour-changing pattern encoded with PyAV.

Used by the README's first command, the tests and the benchmarks, so that nothing needs a download.
`python -m ig65m.sample OUT.mp4 [--seconds S] [--width W] [--height H] [--fps F]`
"""

import argparse
from fractions import Fraction

import av
import numpy as np

from ig65m.fileio import atomic_path


def pattern_frame(index, width, height):
    """Frame `index` of the pattern: RGB uint8 (height, width, 3); a square sweeping right on a
    background whose hue drifts, so consecutive frames differ and every frame is recognisable."""
    rows = np.arange(height, dtype=np.int32)[:, None]
    cols = np.arange(width, dtype=np.int32)[None, :]
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0] = (cols * 255 // max(width - 1, 1) + index * 3) % 256
    frame[..., 1] = (rows * 255 // max(height - 1, 1)) % 256
    frame[..., 2] = (index * 7) % 256
    side = max(height // 4, 2)
    left = (index * 4) % max(width - side, 1)
    top = (height - side) // 2
    frame[top:top + side, left:left + side] = 255
    return frame


def write_video(path, frames, *, fps=30, codec="libx264", options=None, pix_fmt=None,
                rotation=0):
    """Encode an iterable of RGB uint8 frames (H, W, 3) into `path`, atomically.

    `fps` may be a Fraction (e.g. Fraction(981, 50)); use codec "libx264rgb" with
    options {"crf": "0"} for lossless frames that tests can compare exactly. `rotation`: degrees
    counter-clockwise a player turns the frames by (the display matrix phones write).
    """
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format=_format_of(path)) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(100000))
            stream.width, stream.height = width, height
            stream.pix_fmt = pix_fmt or ("rgb24" if codec == "libx264rgb" else "yuv420p")
            stream.options = dict(options or {})
            if rotation:
                stream.set_display_rotation(rotation)
            for frame in _chain(first, frames):
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                container.mux(stream.encode(picture))
            container.mux(stream.encode(None))
    return path


def _chain(first, rest):
    yield first
    yield from rest


def _format_of(path):
    suffix = str(path).rsplit(".", 1)[-1].lower()
    return {"mkv": "matroska", "mp4": "mp4", "avi": "avi", "mov": "mov", "webm": "webm"}.get(suffix)


def write_sample_video(path, *, seconds=10.0, width=320, height=240, fps=30, **kwargs):
    """Write `seconds` of the moving pattern to `path` (H.264 by default)."""
    count = max(int(round(seconds * float(fps))), 1)
    frames = (pattern_frame(i, width, height) for i in range(count))
    return write_video(path, frames, fps=fps, **kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=30)
    args = parser.parse_args(argv)
    write_sample_video(args.output, seconds=args.seconds, width=args.width, height=args.height,
                       fps=Fraction(args.fps).limit_denominator(1000))
    print(args.output)


if __name__ == "__main__":
    main()
