"""Against the original tool: clips/s per clip and per FLOP, this project's input against the original's.

    python benchmarks/original.py                     # R(2+1)D-34 32-frame, 5 rounds
    python benchmarks/original.py --rounds 3 --threads 1

The original tool (moabitcoin/ig65m-pytorch, `ig65m extract`) feeds R(2+1)D-34 32-frame clips of
whole frames resized to a short side of 128 (`Resize(128)`, no crop): 128 x 171 for a 4:3 video
such as 640 x 480. This project feeds a 112 x 112 centre crop of frames decoded at a short side of
128. Both sides run the same model with the same random weights, batch 1 (the original's default),
in one process at the same torch thread count, in alternating rounds; each round's ratio comes from
that round. Per clip, ours does fewer FLOPs, so it is faster per clip; per FLOP (clips/s times the
GFLOPs of one clip, counted by `models.gflops`) the ratio says how well each input uses the cores.

What it does not show: decoding and preprocessing (the original's own pipeline cannot be installed
here; this replays its input geometry through our model), accuracy (a crop sees less of the frame),
or GPU speed.
"""

import argparse
import json
import sys

import torch
from common import alternate, report, summary, timed
from models import gflops

from ig65m.embedder import ClipEmbedder
from ig65m.models import get_model, get_spec

MODEL = "r2plus1d_34_32_ig65m"
SHAPES = {"ours (112 x 112 crop)": (1, 3, 32, 112, 112),
          "original (128 x 171 whole frame)": (1, 3, 32, 128, 171)}


def runner(embedder, shape):
    clips = torch.rand(shape)

    def run():
        with torch.inference_mode():
            embedder(clips)
        return 1
    return timed(run)


def per_flop(rounds, costs):
    """The same rounds with each rate turned into GFLOP/s (clips/s x GFLOPs per clip)."""
    return [dict(r, rates={name: rate * costs[name] for name, rate in r["rates"].items()})
            for r in rounds]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads [all cores]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_spec(MODEL)
    costs = {name: gflops(spec, shape) for name, shape in SHAPES.items()}
    model, _ = get_model(MODEL, "random", progress=False)
    embedder = ClipEmbedder(model).eval()
    runners = {name: runner(embedder, shape) for name, shape in SHAPES.items()}
    rounds = alternate(runners, rounds=args.rounds, warmup=True)
    ours, original = SHAPES
    print(f"{MODEL}, batch 1, {torch.get_num_threads()} torch threads; GFLOPs per clip: "
          + ", ".join(f"{name} {cost:.1f}" for name, cost in costs.items()), file=sys.stderr)
    print("per clip:\n" + report(rounds, baseline=original, unit="clips/s"), file=sys.stderr)
    flops = per_flop(rounds, costs)
    print("per FLOP:\n" + report(flops, baseline=original, unit="GFLOP/s"), file=sys.stderr)
    print(json.dumps({"model": MODEL, "threads": torch.get_num_threads(),
                      "gflops_per_clip": {name: round(cost, 2) for name, cost in costs.items()},
                      "per_clip": summary(rounds, ours, original),
                      "per_flop": summary(flops, ours, original)}))


if __name__ == "__main__":
    main()
