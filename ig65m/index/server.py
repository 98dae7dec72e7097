"""The HTTP + JSON search service, started by `serve`: one process, or `workers` pre-forked
processes sharing the memory-mapped index. In each, the front (`front.py`) owns the connections
and answers raw float32 searches itself; it hands every other connection to waitress, which serves
the Flask app of `create_app` from its threads.

Routes: `GET /healthz`, `POST /search` (JSON `{"vectors": [[...]], "k": 10, "nprobe": 16}` or a raw
little-endian float32 body with `?k=&nprobe=`; `format` "compact" answers ids and distances only),
`GET /clips/<id>`, `POST /reload`. Every bad request answers a 4xx with `{"error": "..."}`; a 500
would be a bug.
"""

import functools
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field

import faiss
import orjson
import waitress
import waitress.channel
import waitress.task
from flask import Flask, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import Conflict, HTTPException, NotFound

from ig65m.errors import Ig65mError
from ig65m.index import web
from ig65m.index.batching import Batcher
from ig65m.index.front import Front, Loads
from ig65m.index.live import LiveIndex
from ig65m.index.middleware import AccessLog, Cors, write_line
from ig65m.index.prefork import Master
from ig65m.index.protocol import (  # noqa: F401 (MAX_K, MAX_VECTORS: the server's limits, imported from here)
    JSON_OPTIONS, MAX_K, MAX_VECTORS, answer, check_token, default_body_cap, parse_search)

log = logging.getLogger("ig65m.index.server")


def omp_threads_for(workers, cores=None):
    """OpenMP threads per worker process so that the workers' searches fill, not oversubscribe,
    the cores (a process runs one Faiss call at a time: the batcher's)."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, workers))


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON answers through orjson (numpy arrays included): 5-10x faster encoding."""

    options = JSON_OPTIONS

    def dumps(self, obj, **kwargs):
        return orjson.dumps(obj, default=self.default, option=self.options).decode()

    def response(self, *args, **kwargs):
        body = orjson.dumps(self._prepare_response_obj(args, kwargs), default=self.default,
                            option=self.options)
        return self._app.response_class(body, mimetype=self.mimetype)


def create_app(index_dir=None, *, searcher=None, live=None, token=None, omp_threads=1,
               max_body=None, batch_window=0.0005, cors_origins=(), access_log=False,
               on_reload=None, web_options=None):
    """The Flask app serving `index_dir` (or a `LiveIndex`, or one loaded `searcher`); `token`
    requires `Authorization: Bearer <token>` on every route but /healthz. Concurrent searches are
    batched (`batch_window` seconds at most under load); `on_reload()` runs for POST /reload.
    `web_options`: keyword arguments of `web.make_blueprint` (the search page, media, uploads)."""
    if live is None:
        live = LiveIndex(index_dir, interval=0) if searcher is None else _Fixed(searcher)
    batcher = Batcher(window=batch_window)
    app = Flask(__name__)
    app.json = JSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = max_body or default_body_cap(live.current.dimension)
    app.extensions["ig65m"] = live
    _error_handlers(app)
    app.register_blueprint(web.make_blueprint(lambda: live.current,
                                              index_dir or getattr(live, "index_dir", None), token=token,
                                              **(web_options or {})))

    @app.before_request
    def authorize():
        if request.endpoint != "healthz" and request.endpoint not in web.PUBLIC_ENDPOINTS:
            check_token(request.headers.get("Authorization", ""), token)

    @app.get("/healthz")
    def healthz():
        current = live.current
        manifest = current.manifest
        return app.json.response(
            status="ok", count=current.count, dimension=current.dimension,
            metric=current.metric, index_key=manifest["index_key"], model=manifest.get("model"),
            search_parameter=current.breadth_name, search_default=current.breadth_default,
            extraction=manifest.get("extraction"), worker=os.getpid())

    @app.post("/search")
    def search():
        current = live.current  # one index for the whole request, even across a reload
        query = parse_search(request, current.dimension)
        faiss.omp_set_num_threads(omp_threads)  # per thread: OpenMP settings are thread-local
        distances, ids = batcher.search(current, query.vectors, query.k, query.breadth)
        return app.json.response(search_answer(current, query, distances, ids,
                                               app.extensions["ig65m.signer"]))

    @app.get("/clips/<int:clip_id>")
    def clip(clip_id):
        found = live.current.clip(clip_id)
        if found is None:
            raise NotFound(f"no clip with id {clip_id}")
        return app.json.response(found)

    @app.post("/reload")
    def reload():
        try:
            reloaded = (on_reload or live.reload)()
        except Ig65mError as err:
            raise Conflict(f"keeping the loaded index: {err}") from None
        return app.json.response(reloaded=bool(reloaded), count=live.current.count)

    app.wsgi_app = Cors(app.wsgi_app, cors_origins) if cors_origins else app.wsgi_app
    if access_log:
        app.wsgi_app = AccessLog(app.wsgi_app)
    return app


