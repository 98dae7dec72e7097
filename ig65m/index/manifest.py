"""The index directory layout and its manifest."""

import json
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
    missing = {"dimension", "metric", "count", "index_key"} - set(manifest)
    if missing:
        raise Ig65mError(f"{path} lacks {', '.join(sorted(missing))}")
    return manifest
