"""A small client for the search service; every failure becomes one `Ig65mError` line."""

import contextlib
from pathlib import Path

import numpy as np
import requests

from ig65m.defaults import MAX_VECTORS
from ig65m.errors import Ig65mError
from ig65m.index.vectors import PROBLEM, first_bad_row


class IndexClient:
    """Talks to an `index-serve` at `url` (e.g. http://127.0.0.1:5000), with an optional bearer
    `token`, waiting at most `timeout` seconds for each answer."""

    def __init__(self, url, *, token=None, timeout=30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method, path, **kwargs):
        url = f"{self.url}{path}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.exceptions.Timeout:
            raise Ig65mError(f"index server at {self.url} did not answer within "
                             f"{self.timeout:g} s") from None
        except requests.exceptions.RequestException as err:
            raise Ig65mError(f"cannot reach index server at {self.url} ({_reason(err)})") from None
        if response.status_code != 200:
            raise Ig65mError(f"index server answered {response.status_code} for {path}: "
                             f"{_error_text(response)}")
        try:
            return response.json()
        except ValueError:
            raise Ig65mError(f"index server at {self.url} answered something that is not JSON") from None

    def health(self):
        """{"status", "count", "dimension", "metric", "index_key", "model", ...}"""
        return self._request("GET", "/healthz")

    def clip(self, clip_id):
        """Metadata of one clip: {"id", "path", "clip", "start", "end", "features"}."""
        return self._request("GET", f"/clips/{int(clip_id)}")

    def search(self, vectors, k=10, nprobe=None):
        """Neighbours of each row of `vectors` (n, D) -> n lists of result dicts, nearest first.
        Sent as raw float32, in requests of at most the server's vector limit."""
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused
            vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype="<f4")
        bad = first_bad_row(vectors)
        if bad is not None:
            raise Ig65mError(f"query vector {bad} {PROBLEM}")
        params = {"k": int(k)}
        if nprobe is not None:
            params["nprobe"] = int(nprobe)
        results = []
        for first in range(0, len(vectors), MAX_VECTORS):
            body = vectors[first:first + MAX_VECTORS].tobytes()
            answer = self._request("POST", "/search", params=params, data=body,
                                   headers={"Content-Type": "application/octet-stream"})
            results.extend(answer["results"])
        return results


    def search_upload(self, path, k=10, nprobe=None, min_score=None):
        """Upload a video (extracted by the server's own model), or a features .npy with its
        sidecar, to POST /search/video -> {"videos": [...], "query": {...}} (ig65m.index.grouping)."""
        form = {"k": str(int(k))}
        if nprobe is not None:
            form["nprobe"] = str(int(nprobe))
        if min_score is not None:
            form["min_score"] = str(float(min_score))
        path = Path(path)
        parts = {"features": path, "sidecar": path.with_suffix(".json")} if path.suffix == ".npy" \
            else {"video": path}
        with contextlib.ExitStack() as stack:
            files = {}
            for field, file in parts.items():
                if field == "sidecar" and not file.is_file():
                    continue
                try:
                    files[field] = (file.name, stack.enter_context(open(file, "rb")))
                except OSError as err:
                    raise Ig65mError(f"cannot read {file}: {err.strerror or err}") from None
            return self._request("POST", "/search/video", data=form, files=files)


def _reason(err):
    text = str(err)
    for marker in ("Connection refused", "Name or service not known", "No route to host",
                   "Temporary failure in name resolution", "Invalid URL", "No connection adapters"):
        if marker in text:
            return marker.lower()
    return type(err).__name__


def _error_text(response):
    try:
        return str(response.json().get("error", response.text))[:300]
    except (ValueError, AttributeError):
        return response.text.strip().splitlines()[0][:300] if response.text.strip() else "no details"
