"""The HTTP + JSON search service: a Flask app from `create_app`, served by waitress from `serve`.

Routes: `GET /healthz`, `POST /search` (JSON `{"vectors": [[...]], "k": 10, "nprobe": 16}` or a raw
little-endian float32 body with `?k=&nprobe=`), `GET /clips/<id>`. Every bad request answers a
4xx with `{"error": "..."}`; a 500 would be a bug.
"""

import argparse
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

from ig65m.errors import Ig65mError
from ig65m.index import web
from ig65m.index.search import Searcher

MAX_K = 1000
MAX_VECTORS = 1024
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


def create_app(index_dir=None, *, searcher=None, token=None, omp_threads=1, max_body=None,
               web_options=None):
    """The Flask app serving `index_dir` (or an already loaded `searcher`); `token` requires
    `Authorization: Bearer <token>` on every route but /healthz (and the page's, see web.py);
    `web_options`: keyword arguments of `web.make_blueprint` (the search page, media, uploads)."""
    searcher = searcher or Searcher(index_dir)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_body or default_body_cap(searcher.dimension)
    app.json.sort_keys = False
    app.register_blueprint(web.make_blueprint(lambda: searcher, index_dir, token=token,
                                              **(web_options or {})))

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
        if token and request.endpoint != "healthz" and request.endpoint not in web.PUBLIC_ENDPOINTS:
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
        vectors, k, breadth, options = parse_search(request, searcher.dimension)
        faiss.omp_set_num_threads(omp_threads)  # per worker thread: OpenMP settings are thread-local
        results = searcher.search(vectors, k, breadth)
        if options.get("group_by") is not None:
            return jsonify(web.group_results(searcher, results, options))
        return jsonify(results=results)

    @app.get("/clips/<int:clip_id>")
    def clip(clip_id):
        found = searcher.clip(clip_id)
        if found is None:
            raise NotFound(f"no clip with id {clip_id}")
        return jsonify(found)

    return app


def parse_search(req, dimension):
    """A search request -> (vectors float32 (n, dimension), k, breadth or None, the other options:
    the JSON body or the query string); BadRequest else."""
    if req.mimetype == "application/octet-stream":
        vectors = _raw_vectors(req.get_data(cache=False), dimension)
        k = _int_arg(req.args.get("k", "10"), "k", 1, MAX_K)
        breadth = req.args.get("nprobe")
        breadth = None if breadth is None else _int_arg(breadth, "nprobe", 1, MAX_BREADTH)
        return vectors, k, breadth, req.args
    body = _json_body(req.get_data(cache=False))
    vectors = _json_vectors(body.get("vectors"), dimension)
    k = _int_value(body.get("k", 10), "k", 1, MAX_K)
    breadth = body.get("nprobe")
    breadth = None if breadth is None else _int_value(breadth, "nprobe", 1, MAX_BREADTH)
    return vectors, k, breadth, body


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


def serve(index_dir, *, host="127.0.0.1", port=5000, threads=4, token=None, omp_threads=None,
          web_options=None):
    """Load `index_dir` and serve it with waitress until interrupted; logs the address to stderr."""
    import waitress

    omp_threads = omp_threads or omp_threads_for(threads)
    app = create_app(index_dir, token=token, omp_threads=omp_threads, web_options=web_options)
    # twice Flask's caps, so Flask (not waitress) answers oversized bodies, with a JSON 413
    body_cap = 2 * max(app.config["MAX_CONTENT_LENGTH"], app.config["MAX_UPLOAD_BYTES"])
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


def main(argv=None):
    """`python -m ig65m.index.server INDEX_DIR [--host --port --threads --omp-threads]`, the bearer
    token from $IG65M_TOKEN: the lean process `index-serve` hands over to (no torch imported)."""
    parser = argparse.ArgumentParser(prog="ig65m.index.server")
    parser.add_argument("index_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--omp-threads", type=int, default=None)
    web.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        serve(args.index_dir, host=args.host, port=args.port, threads=args.threads,
              token=os.environ.get("IG65M_TOKEN") or None, omp_threads=args.omp_threads,
              web_options=web.options_from(args))
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port} ({err.strerror or err})",
              file=sys.stderr)
        sys.exit(2)
    except Ig65mError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
