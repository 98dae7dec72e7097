"""Where an OpenVINO backend spends its time: per-layer kernels and precisions of the compiled model.

    python benchmarks/openvino_layers.py                                   # R(2+1)D-34, int8
    python benchmarks/openvino_layers.py --precisions fp32 bf16 int8 --models i3d_r50_32_kinetics

Builds the backend as `--backend openvino[-bf16|-int8]` does (the same ONNX export, the same NNCF
INT8 calibrated on --calibration-clips clips of a 480p real video), compiles that file again with
OpenVINO's per-layer counters on (PERF_COUNT) at --threads, runs one warm-up and --calls timed
batches of real clips, and prints clips/s and the time of the last call summed by (layer type,
kernel), with the kernel's name: `brgconv_avx512_amx_I8` is an INT8 convolution on AMX tiles,
`..._amx_bf16` bf16 on AMX, `brgconv_avx512_f32` fp32 on AVX-512. Answers "does the whole graph
run in the fast kernels, or do some layers stay in fp32?". Random weights (`random:0`).
"""

import argparse
import collections
import os
import sys
import tempfile
import time

import numpy as np

from backends import prepared
from common import load_average, real_video

from ig65m.backends.openvino import HINTS
from ig65m.backends.runners import Target, build, onnx_file
from ig65m.extract import Extractor


def model_file(extractor, precision, calibration, clips):
    target = Target(lambda: extractor.embedder, extractor.spec.name, extractor.weights_sha256,
                    extractor.pooling, tuple(clips.shape[1:]), extractor.device, None,
                    lambda: calibration)
    if precision == "int8":
        return build("openvino-int8", target).file
    return onnx_file(target)


def profile(path, precision, threads, clips, calls):
    """(clips/s, {(layer type, kernel): [ms, layers]}) of the model at `path`."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads}
    if HINTS[precision]:
        config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
    core = ov.Core()
    request = core.compile_model(core.read_model(os.fspath(path)), "CPU",
                                 config).create_infer_request()
    request.infer({"clips": clips})
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        request.infer({"clips": clips})
        seconds.append(time.perf_counter() - start)
    layers = collections.defaultdict(lambda: [0.0, 0])
    for info in request.get_profiling_info():
        if info.status == info.Status.EXECUTED:
            entry = layers[(info.node_type, info.exec_type)]
            entry[0] += info.real_time.total_seconds() * 1000
            entry[1] += 1
    return len(clips) / float(np.median(seconds)), layers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["r2plus1d_34_8_ig65m"])
    parser.add_argument("--precisions", nargs="+", default=["int8"], choices=list(HINTS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--calibration-clips", type=int, default=16)
    parser.add_argument("--top", type=int, default=8, help="rows per table [8]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["IG65M_HOME"] = folder  # a fresh cache
        video = real_video(folder)
        for name in args.models:
            extractor = Extractor(name, "random:0", backend="torch", progress=False)
            calibration, clips = prepared(extractor, video,
                                          max(args.calibration_clips, args.batch_size))
            calibration.count = args.calibration_clips
            batch = clips[:args.batch_size].numpy()
            for precision in args.precisions:
                path = model_file(extractor, precision, calibration, clips)
                rate, layers = profile(path, precision, args.threads, batch, args.calls)
                total = sum(ms for ms, _ in layers.values())
                print(f"\n== {name} openvino {precision}, {args.threads} threads, batches of "
                      f"{tuple(batch.shape)}: {rate:.2f} clips/s (median of {args.calls}), "
                      f"load {load_average():.1f} ==")
                ranked = sorted(layers.items(), key=lambda item: -item[1][0])
                for (layer, kernel), (ms, count) in ranked[:args.top]:
                    print(f"{ms:9.1f} ms {100 * ms / total:5.1f}%  {count:3d} x {layer:<24} {kernel}")
                print(f"{total:9.1f} ms in all layers of one call")


if __name__ == "__main__":
    sys.exit(main())
