"""The /search protocol, shared by the Flask route and the fast path: limits, parsing of JSON and
raw float32 requests into a `SearchQuery`, the answer's JSON object, the bearer token check.
Every malformed request raises a werkzeug HTTPException (a 4xx with its message)."""

import hmac
import json
from dataclasses import dataclass, field

import numpy as np
import orjson
from werkzeug.exceptions import BadRequest, Unauthorized

from ig65m.defaults import MAX_K, MAX_VECTORS
from ig65m.index.vectors import PROBLEM, first_bad_row

MAX_BREADTH = 65536
FORMATS = ("full", "compact")  # compact: {"ids", "distances"} arrays, no metadata
DTYPES = ("float32", "<f4", "f4")
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS  # every answer's encoding

JSON_NUMBER_BYTES = 24  # a float32 written out in JSON, at most, with its comma


def default_body_cap(dimension, max_vectors=MAX_VECTORS):
    """Bytes allowed in a request: `max_vectors` vectors written as JSON."""
    return max(1 << 20, max_vectors * dimension * JSON_NUMBER_BYTES + 65536)


def check_token(given, token):
    """Unauthorized unless `given` (the Authorization header) is `Bearer <token>`, or no token."""
    if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("missing or wrong bearer token")


def _kept(values, found):
    """Rows of `values` where `found` (the id is a result, not Faiss's -1 padding), as lists."""
    return [row[keep].tolist() for row, keep in zip(values, found)]


@dataclass
class SearchQuery:
    """A parsed /search request; `params` holds the JSON body or the query string as sent, for
    options a route adds (e.g. group_by)."""

    vectors: np.ndarray
    k: int = 10
    breadth: int | None = None
    format: str = "full"
    params: dict = field(default_factory=dict)


def parse_search(req, dimension):
    """A search request -> SearchQuery; BadRequest on anything malformed."""
    if req.mimetype == "application/octet-stream":
        return parse_raw(req.get_data(cache=False), req.args, dimension,
                         req.mimetype_params.get("dtype"))
    return parse_json(req.get_data(cache=False), dimension)


def parse_raw(data, params, dimension, dtype=None):
    """A raw float32 body with its query-string `params` -> SearchQuery."""
    if dtype is not None and dtype.lower() not in DTYPES:
        raise BadRequest(f"raw bodies are little-endian float32 (dtype=float32), not {dtype!r}")
    vectors = _raw_vectors(data, dimension)
    k = _int_arg(params.get("k", "10"), "k", 1, MAX_K)
    breadth = params.get("nprobe")
    breadth = None if breadth is None else _int_arg(breadth, "nprobe", 1, MAX_BREADTH)
    return SearchQuery(vectors, k, breadth, _format(params), params)


def parse_json(data, dimension):
    """A JSON body {"vectors", "k", "nprobe", "format"} -> SearchQuery."""
    params = _json_body(data)
    vectors = _json_vectors(params.get("vectors"), dimension)
    k = _int_value(params.get("k", 10), "k", 1, MAX_K)
    breadth = params.get("nprobe")
    breadth = None if breadth is None else _int_value(breadth, "nprobe", 1, MAX_BREADTH)
    return SearchQuery(vectors, k, breadth, _format(params), params)


def _format(params):
    answer_format = params.get("format", "full")
    if answer_format not in FORMATS:
        raise BadRequest(f'"format" must be one of {", ".join(FORMATS)}, got {answer_format!r}')
    return answer_format


def answer(searcher, query, distances, ids):
    """The JSON object answering `query`: compact arrays, or result dicts with metadata."""
    if query.format == "compact":
        if ids.min() >= 0:  # every row full: the arrays as they are (one numpy call)
            return {"ids": ids, "distances": distances}
        found = ids >= 0
        return {"ids": _kept(ids, found), "distances": _kept(distances, found)}
    return {"results": searcher.results(distances, ids)}


def _reject_constant(name):  # anywhere in the body: "min_score": NaN is not in the vectors
    raise BadRequest(f"{name} is not allowed in a JSON request: use finite numbers")


def _json_body(data):
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = _json_body_slow(data)  # the standard library says precisely what is wrong
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object like {"vectors": [[...]], "k": 10}')
    return body


def _json_body_slow(data):
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise BadRequest(f"body is not valid JSON ({err})") from None


def _json_vectors(vectors, dimension):
    if not isinstance(vectors, list) or not vectors:
        raise BadRequest('"vectors" must be a non-empty list of lists of numbers')
    _check_count(len(vectors))
    for number, row in enumerate(vectors):
        if not isinstance(row, list) or len(row) != dimension:
            size = len(row) if isinstance(row, list) else type(row).__name__
            raise BadRequest(f"vector {number} must be a list of {dimension} numbers, got {size}")
        if bool in set(map(type, row)):
            raise BadRequest(f"vector {number} holds a boolean: use numbers")
    try:
        array = np.array(vectors)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is None or array.ndim != 2 or array.dtype.kind not in "if":
        raise BadRequest("vectors must hold only numbers")
    with np.errstate(over="ignore"):
        return _check_vectors(array.astype(np.float32))


def _raw_vectors(data, dimension):
    row_bytes = 4 * dimension
    if not data or len(data) % row_bytes:
        raise BadRequest(f"raw body must be a whole number of {dimension}-d float32 vectors "
                         f"({row_bytes} bytes each), got {len(data)} bytes")
    _check_count(len(data) // row_bytes)
    return _check_vectors(np.frombuffer(data, dtype="<f4").reshape(-1, dimension))


def _check_count(count):
    if count > MAX_VECTORS:
        raise BadRequest(f"at most {MAX_VECTORS} vectors per request, got {count}")


def _check_vectors(vectors):
    """BadRequest naming the first of `vectors` (n, D) float32 that Faiss cannot use."""
    bad = first_bad_row(vectors)
    if bad is not None:
        raise BadRequest(f"vector {bad} {PROBLEM}")
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
