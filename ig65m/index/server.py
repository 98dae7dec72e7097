"""The HTTP + JSON search service: a Flask app from `create_app`, served by waitress from `serve`.

Routes: `GET /healthz`, `POST /search` (JSON `{"vectors": [[...]], "k": 10, "nprobe": 16}` or a raw
little-endian float32 body with `?k=&nprobe=`), `GET /clips/<id>`. Every bad request answers a
4xx with `{"error": "..."}`; a 500 would be a bug.
"""

import hmac
import json
import logging
import os
import signal
import sys
import threading

import faiss
import numpy as np
from flask import Flask, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, NotFound, Unauthorized

from ig65m.defaults import MAX_K, MAX_VECTORS
from ig65m.index.search import Searcher

MAX_BREADTH = 65536

log = logging.getLogger("ig65m.index.server")


def default_body_cap(dimension, max_vectors=MAX_VECTORS):
    """Bytes allowed in a request: `max_vectors` vectors written as JSON (~24 chars a number)."""
    return max(1 << 20, max_vectors * dimension * 24 + 65536)


def omp_threads_for(server_threads, cores=None):
    """OpenMP threads per request so that `server_threads` concurrent searches fill, not
    oversubscribe, the cores."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, server_threads))


def create_app(index_dir=None, *, searcher=None, token=None, omp_threads=1, max_body=None):
    """The Flask app serving `index_dir` (or an already loaded `searcher`); `token` requires
    `Authorization: Bearer <token>` on every route but /healthz."""
    searcher = searcher or Searcher(index_dir)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_body or default_body_cap(searcher.dimension)
    app.json.sort_keys = False

    @app.errorhandler(HTTPException)
    def http_error(err):
        response = jsonify(error=err.description)
        response.status_code = err.code
        if err.code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.errorhandler(Exception)
    def bug(err):
        log.exception("internal error")
        return jsonify(error=f"internal error: {type(err).__name__}"), 500

    @app.before_request
    def authorize():
        if token and request.endpoint != "healthz":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise Unauthorized("missing or wrong bearer token")

    @app.get("/healthz")
    def healthz():
        manifest = searcher.manifest
        return jsonify(status="ok", count=searcher.count, dimension=searcher.dimension,
                       metric=searcher.metric, index_key=manifest["index_key"],
                       model=manifest.get("model"), search_parameter=searcher.breadth_name,
                       search_default=searcher.breadth_default)

    @app.post("/search")
    def search():
        vectors, k, breadth = parse_search(request, searcher.dimension)
        faiss.omp_set_num_threads(omp_threads)  # per worker thread: OpenMP settings are thread-local
        return jsonify(results=searcher.search(vectors, k, breadth))

    @app.get("/clips/<int:clip_id>")
    def clip(clip_id):
        found = searcher.clip(clip_id)
        if found is None:
            raise NotFound(f"no clip with id {clip_id}")
        return jsonify(found)

    return app


def parse_search(req, dimension):
    """A search request -> (vectors float32 (n, dimension), k, breadth or None); BadRequest else."""
    if req.mimetype == "application/octet-stream":
        vectors = _raw_vectors(req.get_data(cache=False), dimension)
        k = _int_arg(req.args.get("k", "10"), "k", 1, MAX_K)
        breadth = req.args.get("nprobe")
        breadth = None if breadth is None else _int_arg(breadth, "nprobe", 1, MAX_BREADTH)
        return vectors, k, breadth
    body = _json_body(req.get_data(cache=False))
    vectors = _json_vectors(body.get("vectors"), dimension)
    k = _int_value(body.get("k", 10), "k", 1, MAX_K)
    breadth = body.get("nprobe")
    breadth = None if breadth is None else _int_value(breadth, "nprobe", 1, MAX_BREADTH)
    return vectors, k, breadth


def _reject_constant(name):
    raise BadRequest(f"{name} is not allowed in vectors: use finite numbers")


def _json_body(data):
    try:
        body = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise BadRequest(f"body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object like {"vectors": [[...]], "k": 10}')
    return body


def _json_vectors(vectors, dimension):
    if not isinstance(vectors, list) or not vectors:
        raise BadRequest('"vectors" must be a non-empty list of lists of numbers')
    _check_count(len(vectors))
    for number, row in enumerate(vectors):
        if not isinstance(row, list) or len(row) != dimension:
            size = len(row) if isinstance(row, list) else type(row).__name__
            raise BadRequest(f"vector {number} must be a list of {dimension} numbers, got {size}")
        if any(type(value) is bool for value in row):
            raise BadRequest(f"vector {number} holds a boolean: use numbers")
    try:
        array = np.array(vectors)
    except (ValueError, TypeError):
        array = None
    if array is None or array.ndim != 2 or array.dtype.kind not in "if":
        raise BadRequest("vectors must hold only numbers")
    return _finite(array.astype(np.float32))


def _raw_vectors(data, dimension):
    row_bytes = 4 * dimension
    if not data or len(data) % row_bytes:
        raise BadRequest(f"raw body must be a whole number of {dimension}-d float32 vectors "
                         f"({row_bytes} bytes each), got {len(data)} bytes")
    _check_count(len(data) // row_bytes)
    return _finite(np.frombuffer(data, dtype="<f4").reshape(-1, dimension).astype(np.float32))


def _check_count(count):
    if count > MAX_VECTORS:
        raise BadRequest(f"at most {MAX_VECTORS} vectors per request, got {count}")


def _finite(vectors):
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise BadRequest(f"vector {int(np.argmax(bad))} holds NaN, infinity or a number too large "
                         "for float32")
    return vectors


def _int_value(value, name, low, high):
    if type(value) is not int or not low <= value <= high:
        raise BadRequest(f'"{name}" must be an integer from {low} to {high}, got {value!r}')
    return value


def _int_arg(text, name, low, high):
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"?{name}= must be an integer, got {text!r}") from None
    return _int_value(value, name, low, high)


def serve(index_dir, *, host="127.0.0.1", port=5000, threads=4, token=None, omp_threads=None):
    """Load `index_dir` and serve it with waitress until interrupted; logs the address to stderr."""
    import waitress

    omp_threads = omp_threads or omp_threads_for(threads)
    app = create_app(index_dir, token=token, omp_threads=omp_threads)
    # twice Flask's cap, so Flask (not waitress) answers oversized bodies, with a JSON 413
    body_cap = 2 * app.config["MAX_CONTENT_LENGTH"]
    server = waitress.create_server(app, host=host, port=port, threads=threads,
                                    max_request_body_size=body_cap, ident="ig65m")
    _exit_on_sigterm()
    print(f"serving {index_dir} on http://{host}:{server.effective_port} "
          f"({threads} threads x {omp_threads} OpenMP)", file=sys.stderr, flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _exit_on_sigterm():
    """Stop cleanly on SIGTERM: as PID 1 of a container (`docker stop`) it is ignored otherwise."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
