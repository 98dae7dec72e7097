"""The server's front (ig65m/index/front.py) at the byte level: what it answers itself, what it
hands to waitress, in order, and what it does with clients that misbehave. A real index-serve
process on 127.0.0.1; requests are written to raw sockets, so nothing normalises them."""

import json
import os
import signal
import socket
import sys
import time

import numpy as np
import psutil
import pytest

from ig65m.index import Searcher, build_index
from tests.test_index_build import clustered, write
from tests.test_index_server import TOKEN, start_server, stop

DIM = 32
AUTH = f"Authorization: Bearer {TOKEN}\r\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("front")
    vectors = clustered(400, DIM, 4)
    write(folder, "video0", vectors)
    build_index([folder / "video0.npy"], folder / "idx", progress=False)
    argv = [sys.executable, "-m", "ig65m", "index-serve", str(folder / "idx"), "--port", "0",
            "--idle-timeout", "2", "--max-connections", "40"]
    process, url = start_server(argv, env={"IG65M_TOKEN": TOKEN})
    yield process, int(url.rsplit(":", 1)[1]), Searcher(folder / "idx"), vectors
    stop(process)


def raw_search(vector, query="k=3", headers=AUTH, version="HTTP/1.1"):
    body = np.asarray(vector, "<f4").tobytes()
    return (f"POST /search?{query} {version}\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
            f"{headers}Content-Length: {len(body)}\r\n\r\n").encode() + body


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answers(sock, count):
    """`count` HTTP answers from `sock` -> [(status, headers dict, body bytes)]."""
    buf, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in buf:
            more = sock.recv(65536)
            assert more, f"connection closed after {len(answers)} answers"
            buf += more
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in buf:
                    buf += sock.recv(65536)
                size, _, buf = buf.partition(b"\r\n")
                size = int(size, 16)
                while len(buf) < size + 2:
                    buf += sock.recv(65536)
                body, buf = body + buf[:size], buf[size + 2:]
                if size == 0:
                    break
        else:
            length = int(headers.get("content-length", 0))
            while len(buf) < length:
                buf += sock.recv(65536)
            body, buf = buf[:length], buf[length:]
        answers.append((int(lines[0].split()[1]), headers, body))
    return answers


def closed(sock, seconds=5):
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def neighbours(searcher, vector, k=3):
    return [hit["id"] for hit in searcher.search(np.asarray(vector, "f4")[None], k)[0]]


def test_pipelined_requests_keep_their_order_across_the_handoff(served):
    """Raw searches (the front's), /healthz and a JSON search (waitress's) and a raw search again,
    written at once on one connection: five answers in order, each the right one."""
    process, port, searcher, vectors = served
    json_body = json.dumps({"vectors": [vectors[7].tolist()], "k": 3}).encode()
    burst = (raw_search(vectors[1]) + raw_search(vectors[2]) + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
             + (f"POST /search HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Type: application/json\r\n"
                f"Content-Length: {len(json_body)}\r\n\r\n").encode() + json_body
             + raw_search(vectors[9]))
    with connect(port) as sock:
        sock.sendall(burst)
        answers = read_answers(sock, 5)
    assert [status for status, _, _ in answers] == [200] * 5
    hits = [[hit["id"] for hit in json.loads(body)["results"][0]] for _, _, body in
            (answers[0], answers[1], answers[3], answers[4])]
    assert hits == [neighbours(searcher, vectors[n]) for n in (1, 2, 7, 9)]
    assert json.loads(answers[2][2])["count"] == 400


