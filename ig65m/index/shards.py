"""Index builds from shards: train once on a sample, add shards in parallel, merge on disk.

    feature files ──► shards of about equal rows ──► workers (processes, or Ray tasks): each adds
    its shard to a copy of the trained IVF index, ids = global clip ids ──► shard_i.faiss
    ──► calibration (searching the shard files in turn) ──► merge: an OnDiskInvertedLists laid
    out at its final list sizes, each shard's lists written into place ──► index.faiss +
    index.ivfdata

Each worker holds one shard, and calibration and the merge hold one shard at a time, so the memory
a build needs follows the shard size, not the collection (its resident pages of memory-mapped
files included: feature files and lists are read and written with plain file I/O). The result is an ordinary
index directory (see build.py) plus `trained.faiss` (the empty trained index, for --append) and
`index.ivfdata` (the inverted lists, memory-mapped when the index is loaded; `index.faiss` names
it by its final absolute path). `--append` adds the new files as new shards and merges them with
the existing lists into a new `index.ivfdata` (a rewrite of the lists file; memory stays bounded).
"""

import contextlib
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from ig65m.errors import Ig65mError
from ig65m.index.build import (CALIBRATION_QUERIES, _accumulate_truth, _manifest,
                               appended_manifest, calibrate, new_files, new_index, prepare,
                               replace_dir, staging_dir, train, warn_uneven)
from ig65m.index.manifest import INDEX_FILE, MANIFEST_FILE, METADATA_FILE, read_manifest
from ig65m.index.sources import iter_chunks, open_feature_file
from ig65m.index.store import MetadataStore
from ig65m.fileio import write_json

TRAINED_FILE = "trained.faiss"
IVFDATA_FILE = "index.ivfdata"
TRUTH_K = 11  # 10 neighbours besides the query itself, for calibration
SHARD_CHUNK_ROWS = 8192  # rows a worker reads at a time (16 MiB of 512-d floats): its memory is the shard's


@dataclass
class ShardOptions:
    """`shards`: how many parts to cut the files into; `workers`: parts built at once (processes,
    or Ray tasks with `use_ray`, on the cluster at `ray_address` or a local Ray)."""

    shards: int = 8
    workers: int | None = None
    use_ray: bool = False
    ray_address: str | None = None


def is_sharded(index_dir):
    """True for an index directory built by `build_sharded`."""
    return (Path(index_dir) / TRAINED_FILE).is_file()


