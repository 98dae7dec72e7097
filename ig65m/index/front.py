"""The front of a server process: one event loop that owns the listening socket and every new
connection, answers `POST /search` itself, and hands every other connection to waitress.

Why a loop of our own: behind waitress a raw single query cost 680-730 µs of server CPU, of which
Faiss took about 250; the rest was waitress's parser, task and buffers and the hand-offs between
its event thread and its worker threads. This loop's own Python is about 20 µs a raw search (28 µs
with a 9 µs search, through a socket pair). On a 200-clip index one sequential client gets its
answers in 104 µs p50, and the server uses 107 µs of CPU a request, its system calls and BUSY_POLL
included (session 5's front: 207 µs and 163 µs). It batches what the sockets bring: every search
request that is complete after one poll of the sockets goes to Faiss in one call per (k, breadth),
at most `max_rows` rows a call (so a batched query takes the same exact-distance code as one
searched alone, see batching.py). Under load the next poll finds the requests that arrived during a
search, so batches grow with the load; only when the last batch held more than one request does the
loop poll on, for up to `batch_window` seconds or until as many requests as then are in, so a lone
request never waits. (Waiting for a full batch of `max_rows` instead held every batch the whole
window whenever fewer clients than that were searching: 8 clients got 3,300 queries/s where no
window gave 5,600.)

A request is the front's when it is `POST /search` over HTTP/1.0 or 1.1 with a Content-Length and
no Transfer-Encoding or Expect header (nor Origin when the server answers CORS: the Flask route adds
its headers), and its body is either raw float32 (`Content-Type: application/octet-stream`, no
parameters, at most `max_rows` vectors, options in the query string, each once: k, nprobe, format,
group_by, min_score, exclude) or JSON (`Content-Type: application/json`, at most the bytes of
`max_rows` vectors written out; a longer one searches alone).
Anything else, at the first byte that shows it (the page, uploads, media, `/healthz`, a malformed
or unusual request), moves the connection and every byte of it not yet answered to
waitress, once the front's answers on it are sent, so answers keep their order. Both paths parse
and answer with the same functions (`protocol.py`, `server.search_answer`), so they give the same
answers and errors.

The loop closes connections idle for `idle_timeout` seconds (a client that stops mid-request holds
no thread, only its buffered bytes, at most one head and one body), stops accepting at
`max_connections` (its own and waitress's together), stops reading a connection while its answers
wait to be sent, and writes one access-log line per request like `middleware.AccessLog`.
"""

import logging
import multiprocessing
import selectors
import socket
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import parse_qsl

import faiss
import orjson
from werkzeug.exceptions import HTTPException

from ig65m.index.batching import default_max_rows, search_together
from ig65m.index.middleware import write_access_line
from ig65m.index.protocol import (JSON_NUMBER_BYTES, JSON_OPTIONS, check_token, parse_json,
                                  parse_raw)

RAW_PARAMS = frozenset({"k", "nprobe", "format", "group_by", "min_score", "exclude"})
PREFIX = b"POST /search"
MAX_HEAD = 16384  # bytes of request line and headers the front reads before it gives up the request
RECV_BYTES = 262144
HANDOFF_HEADERS = frozenset({b"transfer-encoding", b"expect"})
RAW, JSON = b"application/octet-stream", b"application/json"
_STATUS = {status.value: f" {status.value} {status.phrase}".encode() for status in HTTPStatus}
HEAD_CACHE = 256  # request heads remembered, parsed (see Front._head)
# After it answers, the loop polls its sockets without sleeping for this long: a client's next
# request on a kept connection often comes sooner, and waking a sleeping process costs tens of us
# on a VM (the hypervisor delivers the wake-up): -37 us p50 for one sequential client at 1M clips.
BUSY_POLL = 0.0001

log = logging.getLogger("ig65m.index.server")


