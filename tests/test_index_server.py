"""index-serve and index-query against a real server process on an ephemeral 127.0.0.1 port."""

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from werkzeug.exceptions import BadRequest

from ig65m.cli import main
from ig65m.index import build_index
from ig65m.index.protocol import parse_raw
from ig65m.index.server import default_body_cap, omp_threads_for
from tests.test_index_build import clustered, write

TOKEN = "s3cret-token"
DIM = 16


def start_server(argv, env=None):
    """Start a server process; wait for its 'serving ... on http://HOST:PORT' line -> (proc, url).
    Its stderr is drained into `process.lines` from then on (the access log never blocks it)."""
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, **(env or {})))
    deadline = time.monotonic() + 120
    for line in process.stderr:
        found = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", line)
        if found:
            process.lines = []
            process.drain = threading.Thread(target=lambda: process.lines.extend(process.stderr),
                                             daemon=True)
            process.drain.start()
            return process, found.group(1)
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError(f"server did not start: {process.stderr.read()}")


def stop(process):
    process.terminate()
    process.wait(timeout=10)
    if getattr(process, "drain", None):
        process.drain.join(timeout=10)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collection")
    parts = [clustered(120, DIM, 1), clustered(80, DIM, 2)]
    paths = [write(folder, f"video{n}", part) for n, part in enumerate(parts)]
    build_index(paths, folder / "idx", progress=False)
    return folder, np.concatenate(parts)


@pytest.fixture(scope="module")
def server(collection):
    folder, _ = collection
    process, url = start_server([sys.executable, "-m", "ig65m", "index-serve", str(folder / "idx"),
                                 "--port", "0", "--threads", "4"], env={"IG65M_TOKEN": TOKEN})
    yield url
    stop(process)


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_healthz_needs_no_token(server):
    answer = requests.get(f"{server}/healthz", timeout=10)
    assert answer.status_code == 200
    health = answer.json()
    assert (health["count"], health["dimension"], health["metric"]) == (200, DIM, "l2")


def test_search_json_and_raw_agree_and_find_themselves(server, collection):
    _, vectors = collection
    body = {"vectors": vectors[[3, 150]].tolist(), "k": 4, "nprobe": 16}
    answer = requests.post(f"{server}/search", json=body, headers=auth(), timeout=10)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [row[0]["id"] for row in results] == [3, 150] and all(len(r) == 4 for r in results)
    hit = results[1][0]
    assert (hit["path"], hit["clip"], hit["start"], hit["end"]) == ("/videos/video1.mp4", 30, 15.0, 15.5)
    assert hit["distance"] == pytest.approx(0.0, abs=1e-3)
    raw = requests.post(f"{server}/search?k=4", data=vectors[[3, 150]].astype("<f4").tobytes(),
                        headers={**auth(), "Content-Type": "application/octet-stream"}, timeout=10)
    assert raw.status_code == 200 and raw.json()["results"] == results
    short = requests.post(f"{server}/search?k=4&format=compact", data=vectors[[3, 150]].tobytes(),
                          headers={**auth(), "Content-Type": "application/octet-stream"}, timeout=10)
    as_json = requests.post(f"{server}/search", json={**body, "format": "compact"}, headers=auth(),
                            timeout=10)
    assert short.json() == as_json.json() == {"ids": [[h["id"] for h in r] for r in results],
                                              "distances": [[h["distance"] for h in r] for r in results]}


def test_clips_endpoint(server):
    answer = requests.get(f"{server}/clips/121", headers=auth(), timeout=10)
    assert answer.status_code == 200
    assert answer.json()["path"] == "/videos/video1.mp4" and answer.json()["clip"] == 1
    assert requests.get(f"{server}/clips/200", headers=auth(), timeout=10).status_code == 404


@pytest.mark.parametrize("headers", [{}, auth("wrong"), {"Authorization": TOKEN}])
def test_token_is_required(server, headers):
    for method, path in (("GET", "/clips/1"), ("POST", "/search")):
        answer = requests.request(method, f"{server}{path}", headers=headers, timeout=10,
                                  json={"vectors": [[0.0] * DIM]})
        assert answer.status_code == 401 and "token" in answer.json()["error"]


