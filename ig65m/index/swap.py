"""Writing an index directory safely: one writer at a time, and a swap that a kill cannot lose.

- `locked(index_dir)`: an exclusive `fcntl.flock` on `.<name>.lock` beside the index (present only
  while held); a second `index-build` on the same index waits for the first (and says so) instead
  of overwriting it.
- `staging_dir(index_dir)`: the new index is built in a temporary folder beside the target.
- `replace_dir(staged, index_dir)`: the old folder is renamed aside (`.<name>.<host>.<pid>.*.old`),
  the new one into place, and the old one removed. A kill between the two renames leaves no folder
  at `index_dir`; `recover(index_dir)`, run by every reader and writer, renames the old one back.
"""

import contextlib
import fcntl
import glob
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from ig65m import tempfiles
from ig65m.errors import Ig65mError
from ig65m.fileio import resolve_output

_RETRIES = 50  # a reader finding the folder mid-swap retries for up to 50 x 0.02 s


def lock_path(index_dir):
    return index_dir.parent / f".{index_dir.name}.lock"


@contextlib.contextmanager
def locked(index_dir):
    """Hold the exclusive write lock of `index_dir` (a resolved Path) for the block.

    The lock file exists only while someone holds or awaits it: the holder removes it before
    letting go, and a waiter that then gets the lock of a removed file tries again."""
    path = lock_path(index_dir)
    said = False
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                print(f"waiting for another index-build on {index_dir} to finish",
                      file=sys.stderr, flush=True)
                said = True
            fcntl.flock(handle, fcntl.LOCK_EX)
        if _same_file(handle, path):
            break
        handle.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        handle.close()


def _same_file(handle, path):
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _is_locked(index_dir):
    path = lock_path(index_dir)
    if not path.exists():
        return False
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _aside(index_dir):
    """Old copies of `index_dir` renamed aside by swaps, newest first."""
    found = [path for path in index_dir.parent.glob(f".{glob.escape(index_dir.name)}.*.old")
             if tempfiles.owner(path) and (path / "index").is_dir()]
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def recover(index_dir, *, holding_lock=False):
    """Put back the old index when a kill struck between the two renames of a swap, and sweep the
    temporaries of dead processes beside it -> the resolved `index_dir`. Readers call this too:
    while a live writer holds the lock, a missing folder is only mid-swap, so they wait a moment."""
    try:
        index_dir = resolve_output(index_dir)
    except Ig65mError:  # a symlink loop: not an index, as the caller will say
        return Path(index_dir)
    if not index_dir.parent.is_dir():
        return index_dir
    busy = (lambda: False) if holding_lock else (lambda: _is_locked(index_dir))
    for _ in range(_RETRIES):
        if index_dir.exists() or not _aside(index_dir) or not busy():
            break
        time.sleep(0.02)
    if not index_dir.exists() and not busy():
        for old in _aside(index_dir)[:1]:
            with contextlib.suppress(OSError):
                os.rename(old / "index", index_dir)
                print(f"recovered {index_dir} from an interrupted update", file=sys.stderr)
    if not busy():
        tempfiles.sweep(index_dir.parent, kinds=("tmp",))
        if index_dir.exists():  # an old copy whose removal a kill cut short
            tempfiles.sweep(index_dir.parent, kinds=("old",), target=index_dir)
    return index_dir


@contextlib.contextmanager
def staging_dir(index_dir):
    """A temporary folder beside `index_dir`, removed unless the block renames it away."""
    tmp = tempfiles.make_dir(index_dir)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the index is an ordinary folder
    try:
        yield tmp
    except (OSError, sqlite3.Error) as err:  # a full disk, an I/O error
        raise Ig65mError(f"cannot write {index_dir}: {getattr(err, 'strerror', None) or err}") \
            from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(staged, index_dir):
    """Move `staged` onto `index_dir`: the old directory is renamed aside first, then removed."""
    if not index_dir.exists():
        os.rename(staged, index_dir)
        return
    old = tempfiles.make_dir(index_dir, kind="old")
    os.rename(index_dir, old / "index")
    if os.environ.get("IG65M_TEST_KILL_MID_SWAP"):
        os.kill(os.getpid(), 9)
    os.rename(staged, index_dir)
    shutil.rmtree(old, ignore_errors=True)
