"""dreamer memory: peak RSS of a short and a long span, each in a fresh process.

    python benchmarks/dreamer.py --seconds 10 120

Makes the three-scene sample (10 fps, 64x48) of each length, dreams all of it into an MP4 with
cheap settings (R(2+1)D-18 random weights, the stem layer, 1 step, 1 octave, 48-pixel frames:
the figure is memory, not looks) and prints one JSON line per length: frames, seconds, and the
process's peak RSS (ru_maxrss). Memory that does not grow with the span is the claim checked.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import load_average

from ig65m.sample import write_sample_video

SETTINGS = ["--model", "r2plus1d_18_16_kinetics", "--weights", "random:0", "--layer", "stem",
            "--steps", "1", "--octaves", "1", "--frame-size", "48"]


def peak_rss(video, folder):
    """Dream `video` in a fresh process -> (peak RSS in MiB, seconds)."""
    command = [sys.executable, "-m", "ig65m", "dreamer", str(video), f"{folder}/dream.mp4",
               *SETTINGS]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"dreamer failed: {' '.join(command)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 120])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for seconds in args.seconds:
            video = Path(folder) / f"scenes-{seconds:g}s.mp4"
            write_sample_video(video, seconds=seconds, width=64, height=48, fps=10, scenes=True)
            rss, elapsed = peak_rss(video, folder)
            print(json.dumps({"seconds": seconds, "frames": round(seconds * 10),
                              "peak_rss_mib": round(rss, 1), "wall_s": round(elapsed, 1),
                              "load_average": round(load_average(), 1)}), flush=True)


if __name__ == "__main__":
    main()
