"""Where one search request's time goes: CPU time per stage of a single-vector query, measured in
one thread (`time.thread_time`, so other processes' load does not count), medians over queries.

    python benchmarks/index_stages.py INDEX_DIR QUERIES.npy [--repeat 1000]

Stages: Faiss search, metadata gather and result dicts, orjson encoding, parsing of a raw and of a
JSON body, the whole WSGI call in process (the Flask route, which serves browsers and JSON), and the
server processes' CPU per request over HTTP (the front, which answers raw searches itself, and
everything else), from sequential keep-alive requests.
"""

import argparse
import http.client
import io
import json
import re
import statistics
import subprocess
import sys
import time

import faiss
import numpy as np
import orjson
from common import load_average, tree_cpu_seconds

from ig65m.index.protocol import parse_json, parse_raw
from ig65m.index.server import create_app


def cpu_us(work, repeat):
    """Median thread CPU microseconds of work(i) over `repeat` calls."""
    times = []
    for number in range(repeat):
        began = time.thread_time()
        work(number)
        times.append(time.thread_time() - began)
    return statistics.median(times) * 1e6


def environ(body, kind, query):
    return {"REQUEST_METHOD": "POST", "PATH_INFO": "/search", "QUERY_STRING": query,
            "SERVER_NAME": "bench", "SERVER_PORT": "0", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "CONTENT_TYPE": kind, "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1"}


def in_process(index_dir, queries, repeat):
    faiss.omp_set_num_threads(1)
    app = create_app(index_dir)
    searcher = app.extensions["ig65m"].current
    raw = [q.astype("<f4").tobytes() for q in queries]
    bodies = [json.dumps({"vectors": [q.tolist()], "k": 10}).encode() for q in queries]
    answers = [searcher.search_arrays(q[None], 10) for q in queries]
    results = [{"results": searcher.results(*answer)} for answer in answers]
    pick = lambda items, n: items[n % len(items)]  # noqa: E731
    call = lambda env: b"".join(app(env, lambda *a: None))  # noqa: E731
    return {
        "faiss search": cpu_us(lambda n: searcher.search_arrays(pick(queries, n)[None], 10), repeat),
        "metadata + result dicts": cpu_us(lambda n: searcher.results(*pick(answers, n)), repeat),
        "orjson answer": cpu_us(lambda n: orjson.dumps(pick(results, n)), repeat),
        "json (standard library) answer, for comparison": cpu_us(
            lambda n: json.dumps(pick(results, n)).encode(), repeat),
        "parse raw body": cpu_us(lambda n: parse_raw(pick(raw, n), {"k": "10"}, searcher.dimension),
                                 repeat),
        "parse JSON body": cpu_us(lambda n: parse_json(pick(bodies, n), searcher.dimension), repeat),
        "whole WSGI call, raw (Flask route)": cpu_us(lambda n: call(environ(
            pick(raw, n), "application/octet-stream", "k=10")), repeat),
        "whole WSGI call, JSON (Flask)": cpu_us(lambda n: call(environ(
            pick(bodies, n), "application/json", "")), repeat),
    }


def server_cpu_per_request(index_dir, queries, repeat, checkout_env=None):
    """CPU microseconds the server process spends per sequential raw request over HTTP."""
    argv = [sys.executable, "-m", "ig65m", "index-serve", str(index_dir), "--port", "0",
            "--no-access-log"]  # (a full stderr pipe would stop the server)
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=checkout_env)
    port = next(int(m.group(1)) for line in process.stderr
                if (m := re.search(r"127\.0\.0\.1:(\d+)", line)))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        results = {}
        for path in ("/search?k=10&format=compact", "/search?k=10"):
            before = tree_cpu_seconds(process.pid)
            for number in range(repeat):
                connection.request("POST", path, queries[number % len(queries)].tobytes(),
                                   {"Content-Type": "application/octet-stream"})
                connection.getresponse().read()
            results[f"server CPU per HTTP request ({path})"] = (
                (tree_cpu_seconds(process.pid) - before) / repeat * 1e6)
        return results
    finally:
        process.terminate()
        process.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index_dir")
    parser.add_argument("queries", help=".npy of float32 query vectors")
    parser.add_argument("--repeat", type=int, default=1000)
    args = parser.parse_args()
    queries = np.load(args.queries).astype("<f4")
    stages = in_process(args.index_dir, queries, args.repeat)
    stages.update(server_cpu_per_request(args.index_dir, queries, args.repeat))
    for name, micros in stages.items():
        print(f"{name:<55} {micros:8.1f} us")
    print(f"load average {load_average():.1f}")


if __name__ == "__main__":
    main()
