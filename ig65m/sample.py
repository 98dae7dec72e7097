"""Synthetic sample videos: a moving, colour-changing pattern encoded with PyAV.

Used by the README's first command, the tests and the benchmarks, so that nothing needs a download.
`python -m ig65m.sample OUT.mp4 [--seconds S] [--width W] [--height H] [--fps F] [--scenes]`

`--scenes` writes three visually distinct scenes of equal length instead, with hard cuts between
them (blue waves rolling by, a scrolling black-and-white checkerboard, an orange disc bouncing on
a dusk gradient), for pictures whose scene boundaries are known.
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


def _waves(index, rows, cols, height, width):
    phase = 2 * np.pi * (rows / max(height, 1) * 3 + np.sin(cols / max(width, 1) * 6) * 0.3
                         - index / 12)
    wave = 0.5 + 0.5 * np.sin(phase)
    return np.stack([20 + 40 * wave, 80 + 100 * wave, 150 + 105 * wave], axis=-1)


def _checkers(index, rows, cols, height, width):
    side = max(min(height, width) // 6, 2)
    board = ((rows + index * 2) // side + (cols + index) // side) % 2
    return np.repeat(board[..., None] * 235.0 + 10, 3, axis=-1)


def _disc(index, rows, cols, height, width):
    sky = np.stack([60 + 120 * rows / max(height, 1), 20 + 60 * rows / max(height, 1),
                    90 - 40 * rows / max(height, 1)], axis=-1) + 0 * cols[..., None]
    radius = max(min(height, width) // 6, 2)
    centre_x = radius + (index * 5) % max(2 * (width - 2 * radius), 1)
    centre_x = centre_x if centre_x <= width - radius else 2 * (width - radius) - centre_x
    centre_y = height - radius - abs(np.sin(index / 6)) * (height - 2 * radius)
    inside = (rows - centre_y) ** 2 + (cols - centre_x) ** 2 <= radius ** 2
    sky[inside] = (250, 150, 30)
    return sky


SCENES = (_waves, _checkers, _disc)


def scene_frame(index, width, height, scene):
    """Frame `index` of scene 0, 1 or 2 (`SCENES`): RGB uint8 (height, width, 3)."""
    rows = np.arange(height, dtype=np.float64)[:, None] + np.zeros((1, width))
    cols = np.arange(width, dtype=np.float64)[None, :] + np.zeros((height, 1))
    return np.clip(SCENES[scene](index, rows, cols, height, width), 0, 255).astype(np.uint8)


def write_video(path, frames, *, fps=30, codec="libx264", options=None, pix_fmt=None,
                rotation=0):
    """Encode an iterable of RGB uint8 frames (H, W, 3) into `path`, atomically.

    `fps` may be a Fraction (e.g. Fraction(981, 50)); use codec "libx264rgb" with
    options {"crf": "0"} for lossless frames that tests can compare exactly, codec "gif" with
    pix_fmt "pal8" for an animated GIF. `rotation`: degrees counter-clockwise a player turns the
    frames by (the display matrix phones write).
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
                container.mux(stream.encode(_video_frame(frame, stream.pix_fmt)))
            container.mux(stream.encode(None))
    return path


def _video_frame(frame, pix_fmt):
    """RGB uint8 (H, W, 3) -> av.VideoFrame; for "pal8" (GIF) quantised to the frame's own 256
    colours by Pillow (median cut, no dithering: the same frame always gives the same bytes)."""
    frame = np.ascontiguousarray(frame)
    if pix_fmt != "pal8":
        return av.VideoFrame.from_ndarray(frame, format="rgb24")
    from PIL import Image  # matplotlib's dependency; needed for GIF only

    image = Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT,
                                            dither=Image.Dither.NONE)
    colours = np.asarray(image.getpalette()[:768], np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), np.uint8)  # ARGB
    palette[:, 0] = 255
    palette[:len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((np.asarray(image), palette), format="pal8")


def _chain(first, rest):
    yield first
    yield from rest


def _format_of(path):
    suffix = str(path).rsplit(".", 1)[-1].lower()
    return {"mkv": "matroska", "mp4": "mp4", "avi": "avi", "mov": "mov", "webm": "webm",
            "gif": "gif"}.get(suffix)


def write_sample_video(path, *, seconds=10.0, width=320, height=240, fps=30, scenes=False,
                       **kwargs):
    """Write `seconds` of the moving pattern (or of the three scenes) to `path` (H.264 default)."""
    count = max(int(round(seconds * float(fps))), 1)
    if scenes:
        frames = (scene_frame(i, width, height, i * len(SCENES) // count) for i in range(count))
    else:
        frames = (pattern_frame(i, width, height) for i in range(count))
    return write_video(path, frames, fps=fps, **kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--scenes", action="store_true",
                        help="three distinct scenes of equal length, with hard cuts")
    args = parser.parse_args(argv)
    write_sample_video(args.output, seconds=args.seconds, width=args.width, height=args.height,
                       fps=Fraction(args.fps).limit_denominator(1000), scenes=args.scenes)
    print(args.output)


if __name__ == "__main__":
    main()
