"""Ray extraction benchmark: clips/s of single-process extract vs `extract --ray` with 1 and 2
model actors, the seconds a Ray job takes beyond the single-process one (its fixed cost per job),
Ray's start-up seconds, and a paper estimate of a 1M-video run.

    python benchmarks/ray_extract.py                     # 4 videos x 8 clips, 64-px crops
    python benchmarks/ray_extract.py --videos 8 --crop 112 --rounds 5

Every side runs the same job (an --output-dir of videos, --overwrite) in this process, model load
included, in alternating rounds after one untimed warm-up job each (benchmarks/common.py). Ray is
started once (`ray.init(num_cpus=cores)`, timed) and reused by every Ray round, as a job on a
running cluster would be. Random weights: speed does not depend on them.

The 1M-video estimate uses the measured decode + preprocess CPU seconds per clip (one decode task,
timed alone) and a GPU model rate you give (--gpu-clips-per-s; no GPU here to measure it).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from common import alternate, load_average, median_spread, report, timed
from ig65m.cli import main
from ig65m.sample import write_sample_video

MODEL = "r2plus1d_34_8_ig65m"


def make_videos(folder, count, seconds):
    for number in range(count):
        write_sample_video(Path(folder) / f"v{number}.mp4", seconds=seconds, width=320,
                           height=240, fps=30, options={"preset": "ultrafast", "g": "30"})


JOB_CLIPS = []  # clips of one job, as the first job counted them


def job(videos, out, crop, extra):
    args = ["extract", str(videos), "--output-dir", str(out), "--overwrite", "--weights",
            "random:0", "--model", MODEL, "--frame-size", str(crop), "--crop-size", str(crop),
            *extra]

    def run():
        result = CliRunner().invoke(main, args)
        if result.exit_code != 0:
            sys.exit(f"job failed: {result.output[-2000:]}")
        clips = sum(json.loads(line)["clips"] for line in result.stdout.splitlines())
        JOB_CLIPS.append(clips)
        return clips
    return run


def extra_seconds(rounds, baseline, clips):
    """Per side: the median per-round seconds a job of `clips` takes beyond `baseline`'s."""
    lines = []
    for name in list(rounds[0]["rates"]):
        if name != baseline:
            extra, low, high = median_spread(clips / r["rates"][name] - clips / r["rates"][baseline]
                                             for r in rounds)
            lines.append(f"{name}: {extra:+.2f} s a job of {clips} clips beyond {baseline} "
                         f"(per-round min {low:+.2f}, max {high:+.2f})")
    return "\n".join(lines)


def decode_seconds_per_clip(videos, crop):
    """CPU seconds to plan, decode and preprocess one clip (one video, one part, no model)."""
    from ig65m.extract import Extractor
    from ig65m.ranges import decode_part, plan_video, split

    settings = Extractor(MODEL, "random:0", device="cpu", progress=False).settings(
        frame_size=crop, crop_size=crop)
    source = str(sorted(Path(videos).glob("*.mp4"))[0])
    start = time.process_time()
    plan = plan_video(source, settings)
    clips = sum(len(decode_part(source, part, model=MODEL, frame_size=crop, crop_size=crop))
                for part in split(plan, 64))
    return (time.process_time() - start) / clips


def main_():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=64 / 30, help="8 clips of 8 frames")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpu-clips-per-s", type=float, default=400.0,
                        help="assumed model rate of one GPU for the paper estimate")
    parser.add_argument("--clips-per-video", type=float, default=225.0,
                        help="for the estimate: a 60 s video at 30 fps in 8-frame clips")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    cores = os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="rb", dir="/tmp") as tmp:
        videos = Path(tmp) / "videos"
        videos.mkdir()
        make_videos(videos, args.videos, args.seconds)
        load = load_average()
        start = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, _temp_dir=f"{tmp}/ray",
                 log_to_driver=False)
        startup = time.perf_counter() - start
        try:
            runners = {
                "single-process": timed(job(videos, Path(tmp) / "a", args.crop, [])),
                "ray, 1 worker": timed(job(videos, Path(tmp) / "b", args.crop,
                                           ["--ray", "--ray-workers", "1"])),
                "ray, 2 workers": timed(job(videos, Path(tmp) / "c", args.crop,
                                            ["--ray", "--ray-workers", "2"])),
            }
            # warm-up: the first job pays once for what later jobs find cached (the auto
            # backend's measure, Ray's worker processes)
            rounds = alternate(runners, rounds=args.rounds, warmup=True)
        finally:
            ray.shutdown()
        decode = decode_seconds_per_clip(videos, args.crop)
    print(f"R(2+1)D-34 8-frame clips, {args.crop}-px crops, {args.videos} videos x "
          f"{args.seconds:.2f} s (320x240, 30 fps), whole job incl. model load, clips/s:")
    print(report(rounds, baseline="single-process", unit="clips/s"))
    print(extra_seconds(rounds, "single-process", clips=JOB_CLIPS[0]))
    print(f"ray.init(num_cpus={cores}) start-up: {startup:.1f} s (load average {load:.1f})")
    print(f"decode + preprocess: {decode * 1000:.1f} CPU ms per clip at {args.crop} px")
    estimate(decode, args)


def estimate(decode, args):
    """On paper: 1M videos on N nodes of 1 GPU + 8 CPU cores each."""
    clips = 1_000_000 * args.clips_per_video
    decode_112 = decode * (112 / args.crop) ** 2 if args.crop < 112 else decode
    print(f"1M videos x {args.clips_per_video:.0f} clips = {clips:.3g} clips; per node: 1 GPU at "
          f"{args.gpu_clips_per_s:.0f} clips/s (assumed), 8 cores decoding at "
          f"~{decode_112 * 1000:.0f} CPU ms/clip (112 px, scaled from the measure):")
    for nodes in (1, 4, 16, 64):
        gpu = args.gpu_clips_per_s * nodes
        cpu = 8 * nodes / decode_112
        rate = min(gpu, cpu)
        print(f"  {nodes:>3} nodes: {rate:,.0f} clips/s ({'GPU' if gpu <= cpu else 'decode'}-bound)"
              f" -> {clips / rate / 3600:,.1f} h")


if __name__ == "__main__":
    main_()
