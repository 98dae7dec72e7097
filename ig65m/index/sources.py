"""Feature files as index input: finding, checking, sampling and streaming them in bounded chunks.

Nothing here holds more than one chunk of rows (or the training sample) in memory: feature files are
memory-mapped by `ig65m.fileio.load_features` and copied chunk by chunk.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ig65m.errors import Ig65mError
from ig65m.fileio import load_features
from ig65m.index.vectors import PROBLEM, first_bad_row
from ig65m.sidecar import Sidecar

CHUNK_ROWS = 65536
# sidecar keys a server needs to extract queries the way the collection was extracted
EXTRACTION_KEYS = ("model", "weights_sha256", "feature_dim", "clip_frames", "step", "fps",
                   "frame_size", "crop_size", "tail", "pool_spatial", "pool_temporal")
# of those, the settings that change what a clip's features are (step and tail only choose clips):
# features that differ in one are not comparable, as those of two models are not
FEATURE_KEYS = ("weights_sha256", "clip_frames", "fps", "frame_size", "crop_size", "pool_spatial",
                "pool_temporal")


@dataclass
class FeatureFile:
    """One input file: `rows` clips of `dim` features; `source` video path and `model` from the
    sidecar (None without one)."""

    path: Path
    rows: int
    dim: int
    source: str | None
    model: str | None
    extraction: dict | None = None

    def features(self):
        """The (rows, dim) array, memory-mapped (its pair was verified when it was opened)."""
        return load_features(self.path, verify=False)[0]

    def clip_times(self):
        """[(start, end)] per row, read from the sidecar when asked: a build records one file at a
        time, so the times of a whole collection (about 100 bytes a clip) are never held at once."""
        meta = load_features(self.path, verify=False)[1]
        return _sidecar(meta, self.path, self.rows).clip_times(self.rows)


def find_feature_files(inputs):
    """Expand files and folders (searched recursively for *.npy) -> sorted unique resolved paths."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            inside = sorted(p for p in item.rglob("*.npy") if p.is_file())
            if not inside:
                raise Ig65mError(f"no .npy feature files in folder {item}")
            found.extend(inside)
        elif item.is_file():
            found.append(item)
        else:
            raise Ig65mError(f"features file or folder not found: {item}")
    unique = {}
    for path in found:
        unique.setdefault(path.resolve(), None)
    if not unique:
        raise Ig65mError("no feature files given")
    return list(unique)


def open_feature_file(path):
    """Read a file's shape and sidecar (not its rows) -> FeatureFile; Ig65mError when unusable."""
    features, meta = load_features(path)
    rows, dim = features.shape
    if rows == 0 or dim == 0:
        raise Ig65mError(f"features file {path} is empty (shape {features.shape})")
    sidecar = _sidecar(meta, path, rows)
    return FeatureFile(path=Path(path), rows=rows, dim=dim, source=sidecar.source,
                       model=sidecar.model,
                       extraction={key: meta[key] for key in EXTRACTION_KEYS
                                   if key in (meta or {})} or None)


def _sidecar(meta, path, rows):
    return Sidecar.from_dict(meta or {}, name=f"sidecar of {path}", rows=rows)


def extraction_mismatch(ours, theirs, our_name, their_name):
    """The first of FEATURE_KEYS that both extraction settings (dicts, or None) record and that
    differ, as (words: "OUR_NAME was extracted with frame_size 64, THEIR_NAME with frame_size
    112", the option that gives theirs: "--frame-size 112"), or None when none does."""
    ours, theirs = ours or {}, theirs or {}
    for key in FEATURE_KEYS:
        if ours.get(key) is not None and theirs.get(key) is not None and ours[key] != theirs[key]:
            words = (f"{our_name} was extracted with {_setting(key, ours[key])}, {their_name} "
                     f"with {_setting(key, theirs[key])}")
            option = ("the weights the index was built with (--weights)"
                      if key == "weights_sha256" else f"--{key.replace('_', '-')} {theirs[key]}")
            return words, option
    return None


def _setting(key, value):
    """A setting as people read it in an error: `frame_size 112`, `weights sha256 1a2b3c4d5e6f...`."""
    if key == "weights_sha256":
        return f"weights sha256 {str(value)[:12]}..."
    return f"{key} {value}"


def open_feature_files(paths, *, dim=None, model=None, extraction=None):
    """Open every file and check they agree on dimension, and on model and the settings that shape
    features (FEATURE_KEYS) where sidecars say; `dim`, `model`, `extraction`: an index's, which
    the files must match too (--append)."""
    files = [open_feature_file(path) for path in paths]
    reference = ("the index", extraction) if extraction else None
    for item in files:
        dim = item.dim if dim is None else dim
        if item.dim != dim:
            raise Ig65mError(f"{item.path} has {item.dim}-d features, others {dim}-d: "
                             "an index holds features of one dimension")
        if item.model is not None:
            model = item.model if model is None else model
            if item.model != model:
                raise Ig65mError(f"{item.path} holds features of model {item.model}, others of "
                                 f"{model}: an index holds features of one model")
        if item.extraction is not None:
            reference = reference or (item.path, item.extraction)
            mismatch = extraction_mismatch(item.extraction, reference[1], item.path, reference[0])
            if mismatch:
                raise Ig65mError(f"{mismatch[0]}: an index holds features extracted one way "
                                 "(extract again with the same options)")
    return files


def iter_chunks(files, chunk_rows=CHUNK_ROWS):
    """Yield (file, first_row, rows float32 (n, D) C-contiguous), checking every row (vectors.py)."""
    for item in files:
        features = item.features()
        for first in range(0, item.rows, chunk_rows):
            chunk = _read_rows(features, first, min(chunk_rows, item.rows - first))
            bad = first_bad_row(chunk)
            if bad is not None:
                raise Ig65mError(f"{item.path}: clip {first + bad} {PROBLEM}")
            yield item, first, chunk


def _read_rows(features, first, count):
    """Rows [first, first + count) of the memory-mapped `features`, as a float32 C-contiguous copy
    (the file is mapped read-only, and cosine normalises chunks in place). A C-ordered file is
    read with a plain file read, not through the mapping: a pass over a file then leaves no mapped
    pages resident in the process (a 1 GiB shard of 512-d features kept 0.1-0.3 GiB of them)."""
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused by the caller
        if not isinstance(features, np.memmap) or not features.flags.c_contiguous:
            return np.array(features[first:first + count], dtype=np.float32, order="C")
        row_bytes = features.dtype.itemsize * features.shape[1]
        rows = np.fromfile(features.filename, dtype=features.dtype,
                           count=count * features.shape[1],
                           offset=features.offset + first * row_bytes)
        return np.ascontiguousarray(rows.reshape(count, features.shape[1]), dtype=np.float32)


def sample_rows(files, count, seed=0):
    """A uniform sample of `count` rows across all files -> (row ids (count,), rows (count, D))."""
    total = sum(item.rows for item in files)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(count, total), replace=False))
    starts = np.cumsum([0] + [item.rows for item in files])
    parts = []
    for number, item in enumerate(files):
        inside = chosen[(chosen >= starts[number]) & (chosen < starts[number + 1])] - starts[number]
        if len(inside):
            with np.errstate(over="ignore"):
                parts.append(np.asarray(item.features()[inside], dtype=np.float32))
    return chosen, np.ascontiguousarray(np.concatenate(parts))
