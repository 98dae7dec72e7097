"""The index a running server answers from, swapped for a new one when `index-build --append`
replaces it.

A watcher thread stats the manifest every `interval` seconds (one `stat`, nothing read); when its
fingerprint changes, the new index is loaded completely beside the old one and only then put in
place with one reference assignment. A request takes `live.current` once and uses that searcher to
the end, so no request ever sees a half-loaded index; the old one is freed when its last request
ends. `check_now()` (SIGHUP, `POST /reload`) wakes the watcher at once.
"""

import logging
import threading

from ig65m.errors import Ig65mError
from ig65m.index.manifest import manifest_signature
from ig65m.index.middleware import write_line
from ig65m.index.search import Searcher

log = logging.getLogger("ig65m.index.live")


class LiveIndex:
    """`current`: the Searcher of `index_dir` now; `reload()` swaps in a changed index."""

    def __init__(self, index_dir, interval=1.0):
        self.index_dir = index_dir
        self.interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._signature = manifest_signature(index_dir)
        self.current = Searcher(index_dir)

    def reload(self):
        """Load the index again if its manifest changed since the last load -> True if swapped.
        A damaged or half-written new index keeps the old one serving (Ig65mError raised)."""
        with self._lock:
            signature = manifest_signature(self.index_dir)
            if signature is None or signature == self._signature:
                return False
            searcher = Searcher(self.index_dir)
            if manifest_signature(self.index_dir) != signature:
                return False  # swapped again while loading: the next check loads the newest
            self.current, self._signature = searcher, signature
        write_line(f"reloaded {self.index_dir}: {searcher.count} clips")  # workers all say it
        return True

    def check_now(self):
        """Ask the watcher thread to check at once (safe in a signal handler)."""
        self._wake.set()

    def watch(self):
        """Start the watcher thread (daemon): polls every `interval` s, or 0 for signals only."""
        threading.Thread(target=self._watch, name="index-watcher", daemon=True).start()

    def _watch(self):
        while True:
            self._wake.wait(self.interval or None)
            self._wake.clear()
            try:
                self.reload()
            except Ig65mError as err:
                write_line(f"warning: keeping the loaded index: {err}")
