"""The index directory layout and its manifest."""

import json
import os
from pathlib import Path

from ig65m.errors import Ig65mError

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.sqlite"
MANIFEST_FILE = "manifest.json"
METRICS = ("l2", "cosine")


def read_manifest(index_dir):
    """The manifest of an index directory; Ig65mError when it is not one."""
    from ig65m.index.swap import recover  # swap imports fileio; manifest stays light

    index_dir = Path(index_dir)
    recover(index_dir)
    path = index_dir / MANIFEST_FILE
    if not index_dir.is_dir():
        raise Ig65mError(f"index directory not found: {index_dir}")
    if not path.is_file() or not (index_dir / INDEX_FILE).is_file():
        raise Ig65mError(f"{index_dir} is not an index directory (no {MANIFEST_FILE} or {INDEX_FILE})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise Ig65mError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise Ig65mError(f"{path} must hold a JSON object, not {type(manifest).__name__}")
    missing = {"dimension", "metric", "count", "index_key"} - set(manifest)
    if missing:
        raise Ig65mError(f"{path} lacks {', '.join(sorted(missing))}")
    return manifest


def resolve_index_dir(index_dir):
    """The real folder holding an index's files now (symbolic links followed): a reader opens every
    file of one load under it, so a swap by `index-build --append` never mixes two versions."""
    return Path(os.path.realpath(index_dir))


def manifest_signature(index_dir):
    """A cheap fingerprint of the index now in `index_dir` (one stat), or None while it is being
    swapped: it changes whenever `index-build --append` puts a new index in place."""
    try:
        found = os.stat(resolve_index_dir(index_dir) / MANIFEST_FILE)
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_mtime_ns, found.st_size
