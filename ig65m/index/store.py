"""Per-clip metadata of an index in SQLite (standard library), keyed by the Faiss id.

Two tables: `files` (one row per feature file: its path, source video, model, first id, clip count)
and `clips` (one row per clip: id == Faiss id, file, clip number, start/end seconds). About 40 bytes a
clip, so tens of millions of clips stay a few hundred MB on disk and are read only on demand.
"""

import sqlite3
import threading
from pathlib import Path

from ig65m.errors import Ig65mError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    source TEXT,
    model TEXT,
    first_id INTEGER NOT NULL,
    clips INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY,
    file INTEGER NOT NULL REFERENCES files(id),
    clip INTEGER NOT NULL,
    start REAL,
    end REAL
);
"""

_CLIP_QUERY = """
SELECT clips.id, COALESCE(files.source, files.path), clips.clip, clips.start, clips.end, files.path
FROM clips JOIN files ON files.id = clips.file WHERE clips.id IN ({})
"""


class MetadataStore:
    """Clip metadata in `path` (SQLite). Read-only stores are safe to share between threads: each
    thread gets its own connection."""

    def __init__(self, path, *, writable=False):
        self.path = Path(path)
        self.writable = writable
        if not writable and not self.path.is_file():
            raise Ig65mError(f"metadata not found: {self.path}")
        self._local = threading.local()
        if writable:
            self._connection().executescript(_SCHEMA)

    def _connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self.writable:
                connection = sqlite3.connect(self.path)
            else:
                connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                             check_same_thread=False)
            self._local.connection = connection
        return connection

    def has_file(self, path):
        row = self._connection().execute("SELECT 1 FROM files WHERE path = ?", (str(path),))
        return row.fetchone() is not None

    def add_file(self, path, *, source, model, first_id, clip_times):
        """Record a feature file whose clips take ids first_id .. first_id + len(clip_times) - 1.

        `clip_times`: a list of (start, end) seconds, or of (None, None) where no sidecar says.
        """
        connection = self._connection()
        cursor = connection.execute(
            "INSERT INTO files (path, source, model, first_id, clips) VALUES (?, ?, ?, ?, ?)",
            (str(path), source, model, first_id, len(clip_times)))
        file_id = cursor.lastrowid
        connection.executemany(
            "INSERT INTO clips (id, file, clip, start, end) VALUES (?, ?, ?, ?, ?)",
            ((first_id + number, file_id, number, start, end)
             for number, (start, end) in enumerate(clip_times)))

    def commit(self):
        self._connection().commit()

    def count(self):
        return self._connection().execute("SELECT COUNT(*) FROM clips").fetchone()[0]

    def clips(self, ids):
        """Metadata of clips `ids` -> {id: {"id", "path", "clip", "start", "end", "features"}};
        unknown ids are absent. `path` is the source video, or the feature file without a sidecar."""
        ids = sorted({int(i) for i in ids})
        found = {}
        for offset in range(0, len(ids), 900):  # SQLite caps bound parameters per statement
            chunk = ids[offset:offset + 900]
            query = _CLIP_QUERY.format(",".join("?" * len(chunk)))
            for clip_id, path, clip, start, end, features in self._connection().execute(query, chunk):
                found[clip_id] = {"id": clip_id, "path": path, "clip": clip, "start": start,
                                  "end": end, "features": features}
        return found

    def videos(self):
        """Every indexed video, in id order -> [{"video" (file id), "path" (source video, or the
        feature file), "first_id", "clips", "duration" (end of its last clip, None unknown)}]."""
        rows = self._connection().execute(
            "SELECT files.id, COALESCE(files.source, files.path), files.first_id, files.clips, "
            "MAX(clips.end) FROM files JOIN clips ON clips.file = files.id "
            "GROUP BY files.id ORDER BY files.id")
        return [{"video": video, "path": path, "first_id": first, "clips": clips, "duration": end}
                for video, path, first, clips, end in rows]

    def close(self):
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
