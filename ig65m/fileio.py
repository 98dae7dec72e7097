"""Atomic file writing and the feature file format.

Features on disk: `<name>.npy`, float32, C-contiguous, shape (N, D), no pickle; beside it the sidecar
`<name>.json` (model, weights sha256, clip frames, step, fps, per-clip start/end seconds, source).
Every file is written under a temporary name in the same folder and renamed into place, so a crash,
a kill or Ctrl-C never leaves a partial output behind.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ig65m.errors import Ig65mError
from ig65m.sidecar import Sidecar

_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER_BYTES = 128  # fixed, so the header can be rewritten in place once N is known


def sidecar_path(features_path):
    """The JSON sidecar beside a features file: feats.npy -> feats.json."""
    return Path(features_path).with_suffix(".json")


def _default_mode():
    """The permissions a plain open() would give a new file (mkstemp makes them 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_DEFAULT_MODE = _default_mode()  # once, at import: os.umask is process-wide, not thread-safe


def _temp_beside(path):
    """A new empty temporary file in the folder of `path` -> (fd, its path)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    os.chmod(tmp, _DEFAULT_MODE)
    return fd, Path(tmp)


def check_writable(path):
    """Fail early, before any work, when `path` cannot be created."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise Ig65mError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise Ig65mError(f"cannot write {path}: folder {folder} is not writable")
    if Path(path).is_dir():
        raise Ig65mError(f"cannot write {path}: it is a folder")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    check_writable(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _npy_header(rows, dim):
    header = repr({"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}).encode("latin1")
    room = _NPY_HEADER_BYTES - len(_NPY_MAGIC) - 2
    return _NPY_MAGIC + room.to_bytes(2, "little") + header.ljust(room - 1) + b"\n"


class FeatureWriter:
    """Stream (n, D) float32 rows into `<path>.npy` plus its JSON sidecar, atomically.

    Rows go to a temporary file as they come, so memory stays constant however long the video; the
    .npy header is rewritten with the final row count on `commit`. Until then nothing exists at
    `path`; `abort` (or an exception inside the `with` block) removes the temporary files.
    """

    def __init__(self, path):
        self.path = Path(path)
        check_writable(self.path)
        fd, self._tmp = _temp_beside(self.path)
        self._file = os.fdopen(fd, "wb")
        self._file.write(_npy_header(0, 0))
        self.rows = 0
        self.dim = None

    def write(self, rows):
        rows = np.ascontiguousarray(rows, dtype="<f4")
        if rows.ndim != 2:
            raise ValueError(f"features must be 2-d, got shape {rows.shape}")
        if self.dim is None:
            self.dim = rows.shape[1]
        elif rows.shape[1] != self.dim:
            raise ValueError(f"feature dimension changed from {self.dim} to {rows.shape[1]}")
        self._file.write(rows.tobytes())
        self.rows += rows.shape[0]

    def commit(self, meta):
        """Finish the .npy, write the sidecar `meta`, and rename both into place."""
        if self.rows == 0:
            self.abort()
            raise Ig65mError(f"no features to write to {self.path}")
        self._file.seek(0)
        self._file.write(_npy_header(self.rows, self.dim))
        self._file.close()
        # sidecar first: whoever sees the .npy can rely on its .json being there
        sidecar = Sidecar.from_dict(meta, name=f"sidecar of {self.path}", rows=self.rows)
        write_json(sidecar_path(self.path), sidecar.to_dict())
        os.replace(self._tmp, self.path)

    def abort(self):
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def save_features(path, features, meta):
    """Write a whole (N, D) array and its sidecar atomically."""
    with FeatureWriter(path) as writer:
        writer.write(features)
        writer.commit(meta)


def load_features(path):
    """Read a features file -> (float32 array (N, D), sidecar dict or None).

    Raises Ig65mError for a missing file, a non-.npy file, a pickled or non-2-d array, or a sidecar
    that `ig65m.sidecar.Sidecar` refuses (not an object, or clips that do not match the rows).
    """
    path = Path(path)
    if not path.is_file():
        raise Ig65mError(f"features file not found: {path}")
    try:
        features = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        raise Ig65mError(f"not a valid .npy features file: {path} ({err})") from None
    if features.ndim != 2:
        raise Ig65mError(f"features in {path} must be 2-d (clips x dims), got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.number):
        raise Ig65mError(f"features in {path} are not numbers (dtype {features.dtype})")
    sidecar = Sidecar.read(sidecar_path(path), rows=features.shape[0])
    return features, None if sidecar is None else sidecar.to_dict()
