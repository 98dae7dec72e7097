"""Per-clip metadata of an index in SQLite (standard library), keyed by the Faiss id.

Two tables: `files` (one row per feature file: its path, source video, model, first id, clip count)
and `clips` (one row per clip: id == Faiss id, file, clip number, start/end seconds). About 40 bytes a
clip, so tens of millions of clips stay a few hundred MB on disk and are read only on demand.
"""

import sqlite3
import threading
from pathlib import Path

import numpy as np

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

_CLIP_QUERY = "SELECT id, file, clip, start, end FROM clips WHERE id IN ({})"
_MAX_ID = 2 ** 63 - 1  # SQLite integers are signed 64-bit


class MetadataStore:
    """Clip metadata in `path` (SQLite). A read-only store opens one connection at once and keeps
    it: it is shared by every thread (under a lock), and it keeps reading the same file even when an
    `--append` swaps a new index directory in, so metadata always matches the index loaded with it.
    """

    def __init__(self, path, *, writable=False):
        self.path = Path(path)
        self.writable = writable
        self._local = threading.local()
        self._lock = threading.Lock()
        self._shared = None
        self._files = None
        if writable:
            self._connection().executescript(_SCHEMA)
            return
        if not self.path.is_file():
            raise Ig65mError(f"metadata not found: {self.path}")
        self._shared = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                       check_same_thread=False)

    def _connection(self):
        if self._shared is not None:
            return self._shared
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path)
            self._local.connection = connection
        return connection

    def check(self, count):
        """Refuse a metadata file that is not an SQLite database, is damaged, or does not hold the
        `count` clips of its index: Ig65mError with one line, instead of a 500 on every request."""
        try:
            with self._lock:
                verdict = self._shared.execute("PRAGMA quick_check").fetchone()[0]
                clips, top = self._shared.execute("SELECT COUNT(*), MAX(id) FROM clips").fetchone()
                self._load_files()
        except sqlite3.DatabaseError as err:
            raise Ig65mError(f"{self.path} is not a readable index metadata database ({err})") from None
        if verdict != "ok":
            raise Ig65mError(f"{self.path} is damaged (SQLite quick_check: {verdict})")
        if clips != count or (count and top != count - 1):
            raise Ig65mError(f"{self.path} lists {clips} clips, the index holds {count}: "
                             "rebuild the index")

    def _load_files(self):
        """The files table in memory: a search then needs one query on `clips`, no join."""
        rows = self._connection().execute("SELECT id, COALESCE(source, path), path FROM files")
        self._files = {file_id: (path, features) for file_id, path, features in rows}

    def has_file(self, path):
        row = self._connection().execute("SELECT 1 FROM files WHERE path = ?", (str(path),))
        return row.fetchone() is not None

    def add_file(self, path, *, source, model, first_id, clip_times):
        """Record a feature file whose clips take ids first_id .. first_id + len(clip_times) - 1.

        `clip_times`: a list of (start, end) seconds, or of (None, None) where no sidecar says.
        """
        connection = self._connection()
        self._files = None
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
        unknown ids are absent. `path` is the source video, or the feature file without a sidecar.
        One query for all of them (in chunks of 900: SQLite caps bound parameters)."""
        ids = sorted({int(i) for i in ids if 0 <= i <= _MAX_ID})
        found = {}
        with self._lock:
            if self._files is None:
                self._load_files()
            for offset in range(0, len(ids), 900):
                chunk = ids[offset:offset + 900]
                rows = self._connection().execute(_CLIP_QUERY.format(",".join("?" * len(chunk))),
                                                  chunk)
                for clip_id, file_id, clip, start, end in rows:
                    found[clip_id] = _clip_dict(clip_id, self._files[file_id], clip, start, end)
        return found

    def table(self, count):
        """Every clip's metadata as a `ClipTable` in memory (24 bytes a clip), read in chunks."""
        rows = np.empty(count, ClipTable.ROW)
        with self._lock:
            self._load_files()
            cursor = self._connection().execute(
                "SELECT id, file, clip, COALESCE(start, 'nan'), COALESCE(end, 'nan') FROM clips")
            while chunk := cursor.fetchmany(65536):
                ids, file_ids, numbers, starts, ends = zip(*chunk)
                ids = np.array(ids)
                rows["file"][ids], rows["clip"][ids] = file_ids, numbers
                rows["start"][ids], rows["end"][ids] = np.array(starts, float), np.array(ends, float)
        return ClipTable(self._files, rows)

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
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def _clip_dict(clip_id, file, clip, start, end):
    """A clip's metadata dict; a NaN start or end (the clip table's "no time recorded") is None."""
    path, features = file
    return {"id": clip_id, "path": path, "clip": clip, "start": None if start != start else start,
            "end": None if end != end else end, "features": features}


class ClipTable:
    """Clip metadata held in one array indexed by clip id (`rows`, of ROW): a search's results cost
    a few array reads, not an SQLite query (whose page walks run cold after Faiss has swept the
    CPU caches)."""

    ROW = np.dtype([("file", "<i4"), ("clip", "<i4"), ("start", "<f8"), ("end", "<f8")])

    def __init__(self, files, rows):
        self.files, self.rows = files, rows

    def __len__(self):
        return len(self.rows)

    def lookup(self, ids):
        """{id: metadata dict} of clip ids `ids` (all within 0 .. len - 1)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        return {clip_id: _clip_dict(clip_id, self.files[file_id], clip, start, end)
                for clip_id, (file_id, clip, start, end) in zip(ids.tolist(), self.rows[ids].tolist())}

    def hit(self, clip_id, distance):
        """The result dict {"id", "path", "clip", "start", "end", "features", "distance"} of clip
        `clip_id` found at `distance`."""
        file_id, clip, start, end = self.rows.item(clip_id)
        hit = _clip_dict(clip_id, self.files[file_id], clip, start, end)
        hit["distance"] = distance
        return hit

    def path(self, clip_id):
        """The video (or feature file) of clip `clip_id`."""
        return self.files[self.rows.item(clip_id)[0]][0]

    def hits(self, ids, distances):
        """Rows of `hit` dicts of a search's (n, k) `ids` and `distances`, leaving out the -1 ids
        Faiss pads rows with. Row by row in plain Python: a search has just swept the CPU caches,
        and there each numpy call and object costs microseconds (a 1M-clip search's 10 results
        took 29 us through gathers and copied dicts, 17-19 us this way; warm, 9.5 and 7.5)."""
        hit = self.hit
        return [[hit(clip_id, distance) for clip_id, distance in zip(row_ids, row_distances)
                 if clip_id >= 0]
                for row_ids, row_distances in zip(ids.tolist(), distances.tolist())]
