"""Model zoo benchmark: parameters, GFLOPs, clips/s and frames/s (torch and ONNX Runtime) of every
registered model at its default input; for stream models also per-frame latency and peak memory
over a long live stream.

    python benchmarks/models.py                                  # everything (slow on 2 cores)
    python benchmarks/models.py --models movinet_a0_base movinet_a0_stream --stream-minutes 1

GFLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the meta device (2 FLOPs per
multiply-add, convolutions and matrix products only) for one clip. Throughput is batch 1, the
backends measured in `--rounds` alternating rounds (torch, ONNX Runtime, then the other way round)
at the same thread count (`--threads`, default torch's), each measure one warm-up call (none when
one call alone takes `--seconds`) then `--seconds` of timed calls (at least one). The table gives
each backend's median clips/s with its min-max, the median of the per-round ratios ONNX Runtime /
torch with its min-max, and the load average seen during the rounds. Stream models run
`ig65m.classify.classify_stream` on a lavfi test source at the model's frame rate for
`--stream-minutes` of video (`--stream-minutes-torch` for torch), in a fresh process per backend
whose peak RSS (VmHWM) is the memory figure; the RSS after the first and the last prediction show whether memory grows.
Random weights: speed and memory do not depend on them. Prints one JSON line per model, then a
Markdown table.
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
from common import alternate, summary
from torch.utils.flop_counter import FlopCounterMode

from ig65m.models.loading import count_parameters
from ig65m.embedder import ClipEmbedder
from ig65m.models import get_model, get_spec, list_models

LAVFI = "testsrc=size=320x240:rate={fps}"


def input_shape(spec, batch=1):
    row = spec.weights
    return (batch, len(row.mean), row.clip_frames, row.crop_size, row.crop_size)


def gflops(spec, shape=None):
    """GFLOPs of one clip at the default input (or `shape`, N C T H W), counted on the meta device
    (no compute)."""
    with torch.device("meta"):
        model = spec.builder(num_classes=spec.weights.num_classes).eval()
        clips = torch.empty(shape or input_shape(spec))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(clips)
    return counter.get_total_flops() / 1e9


def _timed(run, seconds):
    """Seconds per call: calls until `seconds` have passed (at least one timed call). The first
    call is a warm-up, except for heavy models where it alone already takes `seconds`."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    if first >= seconds:
        return first
    times, began = [], time.perf_counter()
    while not times or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def peak_rss_mb():
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def torch_runner(spec, seconds):
    """A runner (for `common.alternate`) returning torch clips/s at batch 1."""
    model, _ = get_model(spec.name, "random", progress=False)
    embedder = ClipEmbedder(model).eval()
    clips = torch.rand(input_shape(spec))

    def run():
        with torch.inference_mode():
            return 1.0 / _timed(lambda: embedder(clips), seconds)
    return run


def onnx_runner(spec, seconds, folder, threads):
    """A runner returning ONNX Runtime clips/s at batch 1, with `threads` intra-op threads."""
    from ig65m.convert.onnx import OnnxBackend, export_onnx

    model, _ = get_model(spec.name, "random", progress=False)
    path = Path(folder) / f"{spec.name}.onnx"
    export_onnx(ClipEmbedder(model), path, clip_frames=spec.weights.clip_frames,
                crop_size=spec.weights.crop_size)
    backend = OnnxBackend(path, threads=threads)
    path.unlink()  # the session holds the model
    clips = torch.rand(input_shape(spec)).numpy()
    return lambda: 1.0 / _timed(lambda: backend(clips), seconds)


