"""Backend benchmark: clips/s of `extract` with the torch and the ONNX Runtime backends.

    python benchmarks/backends.py                        # 8 clips x 3 rounds, R(2+1)D-34 8-frame
    python benchmarks/backends.py --clips 16 --rounds 5 --variants torch ort-all ort-all-1t

Same video (the package's sample pattern), same random weights saved as a .pth and loaded through
`--weights`, same batches. Each round runs every variant once, in turn, so all of them see the same
machine load (the 2 cores here are shared); the figure per variant is the median over rounds of
end-to-end clips/s (decode + preprocess + model), plus model-only clips/s on prepared batches.
Variants: `torch`, and `ort-<level>[-<N>t]`: ONNX Runtime with graph optimisation level
disable/basic/extended/all and N intra-op threads (default: ONNX Runtime's choice).
Prints one JSON line per variant and a summary line with each ratio to torch. Random weights:
speed does not depend on the values.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ig65m.convert.onnx import OPTIMIZATIONS, OnnxBackend, export_onnx
from ig65m.extract import Extractor
from ig65m.models import get_model
from ig65m.sample import write_sample_video

MODEL = "r2plus1d_34_8_ig65m"


def parse_variant(name):
    """'torch' -> None; 'ort-all-2t' -> {'optimization': 'all', 'threads': 2}."""
    if name == "torch":
        return None
    parts = name.split("-")
    if parts[0] != "ort" or len(parts) not in (2, 3) or parts[1] not in OPTIMIZATIONS:
        raise SystemExit(f"bad variant {name!r}: torch or ort-<{'|'.join(OPTIMIZATIONS)}>[-Nt]")
    threads = int(parts[2].rstrip("t")) if len(parts) == 3 else None
    return {"optimization": parts[1], "threads": threads}


def make_inputs(folder, clip_frames, clips):
    """A sample video long enough for `clips` clips, and random weights saved as a .pth."""
    video = Path(folder) / "sample.mp4"
    write_sample_video(video, seconds=clips * clip_frames / 30 + 1, width=320, height=240)
    torch.manual_seed(0)
    model, _ = get_model(MODEL, "random", progress=False)
    weights = Path(folder) / "weights.pth"
    torch.save(model.state_dict(), weights)
    return video, weights


def make_extractors(variants, weights, onnx_path):
    """{variant: Extractor}, the ONNX ones running `onnx_path` with that variant's options."""
    extractors = {}
    for name in variants:
        options = parse_variant(name)
        if options is None:
            extractors[name] = Extractor(MODEL, weights, progress=False)
            continue
        extractor = Extractor(MODEL, weights, backend="onnxruntime", onnx=onnx_path,
                              progress=False)
        extractor._run = OnnxBackend(onnx_path, **options)  # the variant's session options
        extractors[name] = extractor
    return extractors


def end_to_end(extractor, video, clips, batch_size):
    start = time.perf_counter()
    features, _ = extractor.features(video, max_clips=clips, batch_size=batch_size)
    elapsed = time.perf_counter() - start
    assert features.shape[0] == clips, features.shape
    return clips / elapsed, features


def model_only(extractor, batch, repeats=1):
    start = time.perf_counter()
    for _ in range(repeats):
        extractor._run(batch)
    return repeats * batch.shape[0] / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["torch", "ort-all", "ort-all-1t",
                                                          "ort-basic"])
    args = parser.parse_args(argv)
    for name in args.variants:
        parse_variant(name)
    with tempfile.TemporaryDirectory() as folder:
        run(args, folder)


def run(args, folder):
    spec_frames = 8
    video, weights = make_inputs(folder, spec_frames, args.clips)
    onnx_path = Path(folder) / "embedder.onnx"
    reference = Extractor(MODEL, weights, progress=False)
    export_onnx(reference.embedder, onnx_path, clip_frames=spec_frames, crop_size=112)
    extractors = make_extractors(args.variants, weights, onnx_path)
    batch = torch.randn(args.batch_size, 3, spec_frames, 112, 112)
    for extractor in extractors.values():
        extractor._run(batch)  # warm-up: first runs allocate and pick kernels
    e2e = {name: [] for name in extractors}
    model = {name: [] for name in extractors}
    features = {}
    for round_index in range(args.rounds):
        for name, extractor in extractors.items():
            rate, features[name] = end_to_end(extractor, video, args.clips, args.batch_size)
            e2e[name].append(rate)
            model[name].append(model_only(extractor, batch))
            print(f"round {round_index + 1}: {name}: {rate:.3f} clips/s end to end",
                  file=sys.stderr)
    report(args, e2e, model, features)


def report(args, e2e, model, features):
    torch_rate = statistics.median(e2e["torch"]) if "torch" in e2e else None
    summary = {}
    for name in e2e:
        rate = statistics.median(e2e[name])
        diff = (float(abs(features[name] - features["torch"]).max()) if "torch" in features
                else None)
        line = {"variant": name, "clips_per_s": round(rate, 4),
                "model_only_clips_per_s": round(statistics.median(model[name]), 4),
                "rounds": [round(r, 4) for r in e2e[name]], "clips": args.clips,
                "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                "max_abs_diff_vs_torch": diff}
        if torch_rate:
            line["ratio_to_torch"] = summary[name] = round(rate / torch_rate, 3)
        print(json.dumps(line))
    print(json.dumps({"summary": "end-to-end clips/s ratio to torch", **summary}))


if __name__ == "__main__":
    main()
