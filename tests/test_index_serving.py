"""index-serve under load and in operation: batching, idle connections, workers sharing one index,
reload after `index-build --append`, start-up checks, CORS and the access log. Real server
processes on 127.0.0.1 over indexes the tests build."""

import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import requests
from click.testing import CliRunner

from ig65m.index import Searcher, build_index
from ig65m.index.batching import Batcher
from ig65m.index.manifest import MANIFEST_FILE, METADATA_FILE
from ig65m.cli.index import index_serve
from ig65m.index.server import create_app
from tests.test_index_build import clustered, write
from tests.test_index_server import TOKEN, auth, start_server, stop

DIM = 32
RAW = {"Content-Type": "application/octet-stream"}


def serve(index_dir, *args, token=TOKEN):
    argv = [sys.executable, "-m", "ig65m", "index-serve", str(index_dir), "--port", "0", *map(str, args)]
    return start_server(argv, env={"IG65M_TOKEN": token} if token else {})


@pytest.fixture(scope="module")
def ivf(tmp_path_factory):
    """3,000 clustered vectors in an IVF index: queries go through the coarse quantizer too."""
    folder = tmp_path_factory.mktemp("ivf")
    vectors = clustered(3000, DIM, 5, clusters=40)
    write(folder, "video0", vectors)
    build_index([folder / "video0.npy"], folder / "idx", index_key="IVF32,Flat", progress=False)
    return folder / "idx", vectors


