"""Clip search benchmark: index-serve over HTTP against Faiss in the same process, on the same
queries, in alternating rounds; optionally the server of another checkout beside it (--old).

    python benchmarks/index.py --real FEATURES_DIR --vectors 200000 [--old ../main] [--workdir D --keep]

Data (see index_data.py): real clip features tiled with calibrated noise to --vectors clips; the
neighbour-distance ratio of the real features and of the collection are printed. Queries are
held-out clips. Clients run in separate processes over keep-alive connections, and the CPU they
used is printed, because on a small machine they take cores from the server: `--client raw` (the
default) writes pre-encoded requests to a socket and reads answers by their Content-Length, a
load generator's cost (about 35 us a request); `--client http.client`, Python's own client (about
150 us), shows what a plain Python caller pays on top.
Figures: recall@1/@10, p50/p99 of single queries, throughput with 1/8/32 clients against Faiss
with as many threads, PSS of every server process, each block with its load average.

The latency block also measures the goal's two queries (single clip, and `group_by=video`) from
a client that polls its socket without sleeping ("busy"), and a floor server (`floor_serve`: a
bare socket loop around the same Faiss call) from both clients. On a VM, a process that sleeps
while it waits is woken through the hypervisor (on this one, tens of us: the guest does no halt
polling), so the floor shows what any server's answer costs here beyond the search itself.
Beside in-process Faiss runs the grouped query done in process ("in-process grouped": Faiss, then
`group_by_video`), so that the grouped HTTP query is also compared with the same work without HTTP.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import orjson
from common import (alternate, load_average, median_spread, process_tree, report,
                    tree_cpu_seconds)
from index_data import RealTiles, exact_neighbours

from ig65m.index.grouping import group_by_video
from ig65m.index.search import Searcher, search_parameters

K = 10
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
GOAL_FORMS = ("raw+compact", "raw+group")  # issue 11's single-clip and group_by: video queries
GROUPED = "in-process grouped"  # Faiss and group_by_video in this process: the grouped query's twin
FORMS = {  # name: (path, content type, body maker)
    "raw+compact": ("/search?k=10&format=compact", "application/octet-stream", lambda q: q.tobytes()),
    "raw+full": ("/search?k=10", "application/octet-stream", lambda q: q.tobytes()),
    "raw+group": ("/search?k=10&group_by=video", "application/octet-stream", lambda q: q.tobytes()),
    "json+full": ("/search", "application/json",
                  lambda q: json.dumps({"vectors": [q.tolist()], "k": K}).encode()),
    # the search page's query: the k nearest clips grouped into videos and moments
    "json+group": ("/search", "application/json",
                   lambda q: json.dumps({"vectors": [q.tolist()], "k": K, "group_by": "video"}).encode()),
}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_server(checkout, index_dir, args, forms):
    """A server process of `checkout` (its own ig65m on PYTHONPATH) -> {"process", "port",
    "forms": the request forms it is measured with}."""
    argv = [sys.executable, "-m", "ig65m", "index-serve", str(index_dir), "--port", "0", *args]
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_WAIT_POLICY="PASSIVE")
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stderr:
        found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if found:
            threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()
            return {"process": process, "port": int(found.group(1)), "forms": forms}
    raise SystemExit(f"server of {checkout} did not start")


class RawClient:
    """HTTP/1.1 over one keep-alive socket with nothing but what a load generator does:
    `post(request bytes)` -> status, after reading the answer by its Content-Length. `busy`: the
    socket is non-blocking and the client polls it without sleeping (see the module's notes)."""

    def __init__(self, port, busy=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(not busy)
        self.buf = b""

    @staticmethod
    def request(path, kind, body):
        return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def post(self, request):
        while request:
            try:
                request = request[self.sock.send(request):]
            except BlockingIOError:
                pass
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self.buf += self._recv()
        head, self.buf = self.buf[:end], self.buf[end + 4:]
        length = int(CONTENT_LENGTH.search(head).group(1))
        while len(self.buf) < length:
            self.buf += self._recv()
        self.buf = self.buf[length:]
        return int(head[9:12])

    def _recv(self):
        data = _recv_busy(self.sock)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data


def client(port, form, queries, seconds, count, start, out, kind="raw"):
    """One client process: single queries over one keep-alive connection until `seconds` pass
    (or `count` are done) -> (answered, errors, latencies in s, CPU seconds) on `out`."""
    path, content_type, make = FORMS[form]
    bodies = [make(q) for q in queries]
    if kind in ("raw", "busy"):
        raw = RawClient(port, busy=kind == "busy")
        requests = [RawClient.request(path, content_type, body) for body in bodies]
        post = lambda n: raw.post(requests[n % len(requests)])  # noqa: E731
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def post(number):
            connection.request("POST", path, bodies[number % len(bodies)],
                               {"Content-Type": content_type})
            answer = connection.getresponse()
            answer.read()
            return answer.status
    times, errors = [], 0
    start.wait()
    cpu, stop_at = time.process_time(), time.perf_counter() + seconds
    while len(times) < count and time.perf_counter() < stop_at:
        began = time.perf_counter()
        status = post(len(times))
        times.append(time.perf_counter() - began)
        errors += status != 200
    out.put((len(times), errors, times, time.process_time() - cpu))


CLIENT = {"kind": "raw"}  # --client


def http_run(port, form, queries, clients, seconds=1e9, count=10**9, kind=None):
    """Run `clients` client processes at once -> (queries/s, errors, latencies, client cores)."""
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    procs = [context.Process(target=client, args=(port, form, queries[i::clients], seconds, count,
                                                  start, out, kind or CLIENT["kind"]))
             for i in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(0.3)
    began = time.perf_counter()
    start.set()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - began
    for proc in procs:
        proc.join()
    done = sum(r[0] for r in results)
    latencies = np.concatenate([r[2] for r in results])
    return done / wall, sum(r[1] for r in results), latencies, sum(r[3] for r in results) / wall


def faiss_run(searcher, queries, threads, seconds=1e9, count=10**9):
    """Faiss in this process: `threads` threads of single-query searches -> (q/s, latencies)."""
    params, keep = search_parameters(searcher.index, searcher.breadth_default or 1)
    times = [[] for _ in range(threads)]
    stop_at = time.perf_counter() + seconds

    def work(number):
        faiss.omp_set_num_threads(1)
        mine, own = queries[number::threads], times[number]
        while len(own) < count and time.perf_counter() < stop_at:
            began = time.perf_counter()
            searcher.index.search(mine[len(own) % len(mine)][None], K, params=params)
            own.append(time.perf_counter() - began)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    began = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    latencies = np.concatenate(times)
    return len(latencies) / (time.perf_counter() - began), latencies


def grouped_run(searcher, queries, count):
    """The grouped query answered in this process, as a library caller would: Faiss, then the
    grouping into videos (one thread) -> latencies."""
    times = []
    faiss.omp_set_num_threads(1)
    while len(times) < count:
        began = time.perf_counter()
        distances, ids = searcher.search_arrays(queries[len(times) % len(queries)][None], K)
        group_by_video(searcher.table, distances, ids, metric=searcher.metric)
        times.append(time.perf_counter() - began)
    return np.array(times)


def pss_mb(process):
    return [round(p.memory_full_info().pss / 2**20, 1) for p in process_tree(process.pid)]


def latency_block(servers, searcher, queries, samples, rounds, floor_port):
    """p50/p99 of single queries: in-process Faiss and every (server, form), alternating; the
    goal's forms (GOAL_FORMS) also from a busy-polling client, and the floor server's beside."""
    kept = {}

    def runner(name, measure):
        def run():
            latencies = measure() * 1000
            kept.setdefault(name, []).append(latencies)
            return 1000 / float(np.median(latencies))
        return run

    def http(port, form, kind=None):
        return lambda: http_run(port, form, queries, 1, count=samples, kind=kind)[2]

    runners = {"faiss in-process": runner("faiss in-process",
                                          lambda: faiss_run(searcher, queries, 1, count=samples)[1]),
               GROUPED: runner(GROUPED, lambda: grouped_run(searcher, queries, samples))}
    for name, server in servers.items():
        for form in server["forms"]:
            runners[f"{name} {form}"] = runner(f"{name} {form}", http(server["port"], form))
    for form in GOAL_FORMS:
        label = f"new {form} busy"
        runners[label] = runner(label, http(servers["new"]["port"], form, "busy"))
    for kind in (CLIENT["kind"], "busy"):
        label = "floor" if kind == CLIENT["kind"] else "floor busy"
        runners[label] = runner(label, http(floor_port, "raw+compact", kind))
    rounds_run = alternate(runners, rounds=rounds)
    print(f"\n## single-query latency, {samples} queries a round (rates: 1/p50)")
    print(report(rounds_run, baseline="faiss in-process", unit="q/s"))
    base = kept["faiss in-process"]
    for name, runs in kept.items():
        p50 = median_spread(np.median(r) for r in runs)
        p99 = median_spread(np.percentile(r, 99) for r in runs)
        over = median_spread(np.median(r) - np.median(b) for r, b in zip(runs, base))
        times = median_spread(np.median(r) / np.median(b) for r, b in zip(runs, base))
        print(f"{name:<24} p50 {p50[0]:.3f} ms ({p50[1]:.3f}-{p50[2]:.3f})  p99 {p99[0]:.2f} ms  "
              f"p50 over Faiss {over[0]:+.3f} ms ({over[1]:+.3f} to {over[2]:+.3f}), "
              f"x{times[0]:.2f} ({times[1]:.2f}-{times[2]:.2f})")
    for name, runs in kept.items():  # the grouped queries against the same done in-process
        if "group" in name and name != GROUPED:
            times = median_spread(np.median(r) / np.median(b) for r, b in zip(runs, kept[GROUPED]))
            print(f"{name:<24} x{times[0]:.2f} ({times[1]:.2f}-{times[2]:.2f}) {GROUPED}")


def floor_serve(index_dir, out):
    """The floor: the least an HTTP server in Python can do for a raw compact search, run in a
    process of its own. One connection at a time, polled without ever sleeping; each request is
    read by its Content-Length (no other header is looked at), searched with Faiss as in-process,
    and answered with the compact JSON. Its extra time over in-process Faiss is this machine's:
    the loopback round trip, and waking the client when it sleeps while it waits."""
    searcher = Searcher(index_dir)
    faiss.omp_set_num_threads(1)
    params, keep = search_parameters(searcher.index, searcher.breadth_default or 1)
    listener = socket.create_server(("127.0.0.1", 0))
    out.put(listener.getsockname()[1])
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        buf = b""
        while data := _recv_busy(sock):
            buf += data
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                length = int(CONTENT_LENGTH.search(buf[:end]).group(1))
                if len(buf) < end + 4 + length:
                    break
                query = np.frombuffer(buf[end + 4:end + 4 + length], dtype="<f4")[None]
                buf = buf[end + 4 + length:]
                distances, ids = searcher.index.search(query, K, params=params)
                body = orjson.dumps({"ids": ids, "distances": distances},
                                    option=orjson.OPT_SERIALIZE_NUMPY)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        sock.close()


def _recv_busy(sock):
    """sock.recv, polled without sleeping when the socket is non-blocking."""
    while True:
        try:
            return sock.recv(1 << 20)
        except BlockingIOError:
            pass


def start_floor(index_dir):
    """floor_serve in a spawned process (no OpenMP state inherited) -> (process, port)."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=floor_serve, args=(str(index_dir), out), daemon=True)
    process.start()
    return process, out.get(timeout=300)


def throughput_block(servers, searcher, queries, clients, seconds, rounds, form):
    """Queries/s with `clients` client processes against Faiss with as many threads; the cores
    that the clients and the server used (CPU seconds per second)."""
    cores = {}

    def http_runner(name, server):
        def run():
            before = tree_cpu_seconds(server["process"].pid)
            rate, errors, _, client_cores = http_run(server["port"], form, queries, clients, seconds)
            server_cores = (tree_cpu_seconds(server["process"].pid) - before) / seconds
            cores.setdefault(name, []).append((client_cores, server_cores, errors))
            return rate
        return run

    runners = {f"faiss {clients} threads": lambda: faiss_run(searcher, queries, clients, seconds)[0]}
    for name, server in servers.items():
        runners[f"{name} {form}"] = http_runner(f"{name} {form}", server)
    print(f"\n## throughput, {clients} clients ({form}), {seconds:g} s a round")
    print(report(alternate(runners, rounds=rounds), baseline=f"faiss {clients} threads", unit="q/s"))
    for name, seen in cores.items():
        print(f"{name:<24} clients used {np.median([c for c, _, _ in seen]):.2f} cores, server "
              f"{np.median([s for _, s, _ in seen]):.2f} cores, errors {sum(e for _, _, e in seen)}")


def prepare(args, work):
    """The collection, its index (index-build of this checkout) and held-out queries."""
    tiles = RealTiles(args.real)
    real_ratio = tiles.real_ratio()
    calibration = work / "calibration.json"
    if calibration.exists():
        tiles.sigma = json.loads(calibration.read_text())["sigma"]
        ratio = json.loads(calibration.read_text())["ratio"]
    else:
        log("calibrating the noise to the real neighbour-distance ratio")
        ratio = tiles.calibrate(args.vectors, real_ratio)
        calibration.write_text(json.dumps({"sigma": tiles.sigma, "ratio": ratio}))
    print(f"real features: {len(tiles.real)} clips of {len(tiles.videos)} videos from {args.real}; "
          f"neighbour ratio d1/d10 {real_ratio:.3f}; collection {args.vectors} clips, noise "
          f"{tiles.sigma:.3f} x spread, ratio {ratio:.3f}")
    if not (work / "index").exists():
        log("writing the collection and running index-build")
        tiles.write(work / "features", args.vectors)
        subprocess.run([sys.executable, "-m", "ig65m", "index-build", str(work / "features"),
                        str(work / "index"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    videos = -(-args.vectors // 500)
    queries = tiles.queries(args.queries, videos)
    truth = exact_neighbours(tiles, args.vectors, queries)
    return queries, truth


def recall(found, truth, k):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", required=True, help="folder of real feature .npy files")
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=500, help="single queries a latency round")
    parser.add_argument("--seconds", type=float, default=4.0, help="a throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--client", choices=("raw", "http.client"), default="raw",
                        help="the clients' HTTP code (see the module docstring)")
    parser.add_argument("--server-args", default="",
                        help="more index-serve options, e.g. '--batch-window-ms 0'")
    parser.add_argument("--old", default=None, help="another checkout whose server runs beside")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    CLIENT["kind"] = args.client
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ig65m-index-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    queries, truth = prepare(args, work)
    searcher = Searcher(work / "index")
    manifest = searcher.manifest
    print(f"index {manifest['index_key']}, {manifest['search_parameter']} "
          f"{manifest['search_default']}, {os.cpu_count()} cores, load {load_average():.1f}")
    distances, ids = searcher.search_arrays(queries, K)
    print(f"recall in-process: @1 {recall(ids, truth, 1):.4f}, @10 {recall(ids, truth, 10):.4f}")
    checkout = Path(__file__).resolve().parents[1]
    servers = {"new": start_server(checkout, work / "index", ["--workers", str(args.workers),
                                                              "--no-access-log",
                                                              *args.server_args.split()],
                                   list(FORMS))}
    if args.old:
        servers["old"] = start_server(Path(args.old).resolve(), work / "index",
                                      ["--threads", "4"], ["raw+full", "json+full"])
    floor, floor_port = start_floor(work / "index")
    try:
        _http_recall(servers["new"]["port"], queries, truth)
        latency_block(servers, searcher, queries, args.samples, args.rounds, floor_port)
        for clients in map(int, args.clients.split(",")):
            throughput_block(servers, searcher, queries, clients, args.seconds, args.rounds,
                             "raw+full")
        print("\n## memory (PSS MiB: the server process first, then its workers)")
        for name, server in servers.items():
            print(f"{name:<6} {pss_mb(server['process'])}; index file "
                  f"{(work / 'index' / 'index.faiss').stat().st_size / 2**20:.0f} MiB")
    finally:
        floor.terminate()
        for server in servers.values():
            server["process"].terminate()
            server["process"].wait(timeout=30)


def _http_recall(port, queries, truth):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/search?k=10&format=compact", queries.astype("<f4").tobytes(),
                       {"Content-Type": "application/octet-stream"})
    found = json.loads(connection.getresponse().read())["ids"]
    print(f"recall over HTTP: @1 {recall(found, truth, 1):.4f}, @10 {recall(found, truth, 10):.4f}")


if __name__ == "__main__":
    main()