ROW = [0.5] * DIM
BAD_JSON = [
    ('{"vectors": [[1, 2]]}', 400, "16 numbers"),
    ('{"vectors": [[1, 2', 400, "not valid JSON"),
    ('[1, 2]', 400, "JSON object"),
    ('{"k": 3}', 400, "non-empty list"),
    ('{"vectors": []}', 400, "non-empty list"),
    ('{"vectors": [%s]}' % json.dumps(ROW).replace("0.5]", "NaN]"), 400, "NaN"),
    ('{"vectors": [%s]}' % json.dumps(ROW).replace("0.5]", "-Infinity]"), 400, "Infinity"),
    ('{"vectors": [%s]}' % json.dumps(ROW).replace("0.5]", "1e39]"), 400, "float32"),
    ('{"vectors": [%s]}' % json.dumps(ROW).replace("0.5]", '"1"]'), 400, "only numbers"),
    ('{"vectors": [%s]}' % json.dumps(ROW).replace("0.5]", "true]"), 400, "boolean"),
    ('{"vectors": [%s]}' % json.dumps(ROW).replace("0.5]", "null]"), 400, "only numbers"),
    ('{"vectors": [%s]}' % json.dumps(ROW).replace("0.5]", "[1]]"), 400, "only numbers"),
    ('{"vectors": [%s]}' % json.dumps([[0.5]] * DIM), 400, "only numbers"),
    ('{"vectors": [%s], "k": 0}' % json.dumps(ROW), 400, "k"),
    ('{"vectors": [%s], "k": 1001}' % json.dumps(ROW), 400, "k"),
    ('{"vectors": [%s], "k": "5"}' % json.dumps(ROW), 400, "k"),
    ('{"vectors": [%s], "k": 2.5}' % json.dumps(ROW), 400, "k"),
    ('{"vectors": [%s], "nprobe": -1}' % json.dumps(ROW), 400, "nprobe"),
    ('{"vectors": %s}' % json.dumps([ROW] * 1025), 400, "at most 1024"),
]


@pytest.mark.parametrize("body, status, message", BAD_JSON)
def test_bad_json_requests_are_4xx(server, body, status, message):
    answer = requests.post(f"{server}/search", data=body, timeout=10,
                           headers={**auth(), "Content-Type": "application/json"})
    assert answer.status_code == status and message in answer.json()["error"], answer.text


@pytest.mark.parametrize("data, query, message", [
    (b"\0" * 10, "", "whole number"),
    (b"", "", "whole number"),
    (np.full(DIM, np.nan, "<f4").tobytes(), "", "NaN"),
    (np.zeros(DIM, "<f4").tobytes(), "?k=abc", "integer"),
    (np.zeros(DIM, "<f4").tobytes(), "?k=5000", "k"),
    (np.zeros(DIM, "<f4").tobytes(), "?nprobe=0", "nprobe"),
    (np.zeros(DIM, "<f4").tobytes(), "?format=xml", "format"),
    (np.zeros(DIM, "<f4").tobytes()[:-1], "", "whole number"),
    (np.zeros(DIM + 1, "<f4").tobytes(), "", "whole number"),
    (np.zeros((1025, DIM), "<f4").tobytes(), "", "at most 1024"),
    (np.zeros(DIM, "<f8").tobytes(), ";dtype=float64", "float32"),
    (np.zeros(DIM, "<f2").tobytes() * 2, ";dtype=float16", "float32"),
])
def test_bad_raw_requests_are_400(server, data, query, message):
    query, _, dtype = query.partition(";")
    answer = requests.post(f"{server}/search{query}", data=data, timeout=10,
                           headers={**auth(), "Content-Type": f"application/octet-stream;{dtype}"})
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_oversized_body_is_413_and_unknown_routes_404(server):
    huge = b"0" * (default_body_cap(DIM) + 4)
    answer = requests.post(f"{server}/search", data=huge, timeout=30,
                           headers={**auth(), "Content-Type": "application/octet-stream"})
    assert answer.status_code == 413 and "error" in answer.json()
    for path in ("/nope", "/clips/-1", "/clips/abc", f"/clips/{2 ** 63}", f"/clips/{10 ** 40}"):
        answer = requests.get(f"{server}{path}", headers=auth(), timeout=10)
        assert answer.status_code == 404 and "error" in answer.json()
    assert requests.get(f"{server}/search", headers=auth(), timeout=10).status_code == 405
    assert requests.get(f"{server}/healthz", timeout=10).status_code == 200  # still serving


def test_concurrent_burst_has_no_error(server, collection):
    _, vectors = collection

    def one(number):
        answer = requests.post(f"{server}/search", json={"vectors": [vectors[number].tolist()],
                                                         "k": 3}, headers=auth(), timeout=30)
        return answer.status_code, answer.json()["results"][0][0]["id"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(one, range(200)))
    assert outcomes == [(200, number) for number in range(200)]


def query(*args):
    return CliRunner().invoke(main, ["index-query", *map(str, args)])


