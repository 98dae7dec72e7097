"""Atomic file writing and the feature file format.

Features on disk: `<name>.npy`, float32, C-contiguous, shape (N, D), no pickle; beside it the sidecar
`<name>.json` (model, weights sha256, clip frames, step, fps, per-clip start/end seconds, source).
Every file is written under a temporary name in the same folder and renamed into place, so a crash,
a kill or Ctrl-C never leaves a partial output behind.
"""

import contextlib
import errno
import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ig65m import tempfiles
from ig65m.errors import Ig65mError
from ig65m.sidecar import Sidecar

_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER_BYTES = 128  # fixed, so the header can be rewritten in place once N is known
# what a write that fails for want of room or permission raises (not, say, a download's URLError)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES,
                 errno.EPERM}
# torch.save reports a failed write as a RuntimeError from its zip writer, not an OSError
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed")


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
    """A new empty temporary file in the folder of `path` -> (fd, its path); the stale temporaries
    that dead processes left in that folder are swept first."""
    tempfiles.sweep_once(path.parent)
    fd, tmp = tempfiles.make_file(path)
    os.chmod(tmp, _DEFAULT_MODE)
    return fd, tmp


def resolve_output(path):
    """`path` with its symlinks resolved, so temporaries are made in the folder the output really
    lands in (a rename cannot cross filesystems); Ig65mError for a symlink loop."""
    path = Path(path)
    try:
        return path.resolve()
    except (RuntimeError, OSError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
        raise Ig65mError(f"cannot write {path}: {_reason(err)}") from None


def _reason(err):
    if isinstance(err, RuntimeError) or getattr(err, "errno", None) == errno.ELOOP:
        return "symbolic link loop"
    return getattr(err, "strerror", None) or str(err)


def check_writable(path):
    """Fail early, before any work, when `path` cannot be created: its folder must exist and take
    a new file (tried for real, which also catches read-only filesystems and full quotas)."""
    path = resolve_output(path)
    folder = path.parent
    if not folder.is_dir():
        raise Ig65mError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise Ig65mError(f"cannot write {path}: it is a folder")
    check_folder_takes_files(folder, path)
    return path


def check_folder_takes_files(folder, what):
    """Create and remove a file in `folder`, or raise Ig65mError naming `what` was to be written."""
    try:
        fd, probe = tempfiles.make_file(folder / "probe")
    except OSError as err:
        raise Ig65mError(f"cannot write {what}: cannot create files in {folder} "
                         f"({_reason(err)})") from None
    os.close(fd)
    os.unlink(probe)


def check_folder_writable(folder):
    """Fail early when files cannot be written in `folder`, which need not exist yet: the nearest
    folder that does exist must be a folder, and take a new file -> `folder` resolved."""
    folder = resolve_output(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise Ig65mError(f"cannot write in {folder}: {existing} is not a folder")
    check_folder_takes_files(existing, folder)
    return folder


@contextlib.contextmanager
def write_errors(path):
    """Turn a failed write of `path` (disk full, file too large, I/O error) into a user error of
    one line."""
    try:
        yield
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise Ig65mError(f"cannot write {path}: {_reason(err)}") from None
    except RuntimeError as err:
        if not any(mark in str(err) for mark in _TORCH_WRITE_FAILURES):
            raise
        raise Ig65mError(f"cannot write {path}: the write failed (disk full, or a file size "
                         f"limit?)") from None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = check_writable(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        with write_errors(path):
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
    `path` (an older pair there stays whole); `abort` (or an exception inside the `with` block)
    removes the temporary files.
    """

    def __init__(self, path, *, replace=True):
        self.path = check_writable(path)
        self.replace = replace  # False: fail, rather than replace, a pair another run put there
        if sidecar_path(self.path).is_dir():  # else found only after the .npy is in place
            raise Ig65mError(f"cannot write {sidecar_path(self.path)}, the sidecar of "
                             f"{self.path}: a folder is there")
        recover_pair(self.path)
        fd, self._tmp = _temp_beside(self.path)
        self._file = os.fdopen(fd, "wb")
        with write_errors(self.path):
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
        with write_errors(self.path):
            self._file.write(rows.tobytes())
        self.rows += rows.shape[0]

    def commit(self, meta):
        """Finish the .npy, write the sidecar `meta` (plus `features_sha256`, the .npy's content
        hash), and put the pair in place so that no reader ever sees two halves that disagree."""
        if self.rows == 0:
            self.abort()
            raise Ig65mError(f"no features to write to {self.path}")
        with write_errors(self.path):
            self._file.seek(0)
            self._file.write(_npy_header(self.rows, self.dim))
            self._file.close()
        meta = Sidecar.from_dict(dict(meta, features_sha256=_sha256(self._tmp)),
                                 name=f"sidecar of {self.path}", rows=self.rows).to_dict()
        # Both halves are complete on disk before either moves: a kill before the .npy rename
        # keeps the old pair; a kill after it leaves the new sidecar pending, and `recover_pair`
        # (run by every reader and writer) puts it in place.
        pending = _pending_path(self.path)
        try:
            with atomic_path(pending) as tmp:
                tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        except BaseException:
            self.abort()
            raise
        _hook("IG65M_TEST_KILL_BEFORE_NPY")
        try:
            self._move_into_place()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pending)
            self.abort()
            raise
        _hook("IG65M_TEST_KILL_AFTER_NPY")
        with contextlib.suppress(FileNotFoundError):  # a reader may have rolled it forward already
            os.replace(pending, sidecar_path(self.path))

    def _move_into_place(self):
        """Rename the .npy into place; without `replace`, only if nothing is there yet, checked
        and done in one step (a hard link fails if the name exists): two runs started before
        either had written cannot both succeed, one silently replacing the other's features."""
        if self.replace:
            os.replace(self._tmp, self.path)
            return
        taken = Ig65mError(f"{self.path} was written by another run while this one extracted: "
                           f"left as it is; pass --overwrite to replace it")
        try:
            os.link(self._tmp, self.path)
        except FileExistsError:
            raise taken from None
        except OSError:  # a filesystem without hard links: the check and the rename apart
            if self.path.exists():
                raise taken from None
            os.replace(self._tmp, self.path)
            return
        os.unlink(self._tmp)

    def abort(self):
        if not self._file.closed:
            with contextlib.suppress(OSError):  # flushing may fail as the write did (disk full)
                self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def _hook(name):
    """Tests kill the process here (SIGKILL, no cleanup) to prove a window loses nothing."""
    if os.environ.get(name):
        os.kill(os.getpid(), 9)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pending_path(features_path):
    """Where a sidecar waits while its .npy is renamed into place: one per process."""
    side = sidecar_path(features_path)
    return side.with_name(f".{side.name}.{tempfiles.host()}.{os.getpid()}.pending")


def _pendings(features_path):
    side = sidecar_path(features_path)
    return sorted(side.parent.glob(f".{glob.escape(side.name)}.*.*.pending"))


def recover_pair(features_path):
    """Finish a pair commit that a kill interrupted: a pending sidecar whose `features_sha256` is
    the .npy's content is renamed into place; one of a dead process that does not match (its
    .npy never moved) is removed. Harmless when there is nothing to do."""
    pendings = _pendings(features_path)
    if not pendings:
        return
    actual = _sha256(features_path) if Path(features_path).is_file() else None
    for pending in pendings:
        try:
            wanted = json.loads(pending.read_text(encoding="utf-8")).get("features_sha256")
        except (OSError, ValueError, AttributeError):
            wanted = None
        if wanted is not None and wanted == actual:
            with contextlib.suppress(OSError):
                os.replace(pending, sidecar_path(features_path))
        elif _pending_dead(pending):
            with contextlib.suppress(OSError):
                pending.unlink()


def _pending_dead(pending):
    """True when the process that wrote `pending` ran on this host and is gone."""
    _, host, pid, _ = pending.name.rsplit(".", 3)
    return host == tempfiles.host() and pid.isdigit() and not tempfiles.pid_alive(int(pid))


def save_features(path, features, meta):
    """Write a whole (N, D) array and its sidecar atomically."""
    with FeatureWriter(path) as writer:
        writer.write(features)
        writer.commit(meta)


def load_features(path, *, verify=True):
    """Read a features file -> (float32 array (N, D), sidecar dict or None).

    Raises Ig65mError for a missing file, a non-.npy file, a pickled or non-2-d array, a sidecar
    that `ig65m.sidecar.Sidecar` refuses (not an object, or clips that do not match the rows), or
    (unless `verify=False`, for a file checked already) a sidecar whose `features_sha256` is not
    the .npy's.
    """
    path = Path(path)
    if not path.is_file():
        raise Ig65mError(f"features file not found: {path}")
    with open(path, "rb") as stream:
        if stream.read(6) != _NPY_MAGIC[:6]:
            raise Ig65mError(f"not a .npy features file: {path} (no .npy header; extract writes "
                             f"them)")
    try:
        features = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        raise Ig65mError(f"not a valid .npy features file: {path} ({err})") from None
    if features.ndim != 2:
        raise Ig65mError(f"features in {path} must be 2-d (clips x dims), got shape {features.shape}")
    if not (np.issubdtype(features.dtype, np.integer) or np.issubdtype(features.dtype, np.floating)):
        # complex numbers too: casting them to float32 would silently drop the imaginary part
        raise Ig65mError(f"features in {path} are not real numbers (dtype {features.dtype})")
    path = resolve_output(path)  # a symlinked file's sidecar lies beside its target
    recover_pair(path)
    side = sidecar_path(path)
    sidecar = Sidecar.read(side, rows=features.shape[0])
    meta = None if sidecar is None else sidecar.to_dict()
    if verify:
        _check_pair(path, side, meta)
    return features, meta


def _check_pair(path, side, meta):
    """A sidecar naming the .npy content it was written with must match it."""
    wanted = meta.get("features_sha256") if isinstance(meta, dict) else None
    if wanted is not None and wanted != _sha256(path):
        raise Ig65mError(f"{path} and its sidecar {side} disagree (features_sha256): the "
                         f"features were changed or half-written; extract again with --overwrite")
