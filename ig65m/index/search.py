"""Searching a built index directory: loading it memory-mapped, per-request search breadth.

`Searcher` is what the server holds: it is safe to call from many threads at once, because the
search breadth (IVF nprobe, HNSW efSearch) goes with each call as Faiss SearchParameters instead of
being set on the shared index.
"""

import faiss
import numpy as np

from ig65m.errors import Ig65mError
from ig65m.index.manifest import (INDEX_FILE, MANIFEST_FILE, METADATA_FILE, METRICS,
                                  read_manifest, resolve_index_dir)
from ig65m.index.store import MetadataStore


def _unwrap(index):
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def search_knob(index):
    """(parameter name, candidate values) of the index's search breadth, or (None, [])."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        values = [2 ** power for power in range(17) if 2 ** power < ivf.nlist] + [ivf.nlist]
        return "nprobe", values
    if isinstance(_unwrap(index), faiss.IndexHNSW):
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    return None, []


def search_parameters(index, value):
    """Per-call SearchParameters with breadth `value` -> (params or None, objects to keep alive)."""
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=int(value))
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(value))
    else:
        return None, ()
    keep = [params]
    top = faiss.downcast_index(index)
    while isinstance(top, faiss.IndexPreTransform):
        params = faiss.SearchParametersPreTransform(index_params=params)
        keep.append(params)
        top = faiss.downcast_index(top.index)
    return params, keep


def load_index(path):
    """Read an index memory-mapped where its type allows (flat codes, IVF lists), else into memory."""
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError:
        try:
            return faiss.read_index(str(path))
        except RuntimeError as err:
            raise Ig65mError(f"cannot read index {path}: {str(err).strip().splitlines()[-1]}") from None


class Searcher:
    """A loaded index directory. `search(vectors (n, D), k)` -> n lists of up to k result dicts
    {"id", "distance", "path", "clip", "start", "end", "features"}, nearest first; distances are
    Euclidean for metric l2 and 1 - cosine similarity for cosine. The server uses the two halves:
    `search_arrays` (Faiss only) and `results` (metadata, only when an answer asks for it).
    Loading checks the metadata database and copies its clip table into memory (`store.table`)
    and its list of videos (`videos`, see `MetadataStore.videos`)."""

    def __init__(self, index_dir):
        folder = resolve_index_dir(index_dir)
        self.manifest = read_manifest(folder)
        self.dimension = _manifest_int(self.manifest, "dimension", folder)
        self.metric = self.manifest["metric"]
        self.index = load_index(folder / INDEX_FILE)
        self.count = int(self.index.ntotal)
        self.breadth_name = self.manifest.get("search_parameter")
        self.breadth_default = self.manifest.get("search_default")
        if self.index.d != self.dimension:
            raise Ig65mError(f"{folder}: manifest says {self.dimension}-d, index is {self.index.d}-d")
        if self.metric not in METRICS:
            raise Ig65mError(f"{folder}: unknown metric {self.metric!r} in {MANIFEST_FILE}")
        _check_breadth_default(self.breadth_default, folder)
        self._parameters = {}  # breadth -> (SearchParameters, objects they need): built once each
        store = MetadataStore(folder / METADATA_FILE)
        try:
            store.check(self.count)
            self.table = store.table(self.count)
            self.videos = store.videos()  # the collection, for the search page
        finally:
            store.close()

    def search_arrays(self, vectors, k, breadth=None):
        """Faiss search -> (distances float64 (n, k), ids int64 (n, k)); id -1 where fewer than k."""
        vectors = np.array(vectors, dtype=np.float32, order="C", ndmin=2)  # a copy: normalised below
        if self.metric == "cosine":
            faiss.normalize_L2(vectors)
        breadth = breadth or self.breadth_default
        params, _ = self._search_parameters(breadth) if breadth else (None, ())
        distances, ids = self.index.search(vectors, int(k), params=params)
        # computed in float64 (dtype=), as few numpy calls as can be: each costs microseconds
        # after a large index's search has swept the CPU caches
        if self.metric == "cosine":
            return np.subtract(1.0, distances, dtype=np.float64), ids
        return np.sqrt(np.maximum(distances, 0.0), dtype=np.float64), ids

    def _search_parameters(self, breadth):
        """search_parameters(index, breadth), kept: Faiss only reads them, so threads share them
        (building them costs about 8 us, 4% of a 200k search)."""
        found = self._parameters.get(breadth)
        if found is None:
            found = self._parameters[breadth] = search_parameters(self.index, breadth)
        return found

    def results(self, distances, ids):
        """Result dicts with metadata for the arrays of `search_arrays`, one lookup for all rows."""
        return self.table.hits(ids, distances)

    def search(self, vectors, k, breadth=None):
        return self.results(*self.search_arrays(vectors, k, breadth))

    def clip(self, clip_id):
        """Metadata dict of one clip, or None (also for ids out of range, e.g. >= 2**63)."""
        if not 0 <= clip_id < self.count:
            return None
        return self.table.lookup([clip_id])[clip_id]


def _manifest_int(manifest, key, folder):
    value = manifest[key]
    if type(value) is not int or value < 1:
        raise Ig65mError(f"{folder / MANIFEST_FILE}: {key} must be a positive integer, "
                         f"got {value!r}")
    return value


def _check_breadth_default(value, folder):
    """A search_default that every search would fail on is refused at load, not answered 500."""
    if value is not None and (type(value) is not int or not 1 <= value <= 2 ** 31 - 1):
        raise Ig65mError(f"{folder / MANIFEST_FILE}: search_default must be a positive integer "
                         f"or null, got {value!r}")