class Loads:
    """The connections each worker's front holds, in memory shared by the workers (made before
    they are forked), so that only the workers holding fewest accept: connections are kept, so
    whichever worker woke first used to take most of a burst (7 of 8 clients' connections, the
    other worker idle: 0.40x in-process Faiss at 8 clients). A slot whose worker is gone counts
    as full until its replacement joins."""

    GONE = 2**31 - 1

    def __init__(self, workers):
        self.counts = multiprocessing.RawArray("i", [self.GONE] * workers)

    def join(self, slot):
        self.counts[slot] = 0

    def leave(self, slot):
        self.counts[slot] = self.GONE

    def fair(self, slot, count):
        """Record `count` for `slot` -> whether it holds no more than the fewest."""
        self.counts[slot] = count
        return count <= min(self.counts)


class _Connection:
    __slots__ = ("sock", "addr", "inbuf", "outbuf", "last_active", "handoff", "close_after",
                 "events", "pending")

    def __init__(self, sock, addr):
        self.sock, self.addr = sock, addr
        self.inbuf, self.outbuf = bytearray(), bytearray()
        self.last_active = time.monotonic()
        self.handoff = self.close_after = False
        self.events = selectors.EVENT_READ
        self.pending = 0  # its requests read and not yet answered


class _Request:
    __slots__ = ("conn", "head", "body", "started")

    def __init__(self, conn, head, body):
        self.conn, self.head, self.body = conn, head, body
        self.started = time.perf_counter()