def test_requests_the_front_hands_to_waitress_answer_the_same(served):
    process, port, searcher, vectors = served
    body = vectors[5].astype("<f4").tobytes()
    want = neighbours(searcher, vectors[5])
    chunked = (f"POST /search?k=3 HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Type: application/octet-stream"
               f"\r\nTransfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    # a client that sends Expect waits for the 100 before its body
    expect = raw_search(vectors[5], headers=AUTH + "Expect: 100-continue\r\n")[:-len(body)]
    origin = raw_search(vectors[5], headers=AUTH + "Origin: http://elsewhere.example\r\n")
    for request in (chunked, expect, origin):
        with connect(port) as sock:
            sock.sendall(request)
            status, headers, answer = read_answers(sock, 1)[0]
            if request is expect:
                assert status == 100
                sock.sendall(body)
                status, headers, answer = read_answers(sock, 1)[0]
        assert status == 200, answer
        assert [hit["id"] for hit in json.loads(answer)["results"][0]] == want
    many = np.repeat(vectors[5][None], 40, axis=0)  # more rows than one front batch: waitress
    with connect(port) as sock:
        sock.sendall(raw_search(many))
        status, _, answer = read_answers(sock, 1)[0]
    assert status == 200 and len(json.loads(answer)["results"]) == 40


A = AUTH.encode()


@pytest.mark.parametrize("request_bytes, status", [
    # bare line feeds: waitress waits for a proper end of head, and closes at --idle-timeout
    (b"POST /search?k=3 HTTP/1.1\nHost: t\nContent-Length: 0\n\n", None),
    (b"POST /search?k=3&k=4 HTTP/1.1\r\nHost: t\r\n" + A + b"Content-Length: 0\r\n\r\n", 400),
    (b"POST /search?k=3 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"POST /search?k=3 HTTP/1.1\r\nHost: t\r\n folded: x\r\n" + A + b"Content-Length: 0\r\n\r\n",
     400),
    (b"POST /search?k=x HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
     b"Content-Length: 128\r\n" + A + b"\r\n" + bytes(128), 400),
    (b"POST /search?k=3 HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
     b"Content-Length: 128\r\n\r\n" + bytes(128), 401),
    (b"POST /search?k=3 HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
     b"Content-Length: 12\r\n" + A + b"\r\n" + bytes(12), 400),  # not a whole vector
    (b"POST /search?k=3 HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
     b"Content-Length: 128\r\n" + A + b"\r\n" + np.full(32, np.nan, "<f4").tobytes(), 400),
    (b"POST /search?k=3 HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream; dtype=f8\r\n"
     b"Content-Length: 256\r\n" + A + b"\r\n" + bytes(256), 400),
    (b"post /search HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"POST /search HTTP/9.9\r\nHost: t\r\n" + A + b"\r\n", 400),
])
def test_malformed_requests_get_4xx_and_the_server_goes_on(served, request_bytes, status):
    process, port, searcher, vectors = served
    with connect(port) as sock:
        sock.sendall(request_bytes)
        if status is None:
            assert closed(sock, seconds=6)
        else:
            got, headers, body = read_answers(sock, 1)[0]
            assert got == status, (got, body)
            if got == 401:
                assert headers["www-authenticate"] == "Bearer"
    with connect(port) as sock:
        sock.sendall(raw_search(vectors[3]))
        assert read_answers(sock, 1)[0][0] == 200


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),  # request line
    (b"GET /healthz HTTP/1.1\r\nNo colon\r\n\r\n", 400),  # header
    (b"GET /clips/\xff HTTP/1.1\r\n\r\n", 400),  # URI
    (b"POST /search HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
    (b"POST /search HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),  # chunk size
    (b"POST /search HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n", 413),  # waitress's cap
    (b"POST /search HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
])
def test_requests_waitress_cannot_parse_get_json_errors_too(served, request_bytes, status):
    # waitress answered these itself, in text/plain: "Bad Request\r\n\r\nInvalid header ..."
    process, port, searcher, vectors = served
    with connect(port) as sock:
        sock.sendall(request_bytes)
        got, headers, body = read_answers(sock, 1)[0]
    assert got == status and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]


def test_http_1_0_and_connection_close_end_the_connection(served):
    process, port, searcher, vectors = served
    for request in (raw_search(vectors[1], version="HTTP/1.0"),
                    raw_search(vectors[1], headers=AUTH + "Connection: close\r\n")):
        with connect(port) as sock:
            sock.sendall(request)
            status, headers, body = read_answers(sock, 1)[0]
            assert status == 200 and headers["connection"] == "close" and closed(sock)
    with connect(port) as sock:  # HTTP/1.0 asking to keep the connection: two answers
        request = raw_search(vectors[1], headers=AUTH + "Connection: keep-alive\r\n",
                             version="HTTP/1.0")
        sock.sendall(request + request)
        assert [a[0] for a in read_answers(sock, 2)] == [200, 200]


def test_stalled_and_idle_clients_are_closed_and_hold_up_nobody(served):
    """Half a head, half a body, and a silent connection: searches go on meanwhile, and all three
    are closed after --idle-timeout (2 s)."""
    process, port, searcher, vectors = served
    whole = raw_search(vectors[2])
    stalled = [connect(port) for _ in range(3)]
    stalled[0].sendall(whole[:20])
    stalled[1].sendall(whole[:-10])
    started = time.monotonic()
    with connect(port) as sock:
        for _ in range(20):
            sock.sendall(whole)
            assert read_answers(sock, 1)[0][0] == 200
    assert time.monotonic() - started < 2
    assert all(closed(sock, seconds=6) for sock in stalled)
    assert time.monotonic() - started < 6
    for sock in stalled:
        sock.close()


def test_connection_limit_holds_and_frees(served):
    """--max-connections 40: the 41st connection waits in the backlog, unanswered, until one
    closes; then it is served."""
    process, port, searcher, vectors = served
    held = [connect(port) for _ in range(40)]
    for sock in held[:3]:  # they are accepted and served
        sock.sendall(raw_search(vectors[1]))
        assert read_answers(sock, 1)[0][0] == 200
    extra = connect(port)  # the kernel completes the handshake; the server does not accept it
    extra.sendall(raw_search(vectors[1]))
    extra.settimeout(0.5)
    with pytest.raises(TimeoutError):
        extra.recv(1)
    held.pop().close()
    extra.settimeout(10)
    assert read_answers(extra, 1)[0][0] == 200
    for sock in held + [extra]:
        sock.close()


def test_a_client_that_does_not_read_is_not_buffered_without_end(served):
    """Pipelined searches from a client that never reads: the server stops reading it while its
    answers wait (its memory stays flat), serves others meanwhile, and closes it at
    --idle-timeout (2 s)."""
    process, port, searcher, vectors = served
    server = psutil.Process(process.pid)
    before = server.memory_info().rss
    greedy = connect(port)
    greedy.setblocking(False)
    request, sent = raw_search(vectors[4], query="k=100"), 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            sent += greedy.send(request * 50)
        except BlockingIOError:
            time.sleep(0.05)
    assert sent > 100_000
    with connect(port) as sock:
        sock.sendall(raw_search(vectors[1]))
        assert read_answers(sock, 1)[0][0] == 200
    assert server.memory_info().rss - before < 50 * 2**20
    greedy.setblocking(True)
    greedy.settimeout(10)
    try:
        while greedy.recv(1 << 20):  # what was answered, then the end (or the reset) of the close
            pass
    except ConnectionResetError:
        pass
    greedy.close()


def test_a_pipelined_burst_is_answered_like_single_searches(served):
    """40 raw searches of 1-7 vectors each, written at once: the front searches them in batches
    of at most 19 vectors, and every answer equals that query searched alone."""
    process, port, searcher, vectors = served
    rng = np.random.default_rng(5)
    queries = [vectors[rng.integers(0, len(vectors), rng.integers(1, 8))] +
               rng.normal(0, 0.01, (1, DIM)).astype("f4") for _ in range(40)]
    with connect(port) as sock:
        sock.sendall(b"".join(raw_search(q, query="k=4&format=compact") for q in queries))
        answers = read_answers(sock, len(queries))
    for query, (status, _, body) in zip(queries, answers):
        distances, ids = searcher.search_arrays(query, 4)
        got = json.loads(body)
        assert status == 200 and got["ids"] == ids.tolist() and got["distances"] == distances.tolist()


def test_more_distinct_heads_than_the_front_keeps_are_each_answered_by_their_own(served):
    """The front keeps parsed request heads (HEAD_CACHE of them): 300 heads that differ only in
    k and the token, 2 rounds on one connection, each get k results, and the wrong token 401,
    whichever heads are kept when."""
    from ig65m.index.front import HEAD_CACHE
    process, port, searcher, vectors = served
    ks = list(range(1, 301))
    assert len(ks) > HEAD_CACHE
    with connect(port) as sock:
        for _ in range(2):
            for k in ks:
                auth = AUTH if k % 7 else "Authorization: Bearer wrong\r\n"
                sock.sendall(raw_search(vectors[k], query=f"k={k}&format=compact", headers=auth))
                (status, _, body), = read_answers(sock, 1)
                if k % 7:
                    assert status == 200 and len(json.loads(body)["ids"][0]) == k
                    assert json.loads(body)["ids"][0][0] == k  # its own vector
                else:
                    assert status == 401


def test_json_and_grouped_searches_answer_as_the_flask_route(served, tmp_path):
    """JSON bodies and `group_by` (raw and JSON) answered by the front equal the Flask route's
    answers to the same requests (signed media URLs aside: they carry their own expiry)."""
    process, port, searcher, vectors = served
    from ig65m.index.server import create_app
    client = create_app(searcher=searcher, token=TOKEN).test_client()
    flask_auth = {"Authorization": f"Bearer {TOKEN}"}
    query = vectors[11] + 0.01
    cases = [
        ("json", {"vectors": [query.tolist()], "k": 5}),
        ("json", {"vectors": [query.tolist(), vectors[3].tolist()], "k": 8, "group_by": "video"}),
        ("json", {"vectors": [query.tolist()], "k": 5, "group_by": "shot"}),  # 400 both ways
        ("raw", "k=6&group_by=video&min_score=-100"),
        ("raw", "k=6&format=compact"),
    ]
    for kind, spec in cases:
        if kind == "json":
            body = json.dumps(spec).encode()
            request = (f"POST /search HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            want = client.post("/search", data=body, headers=flask_auth,
                               content_type="application/json")
        else:
            request = raw_search(query, query=spec)
            want = client.post(f"/search?{spec}", data=np.asarray(query, "<f4").tobytes(),
                               headers=flask_auth, content_type="application/octet-stream")
        with connect(port) as sock:
            sock.sendall(request)
            status, _, got = read_answers(sock, 1)[0]
        assert status == want.status_code, (spec, got)
        assert _unsigned(json.loads(got)) == _unsigned(want.get_json()), spec
        if status == 200:  # and there was something to compare
            assert any(json.loads(got).get(key) for key in ("results", "videos", "ids")), got


def _unsigned(answer):
    for video in answer.get("videos", []):
        video.pop("media")
        for segment in video["segments"]:
            segment.pop("thumb")
    return answer


def burst_of_connections(process, port, first_k):
    """8 keep-alive connections opened at once, one search each -> the pid of the worker that
    answered each (the access log names it)."""
    socks = [connect(port) for _ in range(8)]
    time.sleep(0.5)
    for number, sock in enumerate(socks):
        sock.sendall(raw_search(np.zeros(DIM), query=f"k={first_k + number}"))
        assert read_answers(sock, 1)[0][0] == 200
    time.sleep(0.3)
    pids = [next(line for line in process.lines if f'"POST /search?k={first_k + number}" 200' in line)
            .rsplit("pid=", 1)[1].strip() for number in range(8)]
    for sock in socks:
        sock.close()
    return pids


def test_workers_share_connections_evenly_also_after_one_is_killed(tmp_path):
    """2 workers take 4 of 8 connections each, so neither idles under 8 clients. A worker killed
    mid-run leaves the other serving every new connection at once, and its replacement takes its
    share again."""
    write(tmp_path, "video0", clustered(200, DIM, 6))
    build_index([tmp_path / "video0.npy"], tmp_path / "idx", progress=False)
    process, url = start_server([sys.executable, "-m", "ig65m", "index-serve", str(tmp_path / "idx"),
                                 "--port", "0", "--workers", "2"], env={"IG65M_TOKEN": TOKEN})
    port = int(url.rsplit(":", 1)[1])

    def workers_ready(count):  # each worker says so once its front holds its slot
        deadline = time.monotonic() + 60
        while sum(line.count(" ready") for line in process.lines) < count:
            assert time.monotonic() < deadline, process.lines
            time.sleep(0.1)

    try:
        workers_ready(2)
        pids = burst_of_connections(process, port, 1)
        assert sorted(pids.count(pid) for pid in set(pids)) == [4, 4], pids
        killed = pids[0]
        os.kill(int(killed), signal.SIGKILL)
        pids = burst_of_connections(process, port, 11)  # before the master replaces it (1 s)
        assert len(set(pids)) == 1 and killed not in pids, pids
        workers_ready(3)
        pids = burst_of_connections(process, port, 21)
        assert sorted(pids.count(pid) for pid in set(pids)) == [4, 4], pids
    finally:
        stop(process)
