"""Build (or extend) an index directory from feature files.

An index directory holds `index.faiss` (the Faiss index; Faiss id == clip id), `metadata.sqlite`
(see `store.py`) and `manifest.json` (dimension, metric, count, index key, model, search default).
It is written in a temporary folder beside the target and renamed into place: never half an index.
"""

import logging
import datetime
import math
import os
import shutil
import sys

import faiss
import numpy as np
from tqdm import tqdm

from ig65m.errors import Ig65mError
from ig65m.fileio import check_folder_takes_files, resolve_output, write_json
from ig65m.index.media import locate_source, recorded_roots
from ig65m.index.manifest import INDEX_FILE, METADATA_FILE, MANIFEST_FILE, METRICS, read_manifest
from ig65m.index.search import search_knob
from ig65m.index.sources import find_feature_files, iter_chunks, open_feature_files, sample_rows
from ig65m.index.store import MetadataStore
from ig65m.index.swap import locked, recover, replace_dir, staging_dir

log = logging.getLogger(__name__)

FLAT_MAX = 50_000        # below this many clips exact search answers in a few ms: no training
CALIBRATION_QUERIES = 256
UNEVEN_LISTS = 10.0  # IVF imbalance factor (1 when every list holds as many) worth a warning
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
        index = faiss.index_factory(dim, index_key, faiss_metric)
    except RuntimeError as err:
        raise Ig65mError(f"invalid --index-key {index_key!r}: {_faiss_reason(err)}") from None
    if hasattr(faiss.downcast_index(index), "id_map"):  # IDMap: add() refuses, ids are needed
        raise Ig65mError(f"invalid --index-key {index_key!r}: clip ids are the positions in the "
                         f"index already; leave out IDMap")
    return index


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
                               first_id=index.ntotal, clip_times=item.clip_times())
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


def calibrate(index, queries, query_ids, truth_ids, k=10, target=DEFAULT_TARGET_RECALL,
              search=None):
    """Smallest search breadth (IVF nprobe / HNSW efSearch) reaching `target` recall@k on collection
    samples, the query itself left out -> (parameter name or None, value or None, recall or None).
    `search(name, value, queries, k)` -> found ids: how to search at that breadth (None: set it on
    `index` and search `index`)."""
    name, candidates = search_knob(index)
    if name is None or len(queries) == 0:
        return None, None, None
    if search is None:
        space = faiss.ParameterSpace()

        def search(name, value, queries, k):
            space.set_index_parameter(index, name, value)
            return index.search(queries, k)[1]
    for value in candidates:
        found = search(name, value, queries, k + 1)
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


def build_index(inputs, index_dir, *, index_key=None, metric="l2", append=False,
                target_recall=DEFAULT_TARGET_RECALL, progress=True, path_prefixes=(), sharding=None):
    """Build `index_dir` from feature files/folders `inputs`, or with `append=True` add the files not
    yet in it; source paths are recorded absolute after `path_prefixes` [(OLD, NEW)] rewriting
    (see ig65m.index.media). Returns the manifest dict written. `sharding` (an
    `ig65m.index.shards.ShardOptions`) builds from shards in parallel; a sharded index is always
    appended to in shards.

    Every input is checked first; then the index's write lock is taken (a second build on the same
    index waits), and the new index is swapped in as `swap.replace_dir` describes. One-shot and
    sharded builds share all of this; only the building itself differs."""
    from ig65m.index import shards  # imports this module: imported here, not at the top
    index_dir, files, index_key = _open_inputs(inputs, index_dir, index_key, metric, append,
                                               sharding)
    locate_sources(files, path_prefixes)
    check_inputs(files, progress)
    with locked(index_dir):
        recover(index_dir, holding_lock=True)
        if append and shards.is_sharded(index_dir):
            return shards.append_sharded(files, index_dir, sharding or shards.ShardOptions(),
                                         progress=progress)
        if append:
            return _append(files, index_dir, progress)
        _check_new(index_dir)  # another build may have made it while this one waited
        if sharding is not None:
            return shards.build_sharded(files, index_dir, sharding, index_key, metric,
                                        target_recall, progress)
        return _build(files, index_dir, index_key, metric, target_recall, progress)


def _open_inputs(inputs, index_dir, index_key, metric, append, sharding):
    """Check the options and open the inputs before any reading of rows or locking
    -> (resolved index_dir, [FeatureFile], index key (None on --append))."""
    from ig65m.index import shards
    if metric not in METRICS:
        raise Ig65mError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    if index_key is not None and not index_key.strip():
        raise Ig65mError("--index-key is empty: give a Faiss factory string, or leave it out")
    index_dir = resolve_output(index_dir)
    check_folder_takes_files(index_dir.parent, index_dir)  # fails before any reading
    if append:
        manifest = read_manifest(index_dir)  # dimension and model never change on --append
        if sharding is not None and not shards.is_sharded(index_dir):
            raise Ig65mError(f"{index_dir} was built in one piece: --append adds to it in one "
                             "piece (leave out --shards, --workers and --ray)")
        return index_dir, open_feature_files(find_feature_files(inputs),
                                             dim=manifest["dimension"],
                                             model=manifest.get("model"),
                                             extraction=manifest.get("extraction")), None
    recover(index_dir)
    _check_new(index_dir)
    files = open_feature_files(find_feature_files(inputs))
    count, dim = sum(item.rows for item in files), files[0].dim
    index_key = index_key or choose_index_key(count, dim)
    if sharding is not None:
        index_key = shards.ivf_key(index_key, count)
    index = new_index(index_key, dim, metric)  # a bad --index-key fails before any work
    if sharding is not None and faiss.try_extract_index_ivf(index) is None:
        raise Ig65mError(f"a sharded build merges IVF lists: --index-key {index_key} has none "
                         "(use e.g. IVF1024,Flat)")
    return index_dir, files, index_key