class Front:
    """Serve `sock` (listening, non-blocking) until the process is stopped: searches over `live`
    (a LiveIndex) here, answered by `answer(searcher, query, distances, ids)` (a JSON object),
    everything else through `handoff(sock, addr, data)`, which takes a connection over with
    `data`, the bytes read from it and not yet answered.
    `other_connections()`: how many connections waitress holds, for the connection limit."""

    def __init__(self, sock, live, handoff, *, answer, token=None, omp_threads=1,
                 batch_window=0.0005, idle_timeout=30.0, max_connections=1000,
                 other_connections=lambda: 0, access_log=True, cors=False, max_rows=None,
                 loads=None):
        self.listener, self.live, self.handoff = sock, live, handoff
        self.loads, self.slot = loads or (None, 0)
        if self.loads is not None:
            self.loads.join(self.slot)
        self.batch_window = batch_window
        self.answer = answer
        self.handoff_headers = HANDOFF_HEADERS | ({b"origin"} if cors else set())
        self.token, self.omp_threads = token, omp_threads
        self.idle_timeout, self.max_connections = idle_timeout, max_connections
        self.other_connections, self.access_log = other_connections, access_log
        self.max_rows = max_rows or default_max_rows()
        self.selector = selectors.DefaultSelector()
        self.connections = {}
        self.accepting = False
        self._date = (0, b"")
        self._heads, self._heads_of = {}, None  # see _head

    def run(self):
        faiss.omp_set_num_threads(self.omp_threads)  # thread-local: this loop runs every search
        next_sweep = time.monotonic() + 1.0
        last_batch, answered = 1, 0.0
        try:
            while True:
                self._accept_within_limit()
                ready = []
                if time.perf_counter() - answered < BUSY_POLL:
                    timeout = 0
                else:  # a worker left out by Loads looks again soon: the others may catch up
                    timeout = 1.0 if self.accepting or self.loads is None else 0.01
                self._poll(timeout, ready)
                if ready and last_batch > 1 and self.batch_window > 0:  # under load: wait for more
                    deadline, wanted = time.monotonic() + self.batch_window, last_batch
                    while len(ready) < wanted and (left := deadline - time.monotonic()) > 0:
                        self._poll(left, ready)
                if ready:
                    last_batch = len(ready)
                    self._answer(ready)
                    answered = time.perf_counter()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + 1.0
                    self._sweep()
        finally:
            self.close()

    def _poll(self, timeout, ready):
        """Wait at most `timeout` seconds for sockets, and serve them: complete search requests
        go to `ready`."""
        for key, events in self.selector.select(timeout=timeout):
            if key.fileobj is self.listener:
                self._accept()
            elif events & selectors.EVENT_WRITE:
                self._flush(key.data)
            else:
                self._read(key.data, ready)

    def close(self):
        for conn in list(self.connections.values()):
            self._close(conn)
        self.selector.close()

    # connections

    def _accept_within_limit(self):
        room = len(self.connections) + self.other_connections() < self.max_connections
        if self.loads is not None:
            room = self.loads.fair(self.slot, len(self.connections)) and room
        if room != self.accepting:
            (self.selector.register if room else self.selector.unregister)(
                *((self.listener, selectors.EVENT_READ) if room else (self.listener,)))
            self.accepting = room

    def _accept(self):
        """One connection a poll, so that the worker holding fewest takes the next (see Loads)."""
        try:
            sock, addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:  # e.g. out of file descriptors: try again on the next poll
            log.warning("accept failed: %s", err)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(sock, addr)
        self.connections[sock.fileno()] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn):
        self.connections.pop(conn.sock.fileno(), None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _give_up(self, conn):
        """Hand `conn` to waitress with its unanswered bytes; it is no longer the front's."""
        self.connections.pop(conn.sock.fileno(), None)
        self.selector.unregister(conn.sock)
        self.handoff(conn.sock, conn.addr, bytes(conn.inbuf))

    def _sweep(self):
        idle_since = time.monotonic() - self.idle_timeout
        for conn in [c for c in self.connections.values() if c.last_active < idle_since]:
            self._close(conn)

    def _read(self, conn, ready):
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.last_active = time.monotonic()
        conn.inbuf += data
        self._parse(conn, ready)
        if conn.handoff and not conn.outbuf and not conn.pending:  # else once answers are sent
            self._give_up(conn)

    def _flush(self, conn):
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        del conn.outbuf[:sent]
        conn.last_active = time.monotonic()
        if conn.outbuf:
            self._watch(conn, selectors.EVENT_WRITE)
        elif conn.close_after:
            self._close(conn)
        elif conn.handoff and not conn.pending:
            self._give_up(conn)
        else:  # answers sent: read the next requests (none are read while answers wait)
            self._watch(conn, selectors.EVENT_READ)

    def _watch(self, conn, events):
        if conn.events != events:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events

    # requests

    def _parse(self, conn, ready):
        """Take every complete request of the front's from `conn.inbuf` into `ready`; at the first
        that is not the front's, mark the connection for waitress."""
        buf = conn.inbuf
        while buf and not conn.handoff:
            if not buf.startswith(PREFIX[:len(buf)]):
                conn.handoff = True
                break
            head_end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
            if head_end < 0:  # incomplete, unless too long or ended by bare line feeds
                conn.handoff = len(buf) >= MAX_HEAD or b"\n\n" in buf
                break
            head = self._head(bytes(buf[:head_end]))
            if head is None:
                conn.handoff = True
                break
            end = head_end + 4 + head.length
            if len(buf) < end:
                break  # the body is on its way
            request = _Request(conn, head, bytes(buf[head_end + 4:end]))
            del buf[:end]
            ready.append(request)
            conn.pending += 1
            if not head.keep_alive:
                del buf[:]
                break

    def _head(self, head):
        """_read_head of a request head, remembered: a client sends the same head again and again
        (only its body changes), and reading it cost a sixth of the front's own time. Heads are
        kept for the index now (a body's cap depends on its dimension), HEAD_CACHE at most."""
        current = self.live.current
        if self._heads_of is not current or len(self._heads) >= HEAD_CACHE:
            self._heads, self._heads_of = {}, current
        found = self._heads.get(head, False)
        if found is False:
            found = self._heads[head] = _read_head(head, current.dimension, self.max_rows,
                                                   self.handoff_headers)
        return found

    def _answer(self, ready):
        """Search every request of `ready` (batched) and queue its answer on its connection."""
        current = self.live.current  # one index for the whole batch, even across a reload
        queries, answers = {}, {}
        for request in ready:
            try:
                check_token(request.head.authorization, self.token)
                if request.head.params is None:
                    query = parse_json(request.body, current.dimension)
                else:
                    query = parse_raw(request.body, request.head.params, current.dimension)
            except HTTPException as err:
                answers[request] = _error(err)
                continue
            queries.setdefault((query.k, query.breadth), []).append((request, query))
        for (k, breadth), group in queries.items():
            for batch in _batches(group, self.max_rows):
                self._search(current, batch, k, breadth, answers)
        for request in ready:
            self._queue(request, *answers[request])
        for conn in {request.conn for request in ready}:  # once all its answers are queued
            if conn.sock.fileno() >= 0:
                self._flush(conn)

    def _search(self, current, group, k, breadth, answers):
        try:
            found = search_together(current, [query.vectors for _, query in group], k, breadth)
        except Exception as err:
            for request, _ in group:
                answers[request] = _failure(err)
            return
        for (request, query), (distances, ids) in zip(group, found):
            try:
                payload = self.answer(current, query, distances, ids)
                answers[request] = (200, orjson.dumps(payload, option=JSON_OPTIONS), ())
            except HTTPException as err:  # e.g. a bad group_by or min_score
                answers[request] = _error(err)
            except Exception as err:
                answers[request] = _failure(err)

    def _queue(self, request, status, body, extra):
        conn = request.conn
        conn.pending -= 1
        if conn.sock.fileno() < 0:
            return  # closed meanwhile
        version, keep_alive = request.head.version, request.head.keep_alive
        head = [version + _STATUS[status], b"Date: " + self._http_date(),
                b"Content-Type: application/json", b"Content-Length: %d" % len(body), *extra]
        if not keep_alive:
            head.append(b"Connection: close")
            conn.close_after = True
        elif version == b"HTTP/1.0":
            head.append(b"Connection: keep-alive")
        conn.outbuf += b"\r\n".join(head) + b"\r\n\r\n" + body
        if self.access_log:
            write_access_line(conn.addr[0], "POST", request.head.target, status, len(body),
                              (time.perf_counter() - request.started) * 1000)

    def _http_date(self):
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]


