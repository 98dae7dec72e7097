"""Extraction benchmark: end-to-end clips/s versus the model alone, and peak memory vs video length.

    python benchmarks/extract.py                      # the issue's settings (slow on 2 CPU cores)
    python benchmarks/extract.py --clips 24 --rss-minutes 1 10 --rss-crop 32
    python benchmarks/extract.py --clips 0 --rss-minutes 0.5 2 --rss-crop 32   # memory only

1. Throughput: the same 480p video's clips are decoded and preprocessed once into memory, then the
   model alone runs on those batches; the full pipeline (decode + window + preprocess in the
   background thread + model) runs on the same video. One warm-up call of each, then `--rounds`
   alternating rounds (common.alternate); the figure is the median of the per-round ratios
   end-to-end / model-only, with their min-max and the load average.
2. Memory: `extract` runs in a fresh process on each `--rss-minutes` 480p video and writes its own
   peak RSS (VmHWM) at exit; the script prints each, the growth from the shortest to the longest,
   and the size of the longer video's extra features (what a growth would have to exceed to show).

Random weights (pretrained ones cannot be downloaded here): speed and memory do not depend on them.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import alternate, load_average, report, summary, timed

from ig65m.extract import Extractor, _batched
from ig65m.models import get_spec
from ig65m.sample import write_sample_video
from ig65m.transforms import transform_for

MODEL = "r2plus1d_34_8_ig65m"


def make_video(folder, minutes, width=640, height=480):
    path = Path(folder) / f"sample_{minutes}min_{height}p.mp4"
    if not path.exists():
        write_sample_video(path, seconds=60 * minutes, width=width, height=height, fps=30,
                           options={"preset": "ultrafast"})
    return path


def throughput(video, clips, batch_size, rounds):
    """End-to-end clips/s against model-only clips/s on the same clips, in alternating rounds."""
    extractor = Extractor(MODEL, "random", backend="torch", progress=False)
    transform = transform_for(extractor.settings())
    prepared = list(_batched(extractor._clips(video, extractor.settings(), clips, None, None, None),
                             transform, batch_size))

    def model_only():
        for tensor, _ in prepared:
            extractor.run(tensor)
        return clips

    def end_to_end():
        return sum(len(batch.features) for batch in
                   extractor.batches(video, batch_size=batch_size, max_clips=clips))

    rounds = alternate({"model only": timed(model_only), "end to end": timed(end_to_end)},
                       rounds=rounds, warmup=True)
    print(report(rounds, baseline="model only", unit="clips/s"), file=sys.stderr)
    return dict(summary(rounds, "end to end", "model only"), clips=clips, batch_size=batch_size,
                model_only_clips_per_s=summary(rounds, "model only", "model only")["rate"])


# The child writes its own peak RSS (VmHWM) at exit. ru_maxrss from wait4 is no good here: a child
# spawned with fork/vfork inherits the parent's high-water mark, so it reported this benchmark's own
# 1.35 GB (model and prepared batches) for every video, whatever `extract` itself used.
CHILD = """import atexit, runpy, sys
from pathlib import Path
def peak(path=Path(sys.argv[1])):
    path.write_text(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
atexit.register(peak)
sys.argv = ["ig65m"] + sys.argv[2:]
runpy.run_module("ig65m", run_name="__main__")
"""


def peak_rss(video, crop, frame_size):
    """Run `extract` on `video` in a fresh process -> (its peak RSS in MiB, seconds, clips)."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-c", CHILD, f"{folder}/peak", "extract", str(video),
                   f"{folder}/f.npy", "--model", MODEL, "--weights", "random",
                   "--crop-size", str(crop), "--frame-size", str(frame_size)]
        start = time.perf_counter()
        with open(f"{folder}/out.json", "w") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"extract failed: {' '.join(command)}")
        clips = json.loads(Path(f"{folder}/out.json").read_text())["clips"]
        peak_kib = int(Path(f"{folder}/peak").read_text())
        return peak_kib / 1024, time.perf_counter() - start, clips


def memory(folder, minutes, crop):
    """Peak RSS of `extract` on each video length, and the growth from the shortest to the longest."""
    rows = []
    for length in minutes:
        video = make_video(folder, length)
        rss, seconds, clips = peak_rss(video, crop, max(128, crop))
        rows.append({"minutes": length, "video": video.name, "clips": clips, "crop": crop,
                     "peak_rss_mib": round(rss, 1), "seconds": round(seconds, 1),
                     "load": round(load_average(), 2)})
        print(json.dumps({"rss": rows[-1]}), flush=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = last["peak_rss_mib"] - first["peak_rss_mib"]
        features_mib = (last["clips"] - first["clips"]) * get_spec(MODEL).feature_dim * 4 / 2**20
        print(json.dumps({"rss_growth": {
            "mib": round(growth, 1), "percent": round(100 * growth / first["peak_rss_mib"], 2),
            "clips": [first["clips"], last["clips"]],
            "extra_features_mib": round(features_mib, 2)}}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=Path(tempfile.gettempdir()) / "ig65m-bench")
    parser.add_argument("--clips", type=int, default=32, help="throughput clips (0: skip)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rss-minutes", type=float, nargs="*", default=[1, 10])
    parser.add_argument("--rss-crop", type=int, default=112)
    args = parser.parse_args()
    Path(args.folder).mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    if args.clips:
        short = make_video(args.folder, 1)
        print(json.dumps({"throughput": throughput(short, args.clips, args.batch_size,
                                                   args.rounds)}), flush=True)
    memory(args.folder, args.rss_minutes, args.rss_crop)


if __name__ == "__main__":
    main()
