"""Small test videos written with PyAV (lossless where frames are compared exactly)."""

from fractions import Fraction

import av
import numpy as np

from ig65m.sample import pattern_frame, write_video


def lossless_video(path, frames=10, *, fps=30, width=64, height=48):
    """`frames` pattern frames, losslessly (libx264rgb, crf 0), at `fps` (a Fraction is fine)."""
    images = [pattern_frame(i, width, height) for i in range(frames)]
    write_video(path, images, fps=fps, codec="libx264rgb", options={"crf": "0"})
    return images


def empty_video(path):
    """A container with a video track in its header and no frames (write a .mkv)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


def audio_only(path, seconds=1.0, rate=16000):
    """A file with one audio stream (a sine) and no video."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = int(seconds * rate)
        wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = wave[None, start:start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


ODD_RATE = Fraction(981, 50)  # 19.62 fps, as the shared ActivityNet sample