def throughput(spec, args, folder):
    """Clips/s of each backend in alternating rounds at the same thread count, and the per-round
    ratio of each to the first backend. A backend that fails is reported and left out."""
    runners, row = {}, {}
    for backend in args.backends:
        try:
            runners[backend] = (torch_runner(spec, args.seconds) if backend == "torch" else
                                onnx_runner(spec, args.seconds, folder, args.threads))
        except Exception as err:  # noqa: BLE001  (one model failing must not stop the table)
            row[f"{backend}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    if not runners:
        return row
    rounds = alternate(runners, rounds=args.rounds)
    baseline = args.backends[0]
    for backend in runners:
        figures = summary(rounds, backend, baseline if baseline in runners else backend)
        row[f"{backend}_clips_s"] = round(figures["rate"], 3)
        row[f"{backend}_clips_s_spread"] = [round(figures["rate_min"], 3),
                                            round(figures["rate_max"], 3)]
        row[f"{backend}_frames_s"] = round(figures["rate"] * spec.weights.clip_frames, 1)
        if backend != baseline and baseline in runners:
            row[f"{backend}_ratio"] = [figures["ratio"], figures["ratio_min"], figures["ratio_max"]]
        row["load"] = [figures["load_min"], figures["load_max"]]
    return row


def stream_child(name, backend, minutes, threads=None):
    """Run in a fresh process: a `minutes`-long lavfi stream through the stream model."""
    from ig65m.classify import classify_stream
    spec = get_spec(name)
    model, _ = get_model(name, "random", progress=False)
    labels = [str(i) for i in range(spec.weights.num_classes)]
    fps = spec.weights.fps
    with tempfile.TemporaryDirectory() as folder:
        records = list(classify_stream(
            spec, model, LAVFI.format(fps=fps), labels, every=fps * 60, backend=backend,
            onnx=Path(folder) / "stream.onnx", duration=60 * minutes, format="lavfi",
            threads=threads))
    video = records[-1]
    print(json.dumps({"frames": video["frames"], "latency_ms": video["latency_ms"],
                      "latency_max_ms": video["latency_max_ms"], "peak_rss_mb": peak_rss_mb(),
                      "rss_first_mb": records[0]["rss_mb"], "rss_last_mb": video["rss_mb"]}))


def stream_figures(name, backend, minutes, threads=None):
    command = [sys.executable, __file__, "--stream-child", name, "--backend", backend,
               "--stream-minutes", str(minutes)] + (["--threads", str(threads)] if threads else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark(spec, args, folder):
    row = {"model": spec.name, "input": "x".join(map(str, input_shape(spec)[2:])),
           "params_m": round(count_parameters(spec) / 1e6, 2), "gflops": round(gflops(spec), 2),
           "threads": args.threads, **throughput(spec, args, folder)}
    if spec.weights.stream:
        for backend in args.backends:
            minutes = args.stream_minutes_torch if backend == "torch" else args.stream_minutes
            if minutes > 0:
                figures = stream_figures(spec.name, backend, minutes, args.threads)
                row[f"stream_{backend}"] = dict(figures, minutes=minutes)
    return row


def markdown(rows, backends):
    head = ["model", "input T x H x W", "params", "GFLOPs", "threads"]
    for backend in backends:
        head += [f"{backend} clips/s (min-max)", f"{backend} frames/s"]
    head += [f"{backend} / {backends[0]} (min-max)" for backend in backends[1:]] + ["load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"`{row['model']}`", row["input"].replace("x", " x "), f"{row['params_m']}M",
                 str(row["gflops"]), str(row["threads"])]
        for backend in backends:
            rate, spread = row.get(f"{backend}_clips_s"), row.get(f"{backend}_clips_s_spread")
            cells += [f"{rate} ({spread[0]}-{spread[1]})" if rate else "",
                      str(row.get(f"{backend}_frames_s", ""))]
        for backend in backends[1:]:
            ratio = row.get(f"{backend}_ratio")
            cells.append(f"{ratio[0]:.2f} ({ratio[1]:.2f}-{ratio[2]:.2f})" if ratio else "")
        load = row.get("load")
        cells.append(f"{load[0]:.1f}-{load[1]:.1f}" if load else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stream_markdown(rows, backends):
    lines = ["| stream model | backend | minutes | frames (model fps) | ms/frame (mean) | "
             "ms/frame (max) | peak RSS MiB | RSS first / last prediction MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for backend in backends:
            figures = row.get(f"stream_{backend}")
            if figures and "error" not in figures:
                lines.append(f"| `{row['model']}` | {backend} | {figures['minutes']} | "
                             f"{figures['frames']} | "
                             f"{figures['latency_ms']} | {figures['latency_max_ms']} | "
                             f"{figures['peak_rss_mb']} | {figures['rss_first_mb']} / "
                             f"{figures['rss_last_mb']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered one")
    parser.add_argument("--backends", nargs="*", default=["torch", "onnxruntime"])
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="timed seconds per backend per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per model")
    parser.add_argument("--stream-minutes", type=float, default=10.0,
                        help="stream length for ONNX Runtime (and the child process)")
    parser.add_argument("--stream-minutes-torch", type=float, default=10.0,
                        help="stream length for torch (slower: shorten on shared cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and ONNX Runtime threads, the same for both (default: "
                             "torch's default, all cores)")
    parser.add_argument("--stream-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = args.threads or torch.get_num_threads()  # one count for every backend
    torch.set_num_threads(args.threads)
    if args.stream_child:
        return stream_child(args.stream_child, args.backend, args.stream_minutes, args.threads)
    specs = [get_spec(name) for name in args.models] if args.models else list_models()
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average "
          f"{os.getloadavg()}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for spec in specs:
            began = time.perf_counter()
            rows.append(benchmark(spec, args, folder))
            print(json.dumps(rows[-1]), flush=True)
            print(f"{spec.name}: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    print(markdown(rows, args.backends))
    if any(k.startswith("stream_") for row in rows for k in row):
        print()
        print(stream_markdown(rows, args.backends))


if __name__ == "__main__":
    main()
