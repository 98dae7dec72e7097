"""Sharded vs one-shot index-build: peak memory, build time and recall@10.

    python benchmarks/shards.py --rows 1000000 --dim 512            # what fits this shared machine
    python benchmarks/shards.py --rows 2000000 --dim 512 --rounds 2 # the issue's size (>= 10 GB free)

Synthetic clustered features (like clip features, unlike uniform noise) are written to --files
feature files. Each round builds the same collection twice in fresh processes, in alternating
order (benchmarks/common.py): `index-build` one-shot, and `index-build --shards S --workers W`.
Peak memory is sampled every 0.1 s over the process and its children (the shard workers):
anonymous memory (what the build really needs) and total RSS (which also counts memory-mapped
file pages the kernel can drop: feature files being read, the on-disk lists being written).
Recall@10 is measured on held-out queries against brute force, both indexes at the one-shot
build's calibrated nprobe, loaded through the server's path (ig65m.index.search.load_index).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import psutil

from common import alternate, median_spread, report
from ig65m.index.search import load_index


def write_collection(folder, rows, dim, files, seed=0):
    """`files` .npy files of clustered vectors, written chunk by chunk -> held-out queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4096, dim)).astype(np.float32)
    per_file = rows // files
    for number in range(files):
        path = folder / f"part{number:02d}" / "features.npy"
        path.parent.mkdir(parents=True)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(per_file, dim))
        for start in range(0, per_file, 65536):
            count = min(65536, per_file - start)
            picks = rng.integers(len(centres), size=count)
            out[start:start + count] = centres[picks] + 0.5 * rng.standard_normal((count, dim))
        out.flush()
        del out
    picks = rng.integers(len(centres), size=200)
    return (centres[picks] + 0.5 * rng.standard_normal((200, dim))).astype(np.float32)


def peak_memory(command):
    """Run `command`; -> (seconds, peak anonymous bytes, peak RSS bytes) over it and its children."""
    start = time.perf_counter()
    proc = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_anon = peak_rss = 0
    while proc.poll() is None:
        anon = rss = 0
        for member in [proc] + proc.children(recursive=True):
            try:
                status = Path(f"/proc/{member.pid}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            anon += int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
            rss += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        peak_anon, peak_rss = max(peak_anon, anon), max(peak_rss, rss)
        time.sleep(0.1)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return time.perf_counter() - start, peak_anon, peak_rss


def recall(index_dir, queries, truth, nprobe):
    index = load_index(index_dir / "index.faiss")
    _, found = index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=nprobe))
    return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])


def brute_force(folder, queries):
    heap = faiss.ResultHeap(len(queries), 10)
    first = 0
    for path in sorted(folder.glob("part*/features.npy")):
        vectors = np.load(path, mmap_mode="r")
        for start in range(0, len(vectors), 262144):
            chunk = np.ascontiguousarray(vectors[start:start + 262144])
            distances, ids = faiss.knn(queries, chunk, 10)
            heap.add_result(distances, ids + first + start)
        first += len(vectors)
    heap.finalize()
    return heap.I


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--index-key", default="IVF1024,Flat")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="folder for the collection [system temp]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shards-bench", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        queries = write_collection(tmp / "features", args.rows, args.dim, args.files)
        truth = brute_force(tmp / "features", queries)
        inputs = [str(p) for p in sorted((tmp / "features").glob("part*"))]
        measured = {"one-shot": [], "sharded": []}

        def build(name, extra):
            def run():
                target = tmp / name
                shutil.rmtree(target, ignore_errors=True)
                command = [sys.executable, "-m", "ig65m", "index-build", *inputs, str(target),
                           "--index-key", args.index_key, "--quiet", *extra]
                seconds, anon, rss = peak_memory(command)
                manifest = json.loads((target / "manifest.json").read_text())
                measured[name].append((seconds, anon, rss, manifest["search_default"]))
                return args.rows / seconds
            return run

        rounds = alternate({"one-shot": build("one-shot", []),
                            "sharded": build("sharded", ["--shards", str(args.shards),
                                                         "--workers", str(args.workers)])},
                           rounds=args.rounds)
        nprobe = measured["one-shot"][-1][3]
        recalls = {name: recall(tmp / name, queries, truth, nprobe) for name in measured}
    print(f"{args.rows:,} x {args.dim} float32 ({args.rows * args.dim * 4 / 2**30:.1f} GiB) in "
          f"{args.files} files, {args.index_key}; sharded: {args.shards} shards, {args.workers} "
          "workers. Build rate (vectors/s, whole build in a fresh process):")
    print(report(rounds, baseline="one-shot", unit="vectors/s"))
    for kind, column in (("anonymous", 1), ("total RSS", 2)):
        ratios = [s[column] / o[column] for s, o in zip(measured["sharded"], measured["one-shot"])]
        ratio, low, high = median_spread(ratios)
        sizes = {name: median_spread(m[column] for m in runs)[0] / 2**30
                 for name, runs in measured.items()}
        print(f"peak {kind}: one-shot {sizes['one-shot']:.2f} GiB, sharded {sizes['sharded']:.2f} "
              f"GiB, ratio {ratio:.2f} (per-round min {low:.2f}, max {high:.2f})")
    print(f"recall@10 at nprobe {nprobe} vs brute force on 200 held-out queries: one-shot "
          f"{recalls['one-shot']:.3f}, sharded {recalls['sharded']:.3f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
