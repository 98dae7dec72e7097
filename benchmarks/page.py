"""Figures of the search page: /search over HTTP against in-process search on a large index, an
upload of a 10 s video to its results (the model's share), page weight and time to first results
in a headless Chromium.

    python benchmarks/page.py search --clips 1000000     # builds (once) a synthetic index in --work
    python benchmarks/page.py upload                     # random:1 weights, the real clip settings
    python benchmarks/page.py page                       # page weight, first results in Chromium

Every comparison alternates its sides round by round (common.py) and prints the load beside it.
The synthetic collection: 512-d clustered vectors in "videos" of 1000 clips of 0.5 s each.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import alternate, load_average, median_spread  # noqa: E402

from ig65m.fileio import save_features  # noqa: E402

DIM = 512
CLIPS_PER_VIDEO = 1000


def synthetic_collection(folder, clips, seed=0):
    """`clips` clustered 512-d vectors in feature files of CLIPS_PER_VIDEO clips (a video each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4096, DIM)).astype(np.float32) * 3
    for number in range(0, clips, CLIPS_PER_VIDEO):
        path = folder / f"video{number // CLIPS_PER_VIDEO:05d}.npy"
        if path.is_file():
            continue
        count = min(CLIPS_PER_VIDEO, clips - number)
        # slowly drifting scenes: neighbouring clips of a video share a centre
        scene = np.repeat(rng.integers(0, len(centres), count // 20 + 1), 20)[:count]
        vectors = centres[scene] + rng.normal(size=(count, DIM)).astype(np.float32)
        save_features(path, vectors, {"source": f"/videos/video{number:07d}.mp4", "model": "synthetic",
                                      "clips": [[0.5 * i, 0.5 * i + 0.5] for i in range(count)]})


def start_server(index_dir, *extra, env=None):
    argv = [sys.executable, "-m", "ig65m", "index-serve", str(index_dir), "--port", "0", *extra]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, **(env or {})))
    for line in process.stderr:
        found = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", line)
        if found:
            import threading
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, found.group(1)
    raise SystemExit("the server did not start")


def p50_ms(function, queries):
    """Median latency of function(query) over `queries`, in milliseconds."""
    times = []
    for query in queries:
        start = time.perf_counter()
        function(query)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_search(args):
    import faiss

    from ig65m.index import Searcher, build_index
    from ig65m.index.grouping import group_by_video
    from ig65m.index.server import omp_threads_for

    work = Path(args.work)
    index_dir = work / f"index-{args.clips}"
    if not index_dir.is_dir():
        synthetic_collection(work / f"features-{args.clips}", args.clips)
        started = time.perf_counter()
        build_index([work / f"features-{args.clips}"], index_dir, progress=True)
        print(f"built {index_dir} in {time.perf_counter() - started:.0f} s", flush=True)
    searcher = Searcher(index_dir)
    # the OpenMP threads one request of the server gets (cores / its 4 threads): same work per query
    faiss.omp_set_num_threads(omp_threads_for(4))
    print(f"index: {searcher.count} clips, {searcher.manifest['index_key']}, "
          f"{searcher.breadth_name}={searcher.breadth_default}")
    rng = np.random.default_rng(1)
    ids = rng.choice(searcher.count, args.queries, replace=False)
    metas = [searcher.clip(int(i)) for i in ids]
    queries = [np.array(np.load(meta["features"], mmap_mode="r")[meta["clip"]], dtype="<f4")
               for meta in metas]
    process, url = start_server(index_dir, "--threads", "4")
    session = requests.Session()
    try:
        for label, k, grouped in (("single clip, k=10", 10, False), ("group_by video, k=100", 100, True)):
            def http(query, k=k, grouped=grouped):
                # as IndexClient sends them: raw little-endian float32, options in the query string
                params = {"k": k, "group_by": "video"} if grouped else {"k": k}
                answer = session.post(f"{url}/search", params=params, data=query.tobytes(),
                                      headers={"Content-Type": "application/octet-stream"},
                                      timeout=60)
                answer.raise_for_status()

            def local(query, k=k, grouped=grouped):
                distances, ids = searcher.search_arrays(np.asarray(query)[None], k)
                if grouped:
                    group_by_video(searcher.table, distances, ids, metric=searcher.metric)
                else:
                    searcher.results(distances, ids)

            rounds = alternate({"http": lambda: 1 / p50_ms(http, queries),
                                "in-process": lambda: 1 / p50_ms(local, queries)}, rounds=args.rounds)
            report_latency(label, rounds)
    finally:
        process.terminate()
        process.wait()