def search_answer(current, query, distances, ids, signer):
    """The JSON object answering a /search `query` (the Flask route's and the front's): grouped by
    video when it asks (`group_by`, see web.group_results; `signer` makes its media URLs), else
    protocol.answer's."""
    if query.params.get("group_by") is not None:
        return web.group_results(current, distances, ids, query.params, signer)
    return answer(current, query, distances, ids)


class _Fixed:
    """A LiveIndex that never changes: a searcher given to create_app."""

    def __init__(self, searcher):
        self.current = searcher

    def reload(self):
        return False


def _error_handlers(app):
    @app.errorhandler(HTTPException)
    def http_error(err):
        response = app.json.response(error=err.description)
        response.status_code = err.code
        if err.code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.errorhandler(Exception)
    def bug(err):
        log.exception("internal error")
        response = app.json.response(error=f"internal error: {type(err).__name__}")
        response.status_code = 500
        return response


@dataclass
class ServeOptions:
    """Everything `serve` needs besides the index; the defaults are index-serve's."""

    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    threads: int = 4
    token: str | None = None
    omp_threads: int | None = None
    batch_window_ms: float = 0.5
    reload_interval: float = 1.0
    max_connections: int = 1000
    idle_timeout: float = 30.0
    cors_origins: tuple = ()
    access_log: bool = True
    web_options: dict = field(default_factory=dict)  # the page's: see web.make_blueprint

    def __post_init__(self):
        if self.token is not None and not self.token.strip():  # e.g. `--token "$UNSET"`
            raise Ig65mError("--token is empty: give the token clients must send, or leave it out")


def listen(host, port):
    """A listening TCP socket on host:port; Ig65mError (one line) when that cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except (OSError, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise Ig65mError(f"cannot listen on {host}:{port} ({reason})") from None
    sock.setblocking(False)
    return sock


def serve(index_dir, options=None):
    """Serve `index_dir` until SIGTERM/SIGINT: the index is loaded and checked (errors:
    Ig65mError) before the socket opens; then one worker in this process, or `options.workers`
    forked ones."""

    options = options or ServeOptions()
    live = LiveIndex(index_dir, interval=options.reload_interval)  # start-up checks, one line
    _handle_signals(live)  # before the address is printed: a SIGHUP after it must not kill
    sock = listen(options.host, options.port)
    host, port = sock.getsockname()[:2]
    omp = options.omp_threads or omp_threads_for(options.workers)
    print(f"serving {index_dir} on http://{host}:{port} ({options.workers} workers x "
          f"{options.threads} threads x {omp} OpenMP)", file=sys.stderr, flush=True)
    if options.workers == 1:
        _run_worker(sock, options, omp, live, master=None)
        return
    master = os.getpid()
    loads = Loads(options.workers)
    # workers are forked with the index loaded here: they share its mapped pages and metadata
    Master(options.workers,
           lambda slot: _run_worker(sock, options, omp, live, master=master, loads=(loads, slot)),
           before_restart=lambda: _reload_quietly(live), on_exit=loads.leave).run()


def _reload_quietly(live):
    """Bring the master's index up to date, so that a replacement worker starts current."""
    try:
        live.reload()
    except Ig65mError as err:
        write_line(f"warning: keeping the loaded index: {err}")


