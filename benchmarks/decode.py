"""Decode benchmark: frames/s of PyAV decoding plus the resize `extract` does, per decoder thread
count, as a ratio to one thread in the same rounds.

    python benchmarks/decode.py                          # 480p and 1080p, threads 1, 2 and auto
    python benchmarks/decode.py --threads 1 2 4 0 --rounds 7 --video my.mp4

Input: the shared real clip (ActivityNet, 480x360, 14 s, 30 fps) scaled to 854x480 and to
1920x1080 and encoded with H.264 (libx264's defaults, crf 23) into a temporary folder; or the
sample pattern where ../shared is absent; or --video. Each file's bits per pixel are printed:
an upscaled clip is smoother than one filmed at that size, so it decodes a little faster.
What is timed is `ig65m.video.read_frames` over the whole file at --frame-size (the short side
extraction decodes to: 128 for R(2+1)D, 256 for I3D), RGB conversion and resize included.

Rounds alternate (benchmarks/common.py); ratios are medians of per-round ratios, with the
min-max spread and the load average. Thread count 0 ("auto") is FFmpeg's own choice.
"""

import argparse
import os
import tempfile

from common import alternate, load_average, real_video, report, timed

from ig65m.video import DECODE_THREADS, open_container, read_frames

SIZES = {"480p": (854, 480), "1080p": (1920, 1080)}


def label(threads):
    return "auto (0)" if threads == 0 else f"{threads} thread{'s' * (threads > 1)}"


def bits_per_pixel(video):
    container, stream = open_container(video)
    with container:
        rate = float(stream.average_rate or 30)
        seconds = float(stream.duration * stream.time_base)
        bits = os.path.getsize(video) * 8
        return bits / (seconds * rate * stream.width * stream.height), stream.width, stream.height


def decode(video, threads, frame_size):
    return timed(lambda: sum(1 for _ in read_frames(video, frame_size=frame_size,
                                                    threads=threads)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 0],
                        help="decoder thread counts; 0 is FFmpeg's choice [1 2 0]")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--frame-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--video", nargs="+", default=None, help="[the shared clip at --sizes]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        videos = args.video or [real_video(folder, *SIZES[size]) for size in args.sizes]
        print(f"{os.cpu_count()} cores; load {load_average():.1f} at start; the default is "
              f"{label(DECODE_THREADS)} (ig65m.video.DECODE_THREADS)")
        for video in videos:
            bpp, width, height = bits_per_pixel(video)
            print(f"\n== {width}x{height}, {bpp:.3f} bits/pixel, decoded to a short side of "
                  f"{args.frame_size} (frames/s) ==")
            runners = {label(t): decode(video, t, args.frame_size) for t in args.threads}
            rounds = alternate(runners, args.rounds, warmup=True)
            print(report(rounds, baseline=label(args.threads[0]), unit="frames/s"))


if __name__ == "__main__":
    main()
