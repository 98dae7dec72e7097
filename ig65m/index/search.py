"""Searching a built index directory: loading it memory-mapped, per-request search breadth.

`Searcher` is what the server holds: it is safe to call from many threads at once, because the
search breadth (IVF nprobe, HNSW efSearch) goes with each call as Faiss SearchParameters instead of
being set on the shared index.
"""

import faiss
import numpy as np

from ig65m.errors import Ig65mError
from ig65m.index.manifest import INDEX_FILE, METADATA_FILE, read_manifest
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
    Euclidean for metric l2 and 1 - cosine similarity for cosine."""

    def __init__(self, index_dir):
        self.manifest = read_manifest(index_dir)
        self.index = load_index(f"{index_dir}/{INDEX_FILE}")
        self.store = MetadataStore(f"{index_dir}/{METADATA_FILE}")
        self.dimension = int(self.manifest["dimension"])
        self.metric = self.manifest["metric"]
        self.count = int(self.index.ntotal)
        self.breadth_name = self.manifest.get("search_parameter")
        self.breadth_default = self.manifest.get("search_default")
        if self.index.d != self.dimension:
            raise Ig65mError(f"{index_dir}: manifest says {self.dimension}-d, index is {self.index.d}-d")

    def search(self, vectors, k, breadth=None):
        vectors = np.array(vectors, dtype=np.float32, order="C", ndmin=2)
        if self.metric == "cosine":
            faiss.normalize_L2(vectors)
        breadth = breadth or self.breadth_default
        params, keep = search_parameters(self.index, breadth) if breadth else (None, ())
        distances, ids = self.index.search(vectors, int(k), params=params)
        del keep
        found = self.store.clips(ids[ids >= 0].ravel())
        return [[dict(found[i], distance=self._distance(d)) for d, i in zip(row_d, row_i) if i in found]
                for row_d, row_i in zip(distances.tolist(), ids.tolist())]

    def _distance(self, value):
        if self.metric == "cosine":
            return 1.0 - value
        return max(value, 0.0) ** 0.5

    def clip(self, clip_id):
        """Metadata dict of one clip, or None."""
        return self.store.clips([clip_id]).get(int(clip_id))
