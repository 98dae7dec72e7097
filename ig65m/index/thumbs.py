"""One small JPEG per clip, made lazily by the server and cached on disk beside the index.

A thumbnail is the first frame at or after the middle of the clip, found by a timestamp seek
(PyAV seeks to the keyframe before, then decodes forward), scaled to THUMB_WIDTH pixels wide. They
are made on first request rather than at build time: building stays as fast as before, and only
the clips people look at cost anything. The cache (`<index_dir>.thumbs/`, beside the index folder,
so that an `--append` swap of the index keeps it) has a size bound: past it, the least recently
written files are removed until it is back under 90% of the bound.
"""

import io
import os
import threading
from pathlib import Path

from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path

THUMB_WIDTH = 160
DEFAULT_CACHE_MB = 256


class ThumbnailCache:
    """Thumbnails of clips in `folder`, at most `max_bytes` in all."""

    def __init__(self, folder, max_bytes=DEFAULT_CACHE_MB << 20):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total = None  # bytes in the cache, counted once, then kept up to date
        self._making = threading.BoundedSemaphore(2)  # decoding is CPU work: two at a time

    def path(self, clip_id, video, seconds):
        """The JPEG of clip `clip_id` of `video` (a real path) at `seconds`, made if missing: its
        path, or the JPEG in memory (a BytesIO) when the cache cannot be written (an index on a
        read-only volume), so that the page still shows it."""
        target = self.folder / f"{int(clip_id) // 1000:06d}" / f"{int(clip_id)}.jpg"
        if target.is_file():
            return target
        with self._making:
            if not target.is_file():
                image = frame_at(video, seconds)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(target) as tmp:
                        image.save(tmp, format="JPEG", quality=80)
                except (OSError, Ig65mError):
                    jpeg = io.BytesIO()
                    image.save(jpeg, format="JPEG", quality=80)
                    jpeg.seek(0)
                    return jpeg
                self._added(target.stat().st_size)
        return target

    def _added(self, size):
        with self._lock:
            if self._total is None:
                self._total = sum(entry.stat().st_size for entry in self.folder.glob("*/*.jpg"))
            else:
                self._total += size
            if self._total > self.max_bytes:
                self._total = self._trim()

    def _trim(self):
        """Remove the oldest thumbnails until under 90% of the bound -> bytes left."""
        files = sorted((entry.stat().st_mtime, entry.stat().st_size, entry)
                       for entry in self.folder.glob("*/*.jpg"))
        total = sum(size for _, size, _ in files)
        for _, size, entry in files:
            if total <= 0.9 * self.max_bytes:
                break
            entry.unlink(missing_ok=True)
            total -= size
        return total


def frame_at(video, seconds, width=THUMB_WIDTH):
    """The first frame of `video` at or after `seconds` (the last one before the end else), as a
    PIL image `width` pixels wide."""
    import av  # here, not at import: a server start-up stays as light as before the page

    with av.open(os.fspath(video)) as container:
        if not container.streams.video:  # e.g. the file was replaced by a sound file
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        target = start + max(float(seconds), 0.0)
        if stream.time_base:
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            if frame.time is not None and frame.time >= target - 1e-6:
                break
        if chosen is None:
            raise ValueError("no frame decoded")
        image = chosen.to_image()
    height = max(1, round(image.height * width / image.width))
    return image.resize((width, height))
