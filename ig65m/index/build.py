"""Build (or extend) an index directory from feature files.

An index directory holds `index.faiss` (the Faiss index; Faiss id == clip id), `metadata.sqlite`
(see `store.py`) and `manifest.json` (dimension, metric, count, index key, model, search default).
It is written in a temporary folder beside the target and renamed into place: never half an index.
"""

import contextlib
import datetime
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from ig65m.errors import Ig65mError
from ig65m.fileio import check_writable, write_json
from ig65m.index.manifest import INDEX_FILE, METADATA_FILE, MANIFEST_FILE, METRICS, read_manifest
from ig65m.index.search import search_knob
from ig65m.index.sources import find_feature_files, iter_chunks, open_feature_files, sample_rows
from ig65m.index.store import MetadataStore

FLAT_MAX = 50_000        # below this many clips exact search answers in a few ms: no training
CALIBRATION_QUERIES = 256
DEFAULT_TARGET_RECALL = 0.97  # on collection samples, so that held-out queries stay above 0.95


def choose_index_key(count, dim, memory_bytes=None):
    """The Faiss factory string for `count` vectors of `dim` floats.

    Exact `Flat` below FLAT_MAX; above, IVF with about 4*sqrt(count) lists, storing full vectors while
    they fit in half the memory, then 8-bit scalar codes (4x smaller), then PQ (16x smaller).
    """
    if count < FLAT_MAX:
        return "Flat"
    nlist = min(65536, max(64, int(round(4 * math.sqrt(count)))))
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    if count * dim * 4 <= memory_bytes:
        return f"IVF{nlist},Flat"
    if count * dim <= memory_bytes:
        return f"IVF{nlist},SQ8"
    subquantizers = max(m for m in range(1, dim // 16 + 1) if dim % m == 0)
    return f"IVF{nlist},PQ{subquantizers}"


def new_index(index_key, dim, metric):
    """faiss.index_factory with our metric names; a bad factory string is a user error."""
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    try:
        return faiss.index_factory(dim, index_key, faiss_metric)
    except RuntimeError as err:
        raise Ig65mError(f"invalid --index-key {index_key!r}: {_faiss_reason(err)}") from None


def _faiss_reason(err):
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "faiss error"


def prepare(vectors, metric):
    """Vectors as Faiss takes them: float32 C-contiguous, L2-normalised for cosine (in place)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        if not vectors.flags.writeable:
            vectors = vectors.copy()
        faiss.normalize_L2(vectors)
    return vectors


def training_size(index, total):
    """How many vectors to train on: 40 per IVF list (Faiss asks for 39 at least)."""
    ivf = faiss.try_extract_index_ivf(index)
    wanted = 40 * ivf.nlist if ivf is not None else 65536
    return min(total, max(wanted, 10_000))


def train(index, files, metric, progress):
    """Train on a uniform sample of every file's rows; return (sample ids, prepared sample)."""
    total = sum(item.rows for item in files)
    ids, sample = sample_rows(files, training_size(index, total))
    sample = prepare(sample, metric)
    if not index.is_trained:
        with tqdm(total=1, desc="training", unit="index", file=sys.stderr,
                  disable=not progress) as bar:
            try:
                index.train(sample)
                bar.update(1)
            except RuntimeError as err:
                raise Ig65mError(f"cannot train this index on {len(sample)} vectors: "
                                 f"{_faiss_reason(err)}") from None
    return ids, sample


def check_inputs(files, progress):
    """One streaming pass over every row: NaN/inf is an error before any training starts."""
    total = sum(item.rows for item in files)
    with tqdm(total=total, desc="reading", unit="clip", file=sys.stderr, disable=not progress) as bar:
        for _, _, chunk in iter_chunks(files):
            bar.update(len(chunk))


def add_files(index, store, files, metric, progress, truth=None):
    """Add every row of `files` (ids continue from index.ntotal) and record their metadata.

    `truth`, a (queries, faiss.ResultHeap) pair, accumulates the exact neighbours for calibration.
    """
    total = sum(item.rows for item in files)
    with tqdm(total=total, desc="adding", unit="clip", file=sys.stderr, disable=not progress) as bar:
        for item, first, chunk in iter_chunks(files):
            if first == 0:
                store.add_file(item.path, source=item.source, model=item.model,
                               first_id=index.ntotal, clip_times=item.clip_times)
            chunk = prepare(chunk, metric)
            if truth is not None:
                _accumulate_truth(truth, chunk, index.ntotal, metric)
            index.add(chunk)
            bar.update(len(chunk))
    store.commit()


def _accumulate_truth(truth, chunk, first_id, metric):
    queries, heap = truth
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    distances, ids = faiss.knn(queries, chunk, min(heap.k, len(chunk)), metric=faiss_metric)
    heap.add_result(distances, ids + first_id)


def calibrate(index, queries, query_ids, truth_ids, k=10, target=DEFAULT_TARGET_RECALL):
    """Smallest search breadth (IVF nprobe / HNSW efSearch) reaching `target` recall@k on collection
    samples, the query itself left out -> (parameter name or None, value or None, recall or None)."""
    name, candidates = search_knob(index)
    if name is None or len(queries) == 0:
        return None, None, None
    space = faiss.ParameterSpace()
    for value in candidates:
        space.set_index_parameter(index, name, value)
        _, found = index.search(queries, k + 1)
        recall = recall_at_k(found, truth_ids, query_ids, k)
        if recall >= target:
            break
    return name, value, recall


def recall_at_k(found, truth, query_ids, k):
    """Mean |found ∩ truth| / k over queries, each query's own id removed from both lists."""
    hits = 0
    for own, got, want in zip(query_ids, found, truth):
        got = [i for i in got if i != own and i >= 0][:k]
        want = [i for i in want if i != own and i >= 0][:k]
        hits += len(set(got) & set(want)) / max(len(want), 1)
    return hits / max(len(query_ids), 1)


@contextlib.contextmanager
def staging_dir(index_dir):
    """A temporary folder beside `index_dir`, removed unless the block renames it away."""
    check_writable(index_dir.parent / f".{index_dir.name}.probe")
    tmp = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.", suffix=".tmp", dir=index_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the index is an ordinary folder
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(staged, index_dir):
    """Move `staged` onto `index_dir`: the old directory is renamed aside first, then removed."""
    if not index_dir.exists():
        os.rename(staged, index_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.", suffix=".old", dir=index_dir.parent))
    os.rename(index_dir, old / "index")
    os.rename(staged, index_dir)
    shutil.rmtree(old, ignore_errors=True)


def build_index(inputs, index_dir, *, index_key=None, metric="l2", append=False,
                target_recall=DEFAULT_TARGET_RECALL, progress=True, sharding=None):
    """Build `index_dir` from feature files/folders `inputs`, or with `append=True` add the files not
    yet in it. Returns the manifest dict written. `sharding` (an `ig65m.index.shards.ShardOptions`)
    builds from shards in parallel; a sharded index is always appended to in shards."""
    index_dir = Path(index_dir)
    from ig65m.index import shards  # imports this module: imported here, not at the top
    if sharding is not None or (append and shards.is_sharded(index_dir)):
        if append:
            return shards.append_sharded(inputs, index_dir, sharding or shards.ShardOptions(),
                                         progress=progress)
        return shards.build_sharded(inputs, index_dir, sharding, index_key=index_key,
                                    metric=metric, target_recall=target_recall, progress=progress)
    if append:
        return _append(inputs, index_dir, progress)
    if metric not in METRICS:
        raise Ig65mError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    if index_dir.exists():
        raise Ig65mError(f"{index_dir} already exists: use --append to add to it, or remove it")
    files = open_feature_files(find_feature_files(inputs))
    check_inputs(files, progress)
    count, dim = sum(item.rows for item in files), files[0].dim
    index_key = index_key or choose_index_key(count, dim)
    index = new_index(index_key, dim, metric)
    with staging_dir(index_dir) as tmp:
        sample_ids, sample = train(index, files, metric, progress)
        # the sample is in collection order: pick queries across it, not from the first file
        pick = np.random.default_rng(1).choice(len(sample), min(CALIBRATION_QUERIES, len(sample)),
                                               replace=False)
        query_ids, queries = sample_ids[pick], np.ascontiguousarray(sample[pick])
        heap = faiss.ResultHeap(len(queries), 11, keep_max=(metric == "cosine"))
        store = MetadataStore(tmp / METADATA_FILE, writable=True)
        add_files(index, store, files, metric, progress, truth=(queries, heap))
        store.close()
        heap.finalize()
        name, value, recall = calibrate(index, queries, query_ids, heap.I, target=target_recall)
        manifest = _manifest(index, index_key, metric, files, len(files))
        manifest.update(search_parameter=name, search_default=value, calibrated_recall=recall,
                        target_recall=target_recall)
        _write(index, manifest, tmp)
        replace_dir(tmp, index_dir)
    return manifest


def _append(inputs, index_dir, progress):
    manifest = read_manifest(index_dir)
    with staging_dir(index_dir) as tmp:
        shutil.copy2(index_dir / METADATA_FILE, tmp / METADATA_FILE)
        store = MetadataStore(tmp / METADATA_FILE, writable=True)
        paths = []
        for path in find_feature_files(inputs):
            if store.has_file(path):
                print(f"skipping {path}: already in the index", file=sys.stderr)
            else:
                paths.append(path)
        if not paths:
            store.close()
            return manifest
        files = open_feature_files(paths, dim=manifest["dimension"], model=manifest.get("model"))
        check_inputs(files, progress)
        index = faiss.read_index(str(index_dir / INDEX_FILE))
        add_files(index, store, files, manifest["metric"], progress)
        store.close()
        model = manifest.get("model")
        manifest.update(_manifest(index, manifest["index_key"], manifest["metric"], files,
                                  manifest["files"] + len(files), created=manifest["created"]))
        manifest["model"] = model or manifest["model"]
        _write(index, manifest, tmp)
        replace_dir(tmp, index_dir)
    return manifest


def _manifest(index, index_key, metric, files, file_count, created=None):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    model = next((item.model for item in files if item.model), None)
    return {"format": 1, "dimension": index.d, "metric": metric, "count": int(index.ntotal),
            "index_key": index_key, "model": model, "files": file_count,
            "created": created or now, "updated": now, "faiss_version": faiss.__version__}


def _write(index, manifest, folder):
    faiss.write_index(index, str(folder / INDEX_FILE))
    write_json(folder / MANIFEST_FILE, manifest)
