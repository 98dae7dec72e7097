"""index-serve under hostile load: idle connections, a burst, bad requests. Counts, no timing ratios.

    python benchmarks/index_faults.py INDEX_DIR [--workers 2] [--idle 200] [--burst 4000 --threads 64]

1. opens `--idle` connections that never send a byte and times a /healthz beside them;
2. sends `--burst` single raw searches from `--threads` threads while they stay open;
3. sends every bad request of BAD (and the burst's) and counts answers >= 500.
Prints the counts; a connection error or a 5xx anywhere is a failure (exit 1).
"""

import argparse
import json
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

RAW = {"Content-Type": "application/octet-stream"}


def bad_requests(dimension):
    """(method, path, headers, body) of malformed or hostile requests."""
    row = np.zeros(dimension, "<f4").tobytes()
    json_type = {"Content-Type": "application/json"}
    return [
        ("POST", "/search", RAW, b""), ("POST", "/search", RAW, row[:-1]),
        ("POST", "/search", RAW, np.full(dimension, np.nan, "<f4").tobytes()),
        ("POST", "/search", RAW, np.full(dimension, np.inf, "<f4").tobytes()),
        ("POST", "/search", RAW, np.zeros((1025, dimension), "<f4").tobytes()),
        ("POST", "/search", {"Content-Type": "application/octet-stream; dtype=float64"}, row * 2),
        ("POST", "/search?k=0", RAW, row), ("POST", "/search?k=-5", RAW, row),
        ("POST", "/search?k=1e3", RAW, row), ("POST", "/search?k=" + "9" * 400, RAW, row),
        ("POST", "/search?nprobe=0", RAW, row), ("POST", "/search?format=%00", RAW, row),
        ("POST", "/search", json_type, b"{"), ("POST", "/search", json_type, b"[]"),
        ("POST", "/search", json_type, b"[" * 200_000), ("POST", "/search", json_type, b"\xff\xfe"),
        ("POST", "/search", json_type, b'{"vectors": "x"}'),
        ("POST", "/search", json_type, b'{"vectors": [[NaN]]}'),
        ("POST", "/search", json_type, json.dumps({"vectors": [[1e999] * dimension]}).encode()),
        ("POST", "/search", json_type, json.dumps({"vectors": [[10 ** 400] * dimension]}).encode()),
        ("POST", "/search", json_type, json.dumps({"vectors": [[True] * dimension]}).encode()),
        ("POST", "/search", json_type, json.dumps({"vectors": [[0] * dimension], "k": 10 ** 30}).encode()),
        ("POST", "/search", json_type, b"0" * 30_000_000),
        ("POST", "/search", {"Content-Type": "text/plain"}, row),
        ("GET", "/search", {}, b""), ("PUT", "/search", {}, b""), ("DELETE", "/clips/1", {}, b""),
        ("GET", f"/clips/{2 ** 63}", {}, b""), ("GET", f"/clips/{10 ** 100}", {}, b""),
        ("GET", "/clips/-1", {}, b""), ("GET", "/clips/1.5", {}, b""), ("GET", "/clips/%00", {}, b""),
        ("GET", "/../../etc/passwd", {}, b""), ("GET", "/%2e%2e/%2e%2e/etc/passwd", {}, b""),
        ("GET", "/healthz?x=" + "a" * 5000, {}, b""), ("OPTIONS", "/search", {}, b""),
        ("POST", "/reload", {"Authorization": "Bearer wrong"}, b""),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index_dir")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--burst", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args()
    process = subprocess.Popen([sys.executable, "-m", "ig65m", "index-serve", args.index_dir,
                                "--port", "0", "--workers", str(args.workers), "--no-access-log"],
                               stderr=subprocess.PIPE, text=True)
    port = next(int(m.group(1)) for line in process.stderr
                if (m := re.search(r"127\.0\.0\.1:(\d+)", line)))
    threading.Thread(target=process.stderr.read, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        run(url, port, args)
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(url, port, args):
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.idle)]
    began = time.perf_counter()
    health = requests.get(f"{url}/healthz", timeout=30).json()
    print(f"{args.idle} idle sockets open: /healthz answered in {time.perf_counter() - began:.3f} s")
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(256, health["dimension"])).astype("<f4")
    local = threading.local()

    def one(number):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        try:
            return session.post(f"{url}/search?k=10", data=queries[number % 256].tobytes(),
                                headers=RAW, timeout=120).status_code
        except requests.RequestException as err:
            return type(err).__name__

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        outcomes = list(pool.map(one, range(args.burst)))
    wall = time.perf_counter() - began
    errors = [o for o in outcomes if o != 200]
    print(f"burst: {args.burst} searches from {args.threads} threads beside {args.idle} idle "
          f"sockets in {wall:.1f} s: {len(errors)} errors {sorted(set(map(str, errors)))}")
    statuses = []
    for method, path, headers, body in bad_requests(health["dimension"]):
        statuses.append(requests.request(method, f"{url}{path}", headers=headers, data=body,
                                         timeout=120).status_code)
    server_errors = [s for s in statuses if s >= 500]
    print(f"bad requests: {len(statuses)} sent, statuses {sorted(set(statuses))}, "
          f"{len(server_errors)} answered 5xx")
    for sock in idle:
        sock.close()
    if errors or server_errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