def shard_groups(files, shards, first_id=0):
    """Cut `files` (in order) into up to `shards` groups of about equal rows; a file is never cut.
    -> [[(path, first clip id)]]."""
    total = sum(item.rows for item in files)
    groups, current, filled, next_id = [], [], 0, first_id
    for item in files:
        current.append((str(item.path), next_id))
        filled, next_id = filled + item.rows, next_id + item.rows
        if filled >= total * (len(groups) + 1) / shards and len(groups) < shards - 1:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def add_shard(trained_path, shard_path, group, metric, queries, threads):
    """Worker: add the files of `group` [(path, first id)] to the trained index, write it to
    `shard_path`, and return the exact top-TRUTH_K neighbours of `queries` in this shard.

    Two passes over the shard, SHARD_CHUNK_ROWS rows at a time: the first assigns every row to its
    list (and gathers the neighbours), so that each list is allocated once at its final size; the
    second encodes the rows into them. Adding in one pass grows every list by doubling, moving it
    each time: at 1M x 512 in 8 shards, 2 workers peaked at 0.90-1.00 GiB of anonymous memory that
    way, 0.74-0.77 GiB this way (three runs each, benchmarks/shards.py's data)."""
    faiss.omp_set_num_threads(threads)
    index = faiss.read_index(str(trained_path))
    ivf, chain = _ivf_parts(index)
    heap = faiss.ResultHeap(len(queries), TRUTH_K, keep_max=(metric == "cosine"))
    chunks = _shard_chunks(group, metric, chain)
    assigned = []
    for start, original, chunk in chunks():
        if len(queries):
            _accumulate_truth((queries, heap), original, start, metric)
        assigned.append(ivf.quantizer.assign(chunk, 1).ravel().astype(np.int64))
    assigned = np.concatenate(assigned)
    _reserve(ivf, np.bincount(assigned, minlength=ivf.nlist))
    done = 0
    for start, _, chunk in chunks():
        ids = np.arange(start, start + len(chunk), dtype=np.int64)
        lists = assigned[done:done + len(chunk)]
        ivf.add_core(len(chunk), faiss.swig_ptr(chunk), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
        done += len(chunk)
    index.ntotal = ivf.ntotal
    faiss.write_index(index, str(shard_path))
    heap.finalize()
    return heap.D, heap.I


def _ivf_parts(index):
    """-> (the IVF index of `index`, as its own class, [the transforms applied before it])."""
    top = faiss.downcast_index(index)
    chain = ([top.chain.at(i) for i in range(top.chain.size())]
             if isinstance(top, faiss.IndexPreTransform) else [])
    return faiss.downcast_index(faiss.extract_index_ivf(index)), chain


def _shard_chunks(group, metric, chain):
    """-> a function yielding (first clip id, prepared rows, rows as the IVF takes them) over the
    files of `group` [(path, first id)], SHARD_CHUNK_ROWS at a time; callable more than once."""
    firsts = {path: first for path, first in group}
    files = [open_feature_file(path) for path, _ in group]

    def chunks():
        for item, first, chunk in iter_chunks(files, SHARD_CHUNK_ROWS):
            chunk = prepare(chunk, metric)
            transformed = chunk
            for transform in chain:
                transformed = np.ascontiguousarray(transform.apply(transformed))
            yield firsts[str(item.path)] + first, chunk, transformed
    return chunks


def _reserve(ivf, counts):
    """Allocate each list of `ivf` (empty, in memory) for its final `counts` entries at once."""
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    for list_no in np.flatnonzero(counts):
        invlists.resize(int(list_no), int(counts[list_no]))  # allocates exactly this many...
        invlists.resize(int(list_no), 0)  # ...and keeps the room when emptied (std::vector)


def _run_workers(jobs, options, progress):
    """Run add_shard over `jobs` (argument tuples) in parallel -> results in order."""
    workers = max(1, min(options.workers or os.cpu_count() or 1, len(jobs)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [(*job, threads) for job in jobs]
    with tqdm(total=len(jobs), desc="adding shards", unit="shard", file=sys.stderr,
              disable=not progress) as bar:
        if options.use_ray:
            return _run_on_ray(jobs, workers, options.ray_address, bar)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(add_shard, *job) for job in jobs]
            results = []
            for future in futures:
                results.append(future.result())
                bar.update(1)
            return results


def _run_on_ray(jobs, workers, address, bar):
    from ig65m.ray_extract import failure_text, import_ray, start_ray

    ray = import_ray()
    started = start_ray(ray, address)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(add_shard)
        pending, results = list(enumerate(jobs)), {}
        running = {}
        while pending or running:
            while pending and len(running) < workers:
                number, job = pending.pop(0)
                running[task.remote(*job)] = number
            [done], _ = ray.wait(list(running), num_returns=1)
            try:
                results[running.pop(done)] = ray.get(done)
            except Exception as err:  # noqa: BLE001 - a worker's error ends the build
                raise Ig65mError(f"a shard failed: {failure_text(err)}") from None
            bar.update(1)
        return [results[number] for number in range(len(jobs))]
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send what C++ code writes to file descriptor 1 to stderr for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def merge_on_disk(trained_path, sources, ivfdata_path):
    """The trained index holding every list of `sources` (shard files, or loaded indexes) in an
    OnDiskInvertedLists at `ivfdata_path`.

    The lists file is laid out once at its final list sizes (Faiss's `set_all_lists_sizes`, the
    layout `merge_from_multiple` makes), then each source's lists are written into place with
    ordinary file writes, one source at a time. Faiss's own `merge_from_multiple` maps every shard
    and the whole lists file at once and touches all of them: at 1M x 512 in 8 shards the build's
    resident memory reached 3.9 GiB of mapped pages that way, where this holds one shard's."""
    index = faiss.read_index(str(trained_path))
    ivf = faiss.extract_index_ivf(index)
    sizes = np.zeros(ivf.nlist, dtype=np.uint64)
    for source in sources:
        with _opened_lists(source) as lists:
            sizes += np.array([lists.list_size(number) for number in range(ivf.nlist)],
                              dtype=np.uint64)
    code_size, total = ivf.code_size, int(sizes.sum())
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, code_size, str(ivfdata_path))
    with _stdout_to_stderr():  # Faiss prints "resizing ..." on stdout, which carries results
        invlists.update_totsize(max(total, 1) * (code_size + 8))  # codes + int64 ids
    invlists.set_all_lists_sizes(faiss.swig_ptr(sizes))
    offsets = [(invlists.lists.at(number).offset, int(sizes[number]))
               for number in range(ivf.nlist)]
    filled = np.zeros(ivf.nlist, dtype=np.int64)
    with open(ivfdata_path, "r+b") as out:
        for source in sources:
            with _opened_lists(source) as lists:
                for number in range(ivf.nlist):
                    count = lists.list_size(number)
                    if count:
                        offset, capacity = offsets[number]
                        first = int(filled[number])
                        codes = faiss.rev_swig_ptr(lists.get_codes(number), count * code_size)
                        ids = faiss.rev_swig_ptr(lists.get_ids(number), count)
                        os.pwrite(out.fileno(), codes, offset + first * code_size)
                        os.pwrite(out.fileno(), ids, offset + capacity * code_size + first * 8)
                        filled[number] += count
    index.ntotal = ivf.ntotal = total
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()
    return index


@contextlib.contextmanager
def _opened_lists(source):
    """The inverted lists of `source`: a shard file, memory-mapped while the block runs (its
    pages are released when it ends), or an index already loaded."""
    loaded = faiss.read_index(str(source), faiss.IO_FLAG_MMAP) if isinstance(
        source, (str, Path)) else source
    try:
        yield faiss.extract_index_ivf(loaded).invlists
    finally:
        del loaded


def _search_shards(shard_files, metric):
    """A `calibrate` search over the shard files, one at a time, results merged: what the merged
    index finds (every shard has the same trained quantizer, so a query probes the same lists in
    each), holding one shard's memory-mapped pages at a time, where searching the merged lists
    file keeps every page it touched resident (1.2 GiB at 1M x 512)."""
    def search(name, value, queries, k):
        heap = faiss.ResultHeap(len(queries), k, keep_max=(metric == "cosine"))
        for path in shard_files:
            shard = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
            faiss.ParameterSpace().set_index_parameter(shard, name, value)
            heap.add_result(*shard.search(queries, k))
            del shard
        heap.finalize()
        return heap.I
    return search


def _write_sharded(index, manifest, staged, index_dir):
    """Write index.faiss naming the lists file by the path it will have once renamed into place."""
    warn_uneven(index)
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    invlists.filename = str(Path(index_dir).resolve() / IVFDATA_FILE)
    faiss.write_index(index, str(staged / INDEX_FILE))
    write_json(staged / MANIFEST_FILE, manifest)
    for shard in staged.glob("shard_*.faiss"):
        shard.unlink()


def ivf_key(index_key, count):
    """The factory string of a sharded build: shards merge IVF lists, so where a one-shot build
    would search exactly (`Flat`), a sharded one takes about 4*sqrt(count) lists."""
    if index_key == "Flat":
        return f"IVF{max(16, int(round(4 * count ** 0.5)))},Flat"
    return index_key


def _record_files(store, files, first_id):
    for item in files:
        store.add_file(item.path, source=item.source, model=item.model, first_id=first_id,
                       clip_times=item.clip_times())
        first_id += item.rows
    store.commit()


def build_sharded(files, index_dir, options, index_key, metric, target_recall, progress):
    """Build `index_dir` from the checked `files` in `options.shards` shards (build.build_index
    checks the inputs and holds the index's lock)."""
    index = new_index(index_key, files[0].dim, metric)
    with staging_dir(index_dir) as tmp:
        sample_ids, sample = train(index, files, metric, progress)
        pick = np.random.default_rng(1).choice(len(sample), min(CALIBRATION_QUERIES, len(sample)),
                                               replace=False)
        query_ids, queries = sample_ids[pick], np.ascontiguousarray(sample[pick])
        del sample
        faiss.write_index(index, str(tmp / TRAINED_FILE))
        groups = shard_groups(files, options.shards)
        jobs = [(tmp / TRAINED_FILE, tmp / f"shard_{i}.faiss", group, metric, queries)
                for i, group in enumerate(groups)]
        truth = faiss.ResultHeap(len(queries), TRUTH_K, keep_max=(metric == "cosine"))
        for distances, ids in _run_workers(jobs, options, progress):
            truth.add_result(distances, ids)
        truth.finalize()
        store = MetadataStore(tmp / METADATA_FILE, writable=True)
        _record_files(store, files, 0)
        store.close()
        shard_files = [job[1] for job in jobs]
        name, value, recall = calibrate(index, queries, query_ids, truth.I, target=target_recall,
                                        search=_search_shards(shard_files, metric))
        merged = merge_on_disk(tmp / TRAINED_FILE, shard_files, tmp / IVFDATA_FILE)
        manifest = _manifest(merged, index_key, metric, files, len(files))
        manifest.update(search_parameter=name, search_default=value, calibrated_recall=recall,
                        target_recall=target_recall, shards=len(groups), layout="ondisk")
        _write_sharded(merged, manifest, tmp, index_dir)
        replace_dir(tmp, index_dir)
    return manifest


def append_sharded(files, index_dir, options, *, progress=True):
    """Add the checked `files` not yet in the sharded index `index_dir`, as new shards (the caller
    holds the index's lock)."""
    manifest = read_manifest(index_dir)
    with staging_dir(index_dir) as tmp:
        shutil.copy2(index_dir / METADATA_FILE, tmp / METADATA_FILE)
        shutil.copy2(index_dir / TRAINED_FILE, tmp / TRAINED_FILE)
        store = MetadataStore(tmp / METADATA_FILE, writable=True)
        files = new_files(store, files)
        if not files:
            store.close()
            return manifest
        empty = np.zeros((0, manifest["dimension"]), dtype=np.float32)
        groups = shard_groups(files, options.shards, first_id=manifest["count"])
        jobs = [(tmp / TRAINED_FILE, tmp / f"shard_{i}.faiss", group, manifest["metric"], empty)
                for i, group in enumerate(groups)]
        _run_workers(jobs, options, progress)
        _record_files(store, files, manifest["count"])
        store.close()
        with _stdout_to_stderr():  # Faiss says "updating ondisk filename" on stdout
            old = faiss.read_index(str(index_dir / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR)
        merged = merge_on_disk(tmp / TRAINED_FILE, [old] + [job[1] for job in jobs],
                               tmp / IVFDATA_FILE)
        del old
        manifest = appended_manifest(manifest, merged, files)
        manifest["shards"] = manifest.get("shards", 0) + len(groups)
        _write_sharded(merged, manifest, tmp, index_dir)
        replace_dir(tmp, index_dir)
    return manifest
