"""Where the source videos of an index are, and which of them may be served.

At build time every clip's source video is recorded as an absolute path (`locate_source`: as the
sidecar says when absolute; else relative to index-build's working folder, or to the feature
file's folder, whichever exists), after `--path-prefix OLD=NEW` rewriting; the manifest records
the folders those videos lie in (`media_roots`).

At serve time `MediaRoots.resolve` turns a recorded path into a file that may be served, or
refuses: a path with a NUL byte, a backslash or a `..` part (403), a path that is not inside a root
once every symlink is resolved (403), or no regular file there (404). The roots are the recorded
folders, or only the `--media-root` folders when given; a video recorded under an old root that
is not there any more is looked for at the same relative place under each `--media-root`.
"""

import os
from pathlib import Path, PurePosixPath


class Refused(Exception):
    """A media path that is not served: `status` 403 (not allowed) or 404 (not there)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def parse_prefixes(pairs):
    """["OLD=NEW", ...] -> [(OLD, NEW)]; ValueError for a pair without '='."""
    parsed = []
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old:
            raise ValueError(f"--path-prefix takes OLD=NEW, got {pair!r}")
        parsed.append((old, new))
    return parsed


def locate_source(source, features_path, prefixes=(), cwd=None):
    """The absolute path to record for a sidecar's `source` (None stays None)."""
    if not source:
        return source
    for old, new in prefixes:
        if source.startswith(old):
            source = new + source[len(old):]
            break
    if os.path.isabs(source):
        return _normal(source)
    candidates = [os.path.join(cwd or os.getcwd(), source),
                  os.path.join(os.path.dirname(os.path.abspath(features_path)), source)]
    return _normal(next((path for path in candidates if os.path.exists(path)), candidates[0]))


def _normal(path):
    """`path` normalised, except one holding '..': kept as it is, for the server to refuse."""
    return path if _climbs(path) else os.path.normpath(path)


def _climbs(path):
    return ".." in PurePosixPath(path).parts


def recorded_roots(sources):
    """The distinct folders holding `sources` (absolute paths without '..'), sorted."""
    return sorted({os.path.dirname(source) for source in sources
                   if source and os.path.isabs(source) and not _climbs(source)})


class MediaRoots:
    """The folders media may be served from. `roots`: folders given with --media-root (they alone
    are served when any is given); `recorded`: the index's own `media_roots`."""

    def __init__(self, roots=(), recorded=()):
        self.recorded = [os.path.normpath(root) for root in recorded]
        given = [os.path.realpath(root) for root in roots]
        self.roots = given or [os.path.realpath(root) for root in self.recorded]

    def resolve(self, recorded_path):
        """The real path of a recorded video that may be served; Refused else."""
        path = _checked(recorded_path)
        for candidate in self._candidates(path):
            real = os.path.realpath(candidate)
            if not os.path.exists(real):
                continue
            if not any(_inside(real, root) for root in self.roots):
                raise Refused(403, "this file lies outside the media folders")
            if not os.path.isfile(real):
                raise Refused(404, "not a file")
            return Path(real)
        raise Refused(404, "the video file is not there")

    def _candidates(self, path):
        if not os.path.isabs(path):
            return [os.path.join(root, path) for root in self.roots]
        moved = [os.path.join(root, os.path.relpath(path, old)) for old in self.recorded
                 if _inside(path, old) for root in self.roots]
        return [path, *moved]


def _checked(recorded_path):
    text = str(recorded_path or "")
    if not text:
        raise Refused(404, "this clip has no recorded video")
    if "\x00" in text or "\\" in text:
        raise Refused(403, "a NUL byte or a backslash in a media path")
    if _climbs(text):
        raise Refused(403, "'..' in a media path")
    return text


def _inside(path, root):
    return os.path.commonpath([path, root]) == root