def test_index_query_by_clip_and_every_clip(server, collection):
    folder, _ = collection
    result = query(folder / "video1.npy", 7, "--url", server, "--token", TOKEN, "--k", 3)
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    assert len(answers) == 1 and answers[0]["query"]["clip"] == 7
    assert answers[0]["results"][0]["id"] == 127 and len(answers[0]["results"]) == 3
    result = query(folder / "video0.npy", "--url", server, "--token", TOKEN, "--k", 1)
    assert [a["results"][0]["id"] for a in json.loads(result.stdout)] == list(range(120))
    table = query(folder / "video1.npy", 7, "--url", server, "--token", TOKEN, "--format", "table")
    assert table.exit_code == 0 and "/videos/video1.mp4" in table.stdout
    assert re.search(r"^\s+1\s+127\s+0\.0000\s+7\s+3\.50-4\.00", table.stdout, re.M)


def test_index_query_errors_are_one_line(server, collection, tmp_path):
    folder, _ = collection
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    write(tmp_path, "wide", clustered(2, DIM + 1, 3))
    cases = [
        ([folder / "video1.npy", 0, "--port", port], "cannot reach"),
        ([folder / "video1.npy", 0, "--port", silent.getsockname()[1], "--timeout", "0.5"],
         "did not answer"),
        ([folder / "video1.npy", 0, "--url", server], "401"),
        ([folder / "video1.npy", 999, "--url", server, "--token", TOKEN], "clip 999 does not"),
        ([tmp_path / "wide.npy", "--url", server, "--token", TOKEN], "17-d features"),
    ]
    try:
        for args, message in cases:
            result = query(*args)
            assert result.exit_code == 2 and message in result.stderr, result.output
            assert result.stderr.count("\n") == 1 and result.stdout == ""
    finally:
        silent.close()