class _Head(NamedTuple):
    """What the front needs of a request head it answers."""

    length: int  # of the body
    target: str
    params: Mapping | None  # a raw search's query-string options; None for a JSON body
    authorization: str
    keep_alive: bool
    version: bytes


def _read_head(head, dimension, max_rows, handoff_headers):
    """The _Head of a request head (its bytes before the blank line) that the front answers, else
    None (waitress then answers it)."""
    lines = head.split(b"\r\n")
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        return None  # a bare CR or LF: waitress refuses it
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    path, _, query = parts[1].partition(b"?")
    if path != b"/search":
        return None
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        name = name.lower()
        if not colon or not name or name != name.strip() or name in headers:
            return None  # folded, malformed or repeated: waitress decides
        headers[name] = value.strip()
    if not headers.keys().isdisjoint(handoff_headers):
        return None
    kind = headers.get(b"content-type", b"").lower()
    if kind == RAW:  # options in the query string
        cap, params = max_rows * 4 * dimension, _query_params(query)
        if params is None:
            return None
    elif kind == JSON and not query:  # options in the body
        cap, params = max_rows * dimension * JSON_NUMBER_BYTES, None
    else:
        return None
    length = headers.get(b"content-length", b"")
    if not length.isdigit() or int(length) > cap:
        return None
    connection = headers.get(b"connection", b"").lower()
    version = parts[2]
    keep_alive = (connection != b"close" if version == b"HTTP/1.1"
                  else connection == b"keep-alive")
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    target = parts[1].decode("ascii", "backslashreplace")
    return _Head(int(length), target, params, authorization, keep_alive, version)


def _query_params(query):
    """The options of a raw search's query string -> a mapping, or None when they are not all the
    front's or one is repeated (Flask's route then decides)."""
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError:
        return None
    params = dict(pairs)
    if len(params) != len(pairs) or not params.keys() <= RAW_PARAMS:
        return None
    return MappingProxyType(params)  # read only: the head, and so these, may be used again


def _batches(group, max_rows):
    """[(request, query)] cut, in order, into batches of at most `max_rows` vectors."""
    batch, rows = [], 0
    for item in group:
        count = len(item[1].vectors)
        if batch and rows + count > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(item)
        rows += count
    if batch:
        yield batch


def _failure(err):
    """A bug: logged, and answered like Flask's error handler answers it."""
    log.exception("internal error")
    return 500, orjson.dumps({"error": f"internal error: {type(err).__name__}"}), ()


def _error(err):
    extra = (b"WWW-Authenticate: Bearer",) if err.code == 401 else ()
    return err.code, orjson.dumps({"error": err.description}), extra