def test_batched_answers_equal_unbatched_ones(ivf):
    index_dir, vectors = ivf
    searcher = Searcher(index_dir)
    sizes = []
    search_arrays = searcher.search_arrays

    def recording(batch, k, breadth):
        sizes.append(len(batch))
        return search_arrays(batch, k, breadth)

    searcher.search_arrays = recording
    batcher = Batcher(window=0.0005)
    queries = vectors[np.random.default_rng(0).integers(0, len(vectors), 1200)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        batched = list(pool.map(lambda q: batcher.search(searcher, q[None], 10), queries))
    alone = [search_arrays(q[None], 10) for q in queries]
    for (distances, ids), (want_distances, want_ids) in zip(batched, alone):
        assert np.array_equal(ids, want_ids) and np.array_equal(distances, want_distances)
    assert max(sizes) > 1 and max(sizes) <= batcher.max_rows and sum(sizes) == len(queries)


def idle_sockets(url, count):
    host, port = url.rsplit("/", 1)[-1].split(":")
    return [socket.create_connection((host, int(port)), timeout=5) for _ in range(count)]


def test_burst_with_idle_connections_open(ivf):
    """200 idle connections do not keep anyone waiting; 2,000 single queries from 32 threads
    (batched by the server) all answer 200 with exactly the unbatched in-process answers."""
    index_dir, vectors = ivf
    process, url = serve(index_dir, "--threads", "8", "--batch-window-ms", "1")
    idle = idle_sockets(url, 200)
    try:
        started = time.monotonic()
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        picks = np.random.default_rng(1).integers(0, len(vectors), 2000)
        searcher = Searcher(index_dir)
        want = [searcher.search(vectors[pick], 5)[0] for pick in picks]  # one query per call

        def one(number):
            session = sessions.setdefault(threading.get_ident(), requests.Session())
            answer = session.post(f"{url}/search?k=5", data=vectors[picks[number]].tobytes(),
                                  headers={**auth(), **RAW}, timeout=60)
            return answer.status_code, answer.json().get("results", [None])[0]

        sessions = {}
        with ThreadPoolExecutor(max_workers=32) as pool:
            outcomes = list(pool.map(one, range(len(picks))))
        assert [status for status, _ in outcomes] == [200] * len(picks)
        assert [hits for _, hits in outcomes] == want
    finally:
        for sock in idle:
            sock.close()
        stop(process)
    assert process.returncode == 0
    searches = [line for line in process.lines if '"POST /search?k=5" 200' in line]
    assert len(searches) == len(picks)  # one access-log line per request


@pytest.fixture(scope="module")
def big_flat(tmp_path_factory):
    """A 48 MB Flat index: big beside a worker's own memory, so sharing shows."""
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(3)
    for number in range(2):
        write(folder, f"part{number}", rng.normal(size=(12_000, 512)).astype("f4"))
    build_index([folder], folder / "idx", index_key="Flat", progress=False)
    return folder / "idx"


def test_two_workers_share_one_index(big_flat):
    process, url = serve(big_flat, "--workers", "2", token=None)
    query = np.zeros(512, "f4").tobytes()
    try:
        served = set()
        for _ in range(100):  # new connections until both workers have searched the whole index
            with requests.Session() as session:
                answer = session.post(f"{url}/search?k=1&format=compact", data=query, headers=RAW,
                                      timeout=60)
                assert answer.status_code == 200
                served.add(session.get(f"{url}/healthz", timeout=10).json()["worker"])
            if len(served) == 2:
                break
        workers = psutil.Process(process.pid).children()
        assert len(workers) == 2 and served == {w.pid for w in workers}
        memory = [w.memory_full_info() for w in workers]
        index_bytes = (big_flat / "index.faiss").stat().st_size
        assert min(m.rss for m in memory) > index_bytes  # each maps all of it ...
        shared = sum(m.pss for m in memory) <= 1.3 * max(m.rss for m in memory)  # ... once
        assert shared, f"index {index_bytes}, workers {memory}"
    finally:
        stop(process)
    assert process.returncode == 0 and not any(w.is_running() for w in workers)


def append_part(folder, name, seed):
    vectors = clustered(60, DIM, seed)
    write(folder, name, vectors)
    build_index([folder / f"{name}.npy"], folder / "idx", append=True, progress=False)
    return vectors


@pytest.fixture
def growing(tmp_path):
    write(tmp_path, "first", clustered(300, DIM, 7))
    build_index([tmp_path / "first.npy"], tmp_path / "idx", progress=False)
    return tmp_path


def counts(url, tries=12):
    """The clip counts that workers report, over new connections."""
    return {requests.get(f"{url}/healthz", timeout=10).json()["count"] for _ in range(tries)}


def wait_for(condition, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_append_while_serving_swaps_without_a_failed_request(growing):
    process, url = serve(growing / "idx", "--workers", "2", "--reload-interval", "0.2")
    statuses, stop_now = [], threading.Event()
    probe = clustered(1, DIM, 7)[0].tobytes()

    def keep_searching():
        with requests.Session() as session:
            while not stop_now.is_set():
                statuses.append(session.post(f"{url}/search?k=3", data=probe,
                                             headers={**auth(), **RAW}, timeout=30).status_code)

    searching = threading.Thread(target=keep_searching)
    searching.start()
    try:
        new = append_part(growing, "second", 8)
        wait_for(lambda: counts(url) == {360})
        found = requests.post(f"{url}/search?k=1", data=new[5].tobytes(),
                              headers={**auth(), **RAW}, timeout=10).json()["results"][0][0]
        assert (found["id"], found["path"]) == (305, "/videos/second.mp4")
    finally:
        stop_now.set()
        searching.join()
        stop(process)
    assert len(statuses) > 10 and set(statuses) == {200}
    assert any("reloaded" in line and "360 clips" in line for line in process.lines)


def test_reload_on_request_and_on_sighup_reaches_every_worker(growing):
    process, url = serve(growing / "idx", "--workers", "2", "--reload-interval", "0")
    try:
        append_part(growing, "second", 8)
        time.sleep(0.5)
        assert counts(url) == {300}  # no polling: the old index until told
        assert requests.post(f"{url}/reload", timeout=10).status_code == 401
        answer = requests.post(f"{url}/reload", headers=auth(), timeout=30)
        assert answer.status_code == 200 and answer.json() == {"reloaded": True, "count": 360}
        wait_for(lambda: counts(url) == {360})
        append_part(growing, "third", 9)
        os.kill(process.pid, signal.SIGHUP)
        wait_for(lambda: counts(url) == {420})
    finally:
        stop(process)
    assert process.returncode == 0


def test_a_storm_of_sighups_does_not_freeze_a_worker(growing):
    # a SIGHUP landing while the handler of the last one held the reload event's lock ran the
    # handler again inside it, which waited for that lock forever: the front answered nothing more
    process, url = serve(growing / "idx", "--reload-interval", "0", token=None)
    probe = clustered(1, DIM, 7)[0].tobytes()
    try:
        assert requests.post(f"{url}/search?k=1", data=probe, headers=RAW, timeout=10).ok
        for _ in range(40):
            for _ in range(2000):
                os.kill(process.pid, signal.SIGHUP)
            answer = requests.post(f"{url}/search?k=1", data=probe, headers=RAW, timeout=3)
            assert answer.status_code == 200
    finally:
        stop(process)
    assert process.returncode == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_as_soon_as_the_address_is_printed_kills_nothing(growing, workers):
    # the address was printed (and connections queued) before the handlers were set: a SIGHUP
    # then killed a single-worker server, or a worker of several
    process, url = serve(growing / "idx", "--workers", workers, "--reload-interval", "0", token=None)
    try:
        for _ in range(100):
            os.kill(process.pid, signal.SIGHUP)
            time.sleep(0.005)
        answer = requests.post(f"{url}/search?k=1", data=clustered(1, DIM, 7)[0].tobytes(),
                               headers=RAW, timeout=10)
        assert answer.status_code == 200
    finally:
        stop(process)
    assert process.returncode == 0
    assert not any("exited" in line for line in process.lines)


def start_up_error(index_dir, *args):
    """`index-serve` in-process: -> its stderr after exit 2."""
    result = CliRunner().invoke(index_serve, [str(index_dir), "--port", "0", *args])
    assert result.exit_code == 2, result.output
    return result.stderr


def corrupt(folder, how):
    manifest = folder / MANIFEST_FILE
    data = json.loads(manifest.read_text())
    metadata = folder / METADATA_FILE
    if how == "manifest-number":
        manifest.write_text("42")
    elif how == "dimension":
        manifest.write_text(json.dumps({**data, "dimension": "wide"}))
    elif how.startswith("default="):
        manifest.write_text(json.dumps({**data, "search_default": json.loads(how[8:])}))
    elif how == "empty-metadata":
        metadata.write_bytes(b"")
    elif how == "truncated-metadata":
        metadata.write_bytes(metadata.read_bytes()[:5000])
    elif how == "garbage-metadata":
        metadata.write_bytes(b"not a database at all" * 400)
    elif how == "missing-rows":
        with sqlite3.connect(metadata) as connection:
            connection.execute("DELETE FROM clips WHERE id > 100")


@pytest.mark.parametrize("how, message", [
    ("manifest-number", "JSON object"), ("dimension", "dimension"),
    ('default="8"', "search_default"), ("default=0", "search_default"),
    ("default=2.5", "search_default"), ("default=[1]", "search_default"),
    ("empty-metadata", "metadata"), ("truncated-metadata", "metadata"),
    ("garbage-metadata", "metadata"), ("missing-rows", "rebuild"),
])
def test_bad_index_refuses_to_start_with_one_line(growing, how, message):
    corrupt(growing / "idx", how)
    err = start_up_error(growing / "idx")
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("host", ["999.1.1.1", "no.such.host.invalid", "::zz"])
def test_bad_host_is_one_line(growing, host):
    err = start_up_error(growing / "idx", "--host", host)
    assert err.startswith(f"error: cannot listen on {host}") and err.count("\n") == 1, err


def test_cors_and_no_5xx_on_bad_requests(growing):
    client = create_app(growing / "idx", token=TOKEN, cors_origins=["http://page.example"]).test_client()
    preflight = client.options("/search", headers={"Origin": "http://page.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://page.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    answer = client.get("/healthz", headers={"Origin": "http://page.example"})
    assert answer.headers["Access-Control-Allow-Origin"] == "http://page.example"
    assert "Access-Control-Allow-Origin" not in client.get(
        "/healthz", headers={"Origin": "http://evil.example"}).headers
    row = np.zeros(DIM, "<f4").tobytes()
    bad = [("POST", "/search", {"data": b"\xff\xfe{", "content_type": "application/json"}),
           ("POST", "/search", {"data": b'{"vectors": [[1e999]]}', "content_type": "application/json"}),
           ("POST", "/search", {"data": b'{"vectors": [[' + b"9" * 400 + b"]]}",
                                "content_type": "application/json"}),
           ("POST", "/search", {"data": b"[" * 100_000, "content_type": "application/json"}),
           ("POST", "/search", {"data": row, "content_type": "application/octet-stream",
                                "query_string": "k=10&nprobe=99999999999999999999"}),
           ("POST", "/search", {"data": row, "content_type": "application/octet-stream",
                                "query_string": "k=%00"}),
           ("POST", "/search", {"data": row, "content_type": "text/plain"}),
           ("POST", "/search", {"data": row, "content_type": "application/octet-stream; dtype=x"}),
           ("PUT", "/search", {}), ("DELETE", "/clips/1", {}), ("GET", "/clips/99999999999999999999999", {}),
           ("GET", "/clips/%00", {}), ("GET", "/../etc/passwd", {}), ("POST", "/reload", {"data": b"x"})]
    for method, path, options in bad:
        status = client.open(path, method=method, headers=auth(), **options).status_code
        assert 400 <= status < 500 or (path == "/reload" and status == 200), (method, path, status)