def test_index_serve_command_with_env_port_and_token(collection):
    folder, vectors = collection
    process, url = start_server([sys.executable, "-m", "ig65m", "index-serve", str(folder / "idx")],
                                env={"IG65M_PORT": "0", "IG65M_TOKEN": TOKEN})
    try:
        assert requests.get(f"{url}/clips/5", timeout=10).status_code == 401
        answer = requests.get(f"{url}/clips/5", headers=auth(), timeout=10)
        assert answer.status_code == 200 and answer.json()["clip"] == 5
        assert "s3cret" not in " ".join(open(f"/proc/{process.pid}/cmdline").read().split("\0"))
    finally:
        stop(process)
    assert process.returncode == 0  # SIGTERM handled: `docker stop` works with the server as PID 1
    bad = subprocess.run([sys.executable, "-m", "ig65m", "index-serve", str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "not an index" in bad.stderr


def test_openmp_threads_share_the_cores_between_workers():
    assert omp_threads_for(4, cores=2) == 1
    assert omp_threads_for(1, cores=8) == 8
    assert omp_threads_for(3, cores=8) == 2


def test_vectors_faiss_cannot_use_are_named_and_the_rest_pass_without_warnings():
    """The check's fast path (one dot product over all rows) must let through rows whose squares
    only overflow float32 summed over all rows, and name the first row holding NaN, infinity, or
    values whose squared length overflows float32 (Faiss would find nothing for it)."""
    vectors = np.full((3, DIM), 0.5, "<f4")
    vectors[:] = np.sqrt(2e38 / DIM)  # each row's squared length 2e38 (float32 max: 3.4e38)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_raw(vectors.tobytes(), {}, DIM).vectors.tolist() == vectors.tolist()
        for bad in (np.nan, np.inf, -np.inf, 1e30):
            vectors[2, 5] = bad
            with pytest.raises(BadRequest, match="vector 2 holds NaN, infinity or numbers too "
                                                 "large for float32"):
                parse_raw(vectors.tobytes(), {}, DIM)


def upload_features(url, vectors, sidecar):
    """POST /search/video with a features .npy and a sidecar (bytes) -> the response."""
    npy = io.BytesIO()
    np.save(npy, np.asarray(vectors, np.float32))
    files = {"features": ("q.npy", npy.getvalue()), "sidecar": ("q.json", sidecar)}
    return requests.post(f"{url}/search/video", files=files, headers=auth(), timeout=30)


def test_a_sidecar_nested_too_deep_is_400(server, collection):
    answer = upload_features(server, collection[1][:1], b"[" * 100000)  # was a 500 RecursionError
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    assert upload_features(server, collection[1][:1], b'{"clips": [[0, 1]]}').status_code == 200


def test_uploaded_features_extracted_otherwise_are_refused_as_index_query_refuses_them(tmp_path):
    # index-query refused features from other weights or frame size; the same pair uploaded to
    # POST /search/video was searched (200), finding meaningless neighbours
    vectors = clustered(20, DIM, 3)
    settings = {"weights_sha256": "ab" * 32, "frame_size": 112, "clip_frames": 8}
    write(tmp_path, "video0", vectors, **settings)
    build_index([tmp_path / "video0.npy"], tmp_path / "idx", progress=False)
    process, url = start_server([sys.executable, "-m", "ig65m", "index-serve", str(tmp_path / "idx"),
                                 "--port", "0"], env={"IG65M_TOKEN": TOKEN})
    try:
        for key, value, said in [("frame_size", 32, "frame_size 32, the index with frame_size 112"),
                                 ("weights_sha256", "cd" * 32, "weights sha256 cdcdcdcdcdcd")]:
            sidecar = json.dumps({"model": "m", "clips": [[0, 1]], **settings, key: value})
            answer = upload_features(url, vectors[:1], sidecar.encode())
            assert answer.status_code == 400 and said in answer.json()["error"], answer.text
        same = json.dumps({"model": "m", "clips": [[0, 1]], **settings}).encode()
        assert upload_features(url, vectors[:1], same).status_code == 200
    finally:
        stop(process)


@pytest.mark.parametrize("options, said", [
    ({"exclude_own": "false"}, '"exclude_own" must be true or false'),  # excluded the video
    ({"exclude_own": 1}, '"exclude_own" must be true or false'),
    ({"k": 2.5}, '"k" must be an integer'),  # asked for 2 videos
    ({"k": "3"}, '"k" must be an integer'),
    ({"nprobe": 1.5}, '"nprobe" must be an integer'),
])
def test_clip_search_options_of_the_wrong_json_type_are_400(server, options, said):
    answer = requests.post(f"{server}/search/clip", json={"id": 3, **options}, headers=auth(),
                           timeout=10)
    assert answer.status_code == 400 and said in answer.json()["error"], answer.text
    for good in ({"exclude_own": False, "k": 2}, {"exclude_own": None, "nprobe": 4}):
        assert requests.post(f"{server}/search/clip", json={"id": 3, **good}, headers=auth(),
                             timeout=10).status_code == 200


def test_thumbnail_of_a_file_without_a_video_stream_is_404(tmp_path):
    # the recorded video replaced by a sound file: frame_at took streams.video[0], a 500 IndexError
    import av

    with av.open(str(tmp_path / "sound.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for number in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 8000, number * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    write(tmp_path, "sound", clustered(2, DIM, 1), source=str(tmp_path / "sound.mp4"))
    build_index([tmp_path / "sound.npy"], tmp_path / "idx", progress=False)
    process, url = start_server([sys.executable, "-m", "ig65m", "index-serve", str(tmp_path / "idx"),
                                 "--port", "0"])
    try:
        answer = requests.get(f"{url}/thumbs/1", timeout=30)
        assert answer.status_code == 404 and "cannot make a thumbnail" in answer.json()["error"]
        assert requests.get(f"{url}/media/1", timeout=30).status_code == 200
    finally:
        stop(process)


def test_a_multipart_form_that_cannot_be_read_is_said_so(server, collection):
    # werkzeug drops the whole form when a part's headers are not UTF-8 (a Latin-1 file name):
    # the answer asked for a multipart form with a 'features' file, which this one has
    npy = io.BytesIO()
    np.save(npy, collection[1][:1].astype(np.float32))
    body = (b'--XyZ\r\nContent-Disposition: form-data; name="features"; filename="caf\xe9.npy"'
            b"\r\n\r\n" + npy.getvalue() + b"\r\n--XyZ--\r\n")
    headers = {**auth(), "Content-Type": "multipart/form-data; boundary=XyZ"}
    answer = requests.post(f"{server}/search/video", data=body, headers=headers, timeout=30)
    assert answer.status_code == 400 and "not UTF-8" in answer.json()["error"], answer.text
    utf8 = body.replace(b"caf\xe9", "café".encode())
    assert requests.post(f"{server}/search/video", data=utf8, headers=headers,
                         timeout=30).status_code == 200


def test_nan_outside_the_vectors_is_not_said_to_be_in_them(server):
    # "min_score": NaN answered 'NaN is not allowed in vectors', with finite vectors
    body = b'{"vectors": [[' + b",".join([b"0.5"] * DIM) + b']], "group_by": "video", "min_score": NaN}'
    for path in ("/search", "/search?x=1"):  # the front's and the Flask route's
        answer = requests.post(f"{server}{path}", data=body, timeout=10,
                               headers={**auth(), "Content-Type": "application/json"})
        assert answer.status_code == 400
        assert answer.json()["error"] == "NaN is not allowed in a JSON request: use finite numbers"
