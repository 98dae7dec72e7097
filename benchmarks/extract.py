"""Extraction benchmark: end-to-end clips/s versus the model alone, and peak memory vs video length.

    python benchmarks/extract.py                      # the issue's settings (slow on 2 CPU cores)
    python benchmarks/extract.py --clips 24 --rss-minutes 1 10 --rss-crop 32

1. Throughput: the same video's clips are decoded and preprocessed once into memory, then the
   model alone runs on those batches; the full pipeline (decode + window + preprocess in the
   background thread + model) runs on the same video. Rounds alternate so both see the same
   machine load; the figure is end-to-end clips/s over model-only clips/s.
2. Memory: `extract` runs in a fresh process on a 1-minute and a 10-minute 480p video and
   reports each process's peak RSS (ru_maxrss).

Random weights (pretrained ones cannot be downloaded here): speed and memory do not depend on them.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ig65m.extract import Extractor, _batched
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
    extractor = Extractor(MODEL, "random", progress=False)
    options = dict(batch_size=batch_size, max_clips=clips)
    settings = extractor.settings()
    transform = transform_for(extractor.spec.weights)
    prepared = list(_batched(extractor._clips(video, settings, clips, None, None, None),
                             transform, batch_size))
    extractor._run(prepared[0][0])  # warm-up
    def model_only():
        for tensor, _ in prepared:
            extractor._run(tensor)
        return clips

    def end_to_end():
        return sum(len(batch.features) for batch in extractor.batches(video, **options))

    times = {model_only: [], end_to_end: []}
    for round_index in range(rounds):  # alternate which goes first: the load drifts
        for run in (model_only, end_to_end)[::1 if round_index % 2 == 0 else -1]:
            start = time.perf_counter()
            assert run() == clips
            times[run].append(time.perf_counter() - start)
    model_times, e2e_times = times[model_only], times[end_to_end]
    model_rate, e2e_rate = clips / min(model_times), clips / min(e2e_times)
    return {"clips": clips, "batch_size": batch_size, "rounds": rounds,
            "model_only_clips_per_s": round(model_rate, 3),
            "end_to_end_clips_per_s": round(e2e_rate, 3),
            "ratio": round(e2e_rate / model_rate, 3)}


def peak_rss(video, crop, frame_size):
    """Run `extract` on `video` in a fresh process -> (peak RSS in MiB, seconds, clips)."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "ig65m", "extract", str(video), f"{folder}/f.npy",
                   "--model", MODEL, "--weights", "random", "--crop-size", str(crop),
                   "--frame-size", str(frame_size)]
        start = time.perf_counter()
        with open(f"{folder}/out.json", "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"extract failed: {' '.join(command)}")
        clips = json.loads(Path(f"{folder}/out.json").read_text())["clips"]
        return usage.ru_maxrss / 1024, time.perf_counter() - start, clips


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=Path(tempfile.gettempdir()) / "ig65m-bench")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-minutes", type=float, nargs="*", default=[1, 10])
    parser.add_argument("--rss-crop", type=int, default=112)
    args = parser.parse_args()
    Path(args.folder).mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    short = make_video(args.folder, 1)
    print(json.dumps({"throughput": throughput(short, args.clips, args.batch_size, args.rounds)}),
          flush=True)
    for minutes in args.rss_minutes:
        video = make_video(args.folder, minutes)
        rss, seconds, clips = peak_rss(video, args.rss_crop, max(128, args.rss_crop))
        print(json.dumps({"rss": {"minutes": minutes, "video": video.name, "clips": clips,
                                  "crop": args.rss_crop, "peak_rss_mib": round(rss, 1),
                                  "seconds": round(seconds, 1)}}), flush=True)


if __name__ == "__main__":
    main()
