"""Backend benchmark: clips/s of every backend as a ratio to torch eager fp32 in the same rounds,
with each backend's feature cosine to torch fp32 on the same real clips.

    python benchmarks/backends.py                                  # R(2+1)D-34 8-frame, 5 rounds
    python benchmarks/backends.py --models i3d_r50_32_kinetics --rounds 3
    python benchmarks/backends.py --models movinet_a0_stream       # ms per frame, stream models

Input: a 480p video (the shared real ActivityNet clip scaled to 854x480, or the sample pattern
where ../shared is absent; or --video). Clips are decoded and preprocessed once, as `extract` does;
what is timed is the backend on those batches (the pipeline around it is benchmarks/extract.py's).
Weights: `random:0` (speed does not depend on the values; the cosines are to torch fp32 with the
same weights). INT8 is calibrated on --calibration-clips clips of the same video.

Rounds alternate (benchmarks/common.py): each ratio is the median of per-round ratios, with the
min-max spread and the load average. Two tables per model: every backend at the same --threads,
and each backend at its best thread count among --thread-counts (its own rounds). `auto` is what
`--backend auto` picks after measuring on this machine (in a fresh cache), timed beside the rest.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import alternate, load_average, median_spread, ratios, real_video, report, timed

from ig65m.transforms import transform_for
from ig65m.backends import cache, clipset, gate
from ig65m.backends.runners import Target, build
from ig65m.backends.select import choose
from ig65m.defaults import PRECISIONS
from ig65m.extract import Extractor
from ig65m.models import get_spec

MODELS = ["r2plus1d_34_8_ig65m", "i3d_r50_32_kinetics", "i3d_inception_rgb_kinetics",
          "movinet_a0_stream"]
BACKENDS = ["torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16",
            "openvino-int8"]


def prepared(extractor, video, count):
    """`count` preprocessed clips of `video` (fewer if it is short), as extract prepares them."""
    settings = extractor.settings()
    transform = transform_for(settings)
    clips = clipset.ClipSet([video], lambda v: (transform(c.frames) for c in extractor._clips(
        v, settings, None, None, None, None)), count)
    return clips, clips.tensor(count)


def runners_for(extractor, names, threads, calibration, batch):
    """{name: Runner} built for the clip shape at `threads`; `auto` measured in a fresh cache."""
    target = Target(lambda: extractor.embedder, extractor.spec.name, extractor.weights_sha256,
                    extractor.pooling, tuple(batch.shape[1:]), extractor.device, threads,
                    lambda: calibration)
    built = {}
    for name in names:
        try:
            built[name] = (choose("auto", target, lambda: batch, len(batch)) if name == "auto"
                           else build(name, target))
        except Exception as err:  # noqa: BLE001  (one backend failing must not stop the table)
            print(f"{name}: refused: {str(err).splitlines()[0]}", file=sys.stderr)
    return built


def threaded(runner, threads, batch):
    def run():
        torch.set_num_threads(threads)  # torch's runners follow the process setting
        runner(batch)
    return timed(run, amount=len(batch))


def cosines(built, clips, batch_size):
    reference = gate.run_batched(built["torch"], clips, batch_size)
    return {name: gate.check(reference, gate.run_batched(runner, clips, batch_size))
            for name, runner in built.items()}


def clip_model(name, args, video):
    extractor = Extractor(name, "random:0", backend="torch", progress=False)
    calibration, clips = prepared(extractor, video, max(args.calibration_clips, args.batch_size))
    calibration.count = args.calibration_clips
    batch = clips[:args.batch_size]
    print(f"\n== {name}: batches of {tuple(batch.shape)}; cosines on {args.gate_clips} real clips, "
          f"INT8 calibrated on {args.calibration_clips} ==")
    names = args.backends + (["auto"] if args.auto else [])
    same = runners_for(extractor, names, args.threads, calibration, batch)
    for runner in same.values():
        runner(batch)  # warm-up
    rounds = alternate({n: threaded(r, args.threads, batch) for n, r in same.items()}, args.rounds)
    print(f"-- every backend at {args.threads} threads (clips/s) --")
    print(report(rounds, baseline="torch", unit="clips/s"))
    checks = cosines(same, clips[:args.gate_clips], args.batch_size)
    for backend, result in checks.items():
        print(f"{backend:<24} {same[backend].precision}: min "
              f"cosine to torch fp32 {result.min_cosine:.6f}, top-1 agreement "
              f"{result.top1_agreement:.0%} on {result.clips} clips"
              + (f" (auto ran {same[backend].name})" if backend == "auto" else ""))
    best_threads(extractor, args, calibration, batch)


def best_threads(extractor, args, calibration, batch):
    """Each backend at every count of --thread-counts, in its own alternating rounds; its best
    count's median rate, as a ratio to torch at torch's best count (medians of two sets of
    rounds, so this ratio has no per-round spread)."""
    best = {}
    for name in args.backends:
        built = {t: runners_for(extractor, [name], t, calibration, batch).get(name)
                 for t in args.thread_counts}
        built = {t: r for t, r in built.items() if r is not None}
        if not built:
            continue
        for runner in built.values():
            runner(batch)
        rounds = alternate({t: threaded(r, t, batch) for t, r in built.items()},
                           max(2, args.rounds // 2))
        rates = {t: median_spread(r["rates"][t] for r in rounds)[0] for t in built}
        top = max(rates, key=rates.get)
        best[name] = (top, rates[top], [r["load"] for r in rounds])
    print(f"-- each backend at its best thread count of {args.thread_counts} --")
    for name, (threads, rate, loads) in best.items():
        ratio = rate / best["torch"][1] if "torch" in best else float("nan")
        print(f"{name:<24} {rate:10.3f} clips/s at {threads} threads  x{ratio:.2f} vs torch at "
              f"{best['torch'][0]} threads  (load {min(loads):.1f}-{max(loads):.1f})")
    torch.set_num_threads(args.threads)


def stream_model(name, args, video):
    """ms per frame of a stream model, torch against ONNX Runtime, one frame a step."""
    from ig65m.classify import load_stream_model
    from ig65m.stream import StreamRunner

    spec = get_spec(name)
    model, _, _ = load_stream_model(spec, "random:0", device="cpu", progress=False)
    crop = spec.weights.crop_size
    frames = Extractor(name, "random:0", backend="torch", progress=False)
    clip = next(iter(prepared(frames, video, 1)[0]))  # (1, 3, T, crop, crop)
    chunks = [torch.from_numpy(clip[:, :, i:i + 1]) for i in range(clip.shape[2])]
    with tempfile.TemporaryDirectory() as folder:
        built = {"torch": StreamRunner(model, height=crop, width=crop, threads=args.threads),
                 "onnxruntime": StreamRunner(model, height=crop, width=crop, backend="onnxruntime",
                                             onnx=Path(folder) / "s.onnx", threads=args.threads)}

        def per_frame(runner):
            def run():
                torch.set_num_threads(args.threads)
                start = time.perf_counter()
                for chunk in chunks:
                    runner.step(chunk)
                return len(chunks) / (time.perf_counter() - start)  # frames/s
            return run

        rounds = alternate({n: per_frame(r) for n, r in built.items()}, args.rounds)
    print(f"\n== {name}: one frame a step, {args.threads} threads (frames/s; ms/frame = 1000/rate) ==")
    print(report(rounds, baseline="torch", unit="frames/s"))
    for backend in built:
        rate = median_spread(r["rates"][backend] for r in rounds)[0]
        ratio = median_spread(ratios(rounds, backend, "torch"))[0]
        print(f"{backend:<24} {1000 / rate:8.2f} ms/frame  x{ratio:.2f} vs torch")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS[:1],
                        help=f"registered model names [{MODELS[0]}]; the issue's four: {MODELS}")
    parser.add_argument("--backends", nargs="+", default=BACKENDS,
                        choices=[b for b in PRECISIONS if b != "torch-fp16"])
    parser.add_argument("--no-auto", dest="auto", action="store_false")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, os.cpu_count()])
    parser.add_argument("--calibration-clips", type=int, default=64)
    parser.add_argument("--gate-clips", type=int, default=8)
    parser.add_argument("--video", type=Path, default=None, help="[a 480p video]")
    args = parser.parse_args(argv)
    if "torch" not in args.backends:
        args.backends.insert(0, "torch")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["IG65M_HOME"] = folder  # a fresh cache: conversions and auto measured here
        video = args.video or real_video(folder)
        print(f"video {video}; {os.cpu_count()} cores of {cache.cpu_name()}; "
              f"load {load_average():.1f} at start")
        for name in args.models:
            if get_spec(name).weights.stream:
                stream_model(name, args, video)
            else:
                clip_model(name, args, video)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
