"""Temporary names beside an output, and the sweeping of those that dead processes left behind.

Every temporary file or folder is named `.<target name>.<host>.<pid>.<random>.<kind>`, so a later run
in the same folder can tell whose it is: those of processes that no longer run on this host are
removed (`sweep`); those of live processes, or of other hosts sharing the folder, are never touched.
"""

import contextlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

KINDS = ("tmp", "old")
_PATTERN = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\."
                      r"(?P<kind>" + "|".join(KINDS) + r")$")


def host():
    """This machine's name, as it appears in temporary names (dots and oddities become '-')."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "host"


def prefix(target):
    """The start of the temporary names for `target` made by this process."""
    return f".{Path(target).name}.{host()}.{os.getpid()}."


def make_file(target, kind="tmp"):
    """A new empty temporary file beside `target` (in its folder) -> (fd, path)."""
    fd, path = tempfile.mkstemp(prefix=prefix(target), suffix=f".{kind}", dir=Path(target).parent)
    return fd, Path(path)


def make_dir(target, kind="tmp"):
    """A new empty temporary folder beside `target` -> its path."""
    return Path(tempfile.mkdtemp(prefix=prefix(target), suffix=f".{kind}", dir=Path(target).parent))


def owner(path):
    """(host, pid, kind) of a temporary name made here, or None for any other name."""
    match = _PATTERN.match(Path(path).name)
    return (match["host"], int(match["pid"]), match["kind"]) if match else None


def pid_alive(pid):
    """True while process `pid` exists on this host (a zombie or another user's counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(folder, kinds=KINDS, target=None):
    """Temporary names in `folder` left by processes of this host that no longer run (only those
    made for `target`, when given)."""
    here = host()
    start = f".{Path(target).name}." if target is not None else "."
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            info = owner(entry.name)
            if (info and info[0] == here and info[2] in kinds and entry.name.startswith(start)
                    and not pid_alive(info[1])):
                found.append(Path(entry.path))
    return found


def sweep(folder, kinds=KINDS, target=None):
    """Remove the stale temporaries of `folder` (see `stale`); errors are ignored."""
    for path in stale(folder, kinds, target):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


_SWEPT = set()


def sweep_once(folder):
    """`sweep` the temporary files and folders of `folder` the first time this process writes
    there (later writes in a folder of many files would otherwise scan it again each time)."""
    key = os.path.realpath(folder)
    if key not in _SWEPT:
        _SWEPT.add(key)
        sweep(folder, kinds=("tmp",))