def locate_sources(files, prefixes):
    """Record each file's source video as a path the server can resolve (ig65m.index.media).

    The metadata holds paths as UTF-8 text: a name that is not UTF-8 (Python gives its bytes as
    lone surrogates) is refused here, before anything is written, rather than failing mid-build."""
    for item in files:
        item.source = locate_source(item.source, item.path, prefixes)
        for what, path, fix in (("features file", item.path, "rename it"),
                                ("source video", item.source, "rename it, or --path-prefix")):
            try:
                str(path or "").encode("utf-8")
            except UnicodeEncodeError:
                raise Ig65mError(f"cannot index the {what} {ascii(str(path))}: its name is not "
                                 f"valid UTF-8 ({fix})") from None


def _check_new(index_dir):
    if index_dir.exists():
        raise Ig65mError(f"{index_dir} already exists: use --append to add to it, or remove it")


def _build(files, index_dir, index_key, metric, target_recall, progress):
    index = new_index(index_key, files[0].dim, metric)
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


def _append(files, index_dir, progress):
    """Add `files` not yet in `index_dir`; the caller holds the lock, so the index read here is the
    latest one, and no other run can replace it meanwhile."""
    manifest = read_manifest(index_dir)
    with staging_dir(index_dir) as tmp:
        shutil.copy2(index_dir / METADATA_FILE, tmp / METADATA_FILE)
        store = MetadataStore(tmp / METADATA_FILE, writable=True)
        new = new_files(store, files)
        if not new:
            store.close()
            return manifest
        index = faiss.read_index(str(index_dir / INDEX_FILE))
        add_files(index, store, new, manifest["metric"], progress)
        store.close()
        manifest = appended_manifest(manifest, index, new)
        _write(index, manifest, tmp)
        replace_dir(tmp, index_dir)
    return manifest


def new_files(store, files):
    """The files of `files` that `store` does not hold yet: an append skips the others."""
    new = []
    for item in files:
        if store.has_file(item.path):
            log.info("skipping %s: already in the index", item.path)
        else:
            new.append(item)
    if not new:
        print("nothing to add: every file is already in the index", file=sys.stderr)
    return new


def appended_manifest(manifest, index, new):
    """`manifest` once `new` files are in `index`: counts and dates renewed; the model, the media
    roots and the extraction settings of the files before kept."""
    updated = dict(manifest)
    updated.update(_manifest(index, manifest["index_key"], manifest["metric"], new,
                             manifest["files"] + len(new), created=manifest["created"]))
    updated["model"] = manifest.get("model") or updated["model"]
    updated["media_roots"] = sorted(set(manifest.get("media_roots", []))
                                    | set(updated["media_roots"]))
    updated["extraction"] = manifest.get("extraction") or updated["extraction"]
    return updated


def _manifest(index, index_key, metric, files, file_count, created=None):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    model = next((item.model for item in files if item.model), None)
    return {"format": 1, "dimension": index.d, "metric": metric, "count": int(index.ntotal),
            "index_key": index_key, "model": model, "files": file_count,
            "media_roots": recorded_roots(item.source for item in files),
            "extraction": next((item.extraction for item in files if item.extraction), None),
            "created": created or now, "updated": now, "faiss_version": faiss.__version__}


def warn_uneven(index):
    """One warning line when the IVF lists are very uneven: a search that probes the largest scans
    many times the average list, so its time depends on where the query falls."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or ivf.ntotal == 0:
        return
    factor = ivf.invlists.imbalance_factor()
    if factor > UNEVEN_LISTS:
        largest = max(ivf.invlists.list_size(number) for number in range(ivf.nlist))
        print(f"warning: the index's {ivf.nlist} lists are uneven (imbalance {factor:.1f}, the "
              f"largest holds {largest:,} of {ivf.ntotal:,} clips): searches that probe it are "
              f"slow; near-duplicate clips or a few very different videos do this",
              file=sys.stderr)


def _write(index, manifest, folder):
    warn_uneven(index)
    try:
        faiss.write_index(index, str(folder / INDEX_FILE))
    except RuntimeError as err:
        raise Ig65mError(f"cannot write {folder.parent}: {_faiss_reason(err)}") from None
    write_json(folder / MANIFEST_FILE, manifest)
