"""Clip search benchmark: build time, recall@10 against exact search, HTTP latency and throughput,
server memory against the index file size, on a synthetic collection with cluster structure.

    python benchmarks/index.py --vectors 1000000 --dim 512 [--workdir DIR] [--keep]

Prints one JSON object of figures on stdout (progress on stderr). Every step runs the real tools:
`ig65m index-build` and `ig65m index-serve` as subprocesses, queries through HTTP with requests.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import requests

from ig65m.fileio import FeatureWriter
from ig65m.index.manifest import INDEX_FILE

K = 10


class Collection:
    """Clustered synthetic vectors: centre of cluster c + a cluster-weighted mix of a shared
    low-rank basis + small isotropic noise, like embeddings with low intrinsic dimension."""

    def __init__(self, dim, clusters, rank=16, seed=0):
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(clusters, dim)).astype("f4")
        self.weights = rng.uniform(0.1, 0.5, size=(clusters, rank)).astype("f4")
        self.basis = rng.normal(size=(rank, dim)).astype("f4")
        self.noise = 0.1

    def draw(self, count, rng):
        cluster = rng.integers(0, len(self.centres), count)
        mix = rng.normal(size=(count, self.basis.shape[0])).astype("f4") * self.weights[cluster]
        noise = rng.normal(size=(count, self.basis.shape[1])).astype("f4") * self.noise
        return self.centres[cluster] + mix @ self.basis + noise


def write_collection(folder, collection, vectors, per_file, seed):
    """Feature files of `per_file` clips each (with sidecars, as `extract` writes them)."""
    rng = np.random.default_rng(seed)
    paths = []
    for number, first in enumerate(range(0, vectors, per_file)):
        rows = min(per_file, vectors - first)
        path = folder / f"video{number:04d}.npy"
        with FeatureWriter(path) as writer:
            for offset in range(0, rows, 50_000):
                writer.write(collection.draw(min(50_000, rows - offset), rng))
            writer.commit({"source": f"/videos/video{number:04d}.mp4", "model": "synthetic",
                           "clips": [[i * 0.5, i * 0.5 + 0.5] for i in range(rows)]})
        paths.append(path)
    return paths


def exact_neighbours(paths, queries, k=K):
    """Brute-force L2 top-k over every file, streamed -> ids (nq, k)."""
    heap = faiss.ResultHeap(len(queries), k)
    first = 0
    for path in paths:
        rows = np.load(path, mmap_mode="r")
        for start in range(0, len(rows), 100_000):
            chunk = np.ascontiguousarray(rows[start:start + 100_000])
            distances, ids = faiss.knn(queries, chunk, k)
            heap.add_result(distances, ids + first + start)
        first += len(rows)
    heap.finalize()
    return heap.I


def recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def start_server(index_dir, threads):
    argv = [sys.executable, "-m", "ig65m", "index-serve", str(index_dir), "--port", "0",
            "--threads", str(threads)]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        found = re.search(r"on (http://\S+) ", line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep pipe drained
            return process, found.group(1)
    raise RuntimeError("index-serve did not start")


def single_latencies(url, queries, repeat):
    session = requests.Session()
    times = []
    for number in range(repeat):
        body = {"vectors": [queries[number % len(queries)].tolist()], "k": K}
        start = time.perf_counter()
        answer = session.post(f"{url}/search", json=body, timeout=30)
        times.append(time.perf_counter() - start)
        answer.raise_for_status()
    return np.array(times) * 1000


def throughput(url, queries, clients, seconds):
    """Queries/s with `clients` threads each sending single JSON queries for `seconds`."""
    done, errors = [0] * clients, [0] * clients
    stop_at = time.perf_counter() + seconds

    def client(number):
        session = requests.Session()
        rng = np.random.default_rng(number)
        while time.perf_counter() < stop_at:
            body = {"vectors": [queries[rng.integers(len(queries))].tolist()], "k": K}
            answer = session.post(f"{url}/search", json=body, timeout=60)
            done[number] += answer.status_code == 200
            errors[number] += answer.status_code != 200

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start), sum(errors)


def rss_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024
            for key in ("VmRSS", "VmHWM")}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args, work):
    figures = {"vectors": args.vectors, "dim": args.dim, "cores": os.cpu_count()}
    collection = Collection(args.dim, clusters=max(10, args.vectors // 1000))
    log("writing the synthetic collection")
    paths = write_collection(work / "features", collection, args.vectors, args.per_file, seed=1)
    queries = collection.draw(args.queries, np.random.default_rng(2))
    log("exact neighbours of the queries (brute force)")
    truth = exact_neighbours(paths, queries)
    log("index-build")
    start = time.perf_counter()
    built = subprocess.run([sys.executable, "-m", "ig65m", "index-build", str(work / "features"),
                            str(work / "index")], stdout=subprocess.PIPE, text=True, check=True)
    figures["build_seconds"] = round(time.perf_counter() - start, 1)
    manifest = json.loads(built.stdout)
    figures.update(index_key=manifest["index_key"], nprobe_default=manifest["search_default"],
                   index_file_mb=round((work / "index" / INDEX_FILE).stat().st_size / 2**20, 1))
    log(f"index-serve ({manifest['index_key']}, nprobe {manifest['search_default']})")
    process, url = start_server(work / "index", args.threads)
    try:
        figures["rss_loaded_mb"] = round(rss_mb(process.pid)["VmRSS"], 1)
        found = requests.post(f"{url}/search", timeout=600, data=queries.tobytes(),
                              params={"k": K}, headers={"Content-Type": "application/octet-stream"})
        figures["recall_at_10_http"] = round(recall([[hit["id"] for hit in row]
                                                     for row in found.json()["results"]], truth), 4)
        log(f"recall@10 {figures['recall_at_10_http']}; single-query latency")
        single_latencies(url, queries, 100)  # warm-up
        latencies = single_latencies(url, queries, args.repeat)
        figures.update(http_p50_ms=round(float(np.percentile(latencies, 50)), 2),
                       http_p99_ms=round(float(np.percentile(latencies, 99)), 2))
        log(f"{args.clients} concurrent clients for {args.seconds} s")
        qps, errors = throughput(url, queries, args.clients, args.seconds)
        figures.update(qps=round(qps, 1), errors=errors, server_threads=args.threads)
        memory = rss_mb(process.pid)
        figures.update(rss_mb=round(memory["VmRSS"], 1), rss_peak_mb=round(memory["VmHWM"], 1))
        figures["rss_over_index_file"] = round(memory["VmHWM"] / figures["index_file_mb"], 3)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-file", type=int, default=100_000, help="clips per feature file")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1000, help="single queries timed")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--threads", type=int, default=4, help="index-serve --threads")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the collection and index")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ig65m-index-bench-"))
    (work / "features").mkdir(parents=True, exist_ok=False)
    try:
        figures = run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