def report_latency(label, rounds):
    http, http_low, http_high = median_spread(1 / r["rates"]["http"] for r in rounds)
    local, local_low, local_high = median_spread(1 / r["rates"]["in-process"] for r in rounds)
    ratio, low, high = median_spread(r["rates"]["in-process"] / r["rates"]["http"] for r in rounds)
    loads = [r["load"] for r in rounds]
    print(f"{label}: HTTP p50 {http:.2f} ms ({http_low:.2f}-{http_high:.2f}), in-process p50 "
          f"{local:.2f} ms ({local_low:.2f}-{local_high:.2f}); HTTP / in-process x{ratio:.2f} "
          f"(per-round {low:.2f}-{high:.2f}); {len(rounds)} alternating rounds, load "
          f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores", flush=True)


def upload_collection(work):
    """A 10 s 320x240 video and a second one, extracted with random:1 weights at the model's
    own clip settings, indexed: what `upload` and `page` search."""
    from ig65m.extract import Extractor
    from ig65m.index import build_index
    from ig65m.sample import write_sample_video

    index_dir = work / "upload-index"
    if index_dir.is_dir():
        return index_dir
    (work / "upload-videos").mkdir(parents=True, exist_ok=True)
    (work / "upload-features").mkdir(exist_ok=True)
    extractor = Extractor("r2plus1d_34_8_ig65m", "random:1", progress=False)
    for name, seconds in (("ten", 10.0), ("other", 4.0)):
        video = write_sample_video(work / "upload-videos" / f"{name}.mp4", seconds=seconds)
        extractor.extract(video, work / "upload-features" / f"{name}.npy")
    build_index([work / "upload-features"], index_dir, metric="cosine", progress=False)
    return index_dir


def bench_upload(args):
    work = Path(args.work)
    index_dir = upload_collection(work)
    video = work / "upload-videos" / "ten.mp4"
    process, url = start_server(index_dir, "--model", "r2plus1d_34_8_ig65m", "--weights", "random:1")
    try:
        for number in range(args.rounds + 1):
            started = time.perf_counter()
            with open(video, "rb") as handle:
                answer = requests.post(f"{url}/search/video", files={"video": handle},
                                       data={"k": "5"}, timeout=600).json()
            total = time.perf_counter() - started
            spent = answer["query"]["seconds"]
            model = spent["model_load"] + spent["extract"]
            print(f"upload {number} ({'cold: loads the model' if number == 0 else 'warm'}): "
                  f"{total:.2f} s to results for {answer['query']['clips']} clips; model "
                  f"{model:.2f} s ({100 * model / total:.0f}%: load {spent['model_load']:.2f}, "
                  f"extract {spent['extract']:.2f}), search {1000 * spent['search']:.1f} ms; "
                  f"first: {answer['videos'][0]['name']}; load {load_average():.1f}", flush=True)
    finally:
        process.terminate()
        process.wait()


def bench_page(args):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.page_helpers import start_chrome

    index_dir = upload_collection(Path(args.work))
    process, url = start_server(index_dir)
    driver = start_chrome()
    try:
        weight = sum(len(requests.get(f"{url}{path}", timeout=30).content)
                     for path in ("/", "/assets/app.js", "/assets/style.css"))
        print(f"page weight: {weight / 1024:.1f} KB (HTML + JS + CSS, uncompressed; no other "
              "requests but the API's JSON and the thumbnails)")
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            driver.get(url + "/")
            wait(driver, "return document.querySelectorAll('#video-select option').length > 0 "
                         "&& document.getElementById('clip-id').value !== ''")
            driver.execute_script("document.getElementById('search-clip').click()")
            wait(driver, "return document.querySelector('#results .card') !== null")
            times.append(time.perf_counter() - started)
        median, low, high = median_spread(times)
        print(f"time to first results (load the page, list the collection, search a clip, draw "
              f"the cards): {median:.2f} s median ({low:.2f}-{high:.2f}) over {len(times)} "
              f"loads; load {load_average():.1f}")
    finally:
        driver.quit()
        process.terminate()
        process.wait()


def wait(driver, script, timeout=120):
    deadline = time.monotonic() + timeout
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {script}")
        time.sleep(0.01)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["search", "upload", "page"])
    parser.add_argument("--work", default="/tmp/ig65m-page-bench", help="cached collections")
    parser.add_argument("--clips", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    {"search": bench_search, "upload": bench_upload, "page": bench_page}[args.what](args)


if __name__ == "__main__":
    main()
