"""WSGI layers around the search app: one access-log line per request, optional CORS."""

import os
import time


def write_line(text, fd=2):
    """`text` and a line feed on stderr with one `write` call, so that the lines of several
    threads or workers never interleave (print writes the text and its line feed apart)."""
    try:
        os.write(fd, f"{text}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass  # a closed stderr must not fail the request


def write_access_line(client, method, target, status, length, milliseconds, fd=2):
    """One access-log line: client, request line, status, body bytes, milliseconds, pid."""
    write_line(f'{client} "{method} {target!s:.300}" {status} {length} {milliseconds:.2f}ms '
               f'pid={os.getpid()}', fd)


class AccessLog:
    """One line per request on stderr (`write_access_line`), for the requests of the WSGI app."""

    def __init__(self, app, fd=2):
        self.app = app
        self.fd = fd

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        seen = {}

        def start(status, headers, exc_info=None):
            seen["status"] = status.split(" ", 1)[0]
            seen["length"] = next((v for k, v in headers if k.lower() == "content-length"), "-")
            return start_response(status, headers, exc_info)

        body = self.app(environ, start)
        query = environ.get("QUERY_STRING")
        target = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
        write_access_line(environ.get("REMOTE_ADDR", "-"), environ.get("REQUEST_METHOD"), target,
                          seen.get("status", "-"), seen.get("length", "-"),
                          (time.perf_counter() - started) * 1000, self.fd)
        return body


class Cors:
    """Cross-origin access for `origins` ("*" for any): the Access-Control-Allow-Origin header on
    answers, and preflight OPTIONS answered here (a browser sends no token with a preflight)."""

    ALLOW_HEADERS = "Authorization, Content-Type"
    ALLOW_METHODS = "GET, POST, OPTIONS"

    def __init__(self, app, origins):
        self.app = app
        self.origins = frozenset(origins)

    def _allowed(self, origin):
        if not origin:
            return None
        if "*" in self.origins:
            return "*"
        return origin if origin in self.origins else None

    def __call__(self, environ, start_response):
        allowed = self._allowed(environ.get("HTTP_ORIGIN"))
        if allowed is None:
            return self.app(environ, start_response)
        extra = [("Access-Control-Allow-Origin", allowed), ("Vary", "Origin")]
        if (environ.get("REQUEST_METHOD") == "OPTIONS"
                and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ):
            start_response("204 No Content", extra + [
                ("Access-Control-Allow-Methods", self.ALLOW_METHODS),
                ("Access-Control-Allow-Headers", self.ALLOW_HEADERS),
                ("Access-Control-Max-Age", "600"), ("Content-Length", "0")])
            return [b""]

        def start(status, headers, exc_info=None):
            return start_response(status, list(headers) + extra, exc_info)

        return self.app(environ, start)