def _run_worker(sock, options, omp, live, master=None, loads=None):
    def reload_all():  # with workers, the master passes SIGHUP on to every one of them
        if master is not None:
            os.kill(master, signal.SIGHUP)
        return live.reload()

    _handle_signals(live)  # first: a worker's SIGHUP is ignored only until here (prefork._child)
    app = create_app(live=live, token=options.token, omp_threads=omp,
                     batch_window=options.batch_window_ms / 1000, cors_origins=options.cors_origins,
                     access_log=options.access_log, on_reload=reload_all,
                     web_options=options.web_options)
    # Waitress accepts nothing itself (`_start=False`): the front hands it connections. Its body
    # cap is twice Flask's, so Flask (not waitress) answers oversized bodies, with a JSON 413.
    server = waitress.create_server(
        app, sockets=[sock.dup()], _start=False, threads=options.threads, ident="ig65m",
        max_request_body_size=2 * max(app.config["MAX_CONTENT_LENGTH"],
                                      app.config["MAX_UPLOAD_BYTES"]),
        connection_limit=options.max_connections, channel_timeout=options.idle_timeout,
        cleanup_interval=max(1, min(30, int(options.idle_timeout / 2))), asyncore_use_poll=True)
    server.channel_class = _JsonErrorChannel  # the class _adopt makes channels of
    front = Front(sock, live, lambda conn, addr, data: _adopt(server, conn, addr, data),
                  answer=functools.partial(search_answer, signer=app.extensions["ig65m.signer"]),
                  token=options.token,
                  omp_threads=omp, batch_window=options.batch_window_ms / 1000,
                  idle_timeout=options.idle_timeout,
                  max_connections=options.max_connections,
                  other_connections=lambda: len(server._map) - 2,  # less its socket and trigger
                  access_log=options.access_log, cors=bool(options.cors_origins), loads=loads)
    live.watch()
    threading.Thread(target=server.run, name="waitress", daemon=True).start()
    if master is not None:
        write_line(f"worker {os.getpid()} ready")
    try:
        front.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.task_dispatcher.shutdown()  # lets running requests end (5 s at most)


class _JsonErrorTask(waitress.task.ErrorTask):
    """waitress's own answer to a request it cannot parse (a bad request line, header, URI or
    Content-Length, a bad chunk, a body beyond its cap) as JSON {"error"}, like every other error:
    it answered text/plain."""

    def execute(self):
        error = self.request.error
        body = orjson.dumps({"error": f"{error.reason}: {error.body}"})
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JsonErrorChannel(waitress.channel.HTTPChannel):
    error_task_class = _JsonErrorTask


def _adopt(server, sock, addr, data):
    """Give waitress a connection of the front's with `data`, its bytes not yet answered: a
    channel is made in waitress's own thread (woken by its trigger), as if it had accepted it."""
    def adopt():
        channel = server.channel_class(server, sock, addr, server.adj, map=server._map)
        channel.received(data)
    server.trigger.pull_trigger(adopt)


def _handle_signals(live):
    """SIGTERM exits cleanly (as PID 1 of a container, `docker stop`, it is ignored otherwise);
    SIGHUP checks the index for a change at once."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        signal.signal(signal.SIGHUP, _not_nested(live.check_now))


def _not_nested(action):
    """A signal handler running `action()`, except in a handler that interrupts its own run:
    Python runs a handler between two bytecodes of the main thread, so a SIGHUP arriving while the
    last one's `Event.set` holds its lock ran it again, which waited for that lock forever (a
    storm of SIGHUPs froze the worker's front). The interrupted run sets the event anyway."""
    running = [False]

    def handler(signum, frame):
        if running[0]:
            return
        running[0] = True
        try:
            action()
        finally:
            running[0] = False
    return handler

