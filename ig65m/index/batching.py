"""Batching under load: concurrent searches of one process go to Faiss as one call.

Leader/follower, so that a lone request pays nothing: the first request to arrive becomes the
leader and searches at once in its own thread. Requests that arrive while a search runs queue up;
when it ends, the leader hands the lead to the oldest queued request, which takes every queued
request with the same searcher, k and search breadth (up to `max_rows` vectors) into one Faiss
call. Only under load (the previous batch held more than one request) does a leader first wait up
to `window` seconds for more requests to join, and only until as many rows as that batch had.

Batching never changes an answer: `max_rows` stays below Faiss's `distance_compute_blas_threshold`,
so a batched query takes the same exact-distance code path as one searched alone.
"""

import threading

import faiss
import numpy as np


def default_max_rows():
    """The most rows one batch may hold: below the query count where Faiss switches to BLAS
    distances (rounding differs there, and with it the order of near ties)."""
    return max(1, min(64, faiss.cvar.distance_compute_blas_threshold - 1))


class _Job:
    __slots__ = ("searcher", "vectors", "k", "breadth", "done", "lead", "answer", "error")

    def __init__(self, searcher, vectors, k, breadth):
        self.searcher, self.vectors, self.k, self.breadth = searcher, vectors, k, breadth
        self.done = threading.Event()
        self.lead = False
        self.answer = self.error = None

    def key(self):
        return id(self.searcher), self.k, self.breadth


class Batcher:
    """`search(searcher, vectors, k, breadth)` -> searcher.search_arrays(...) of those vectors,
    searched together with whatever other threads asked for meanwhile."""

    def __init__(self, window=0.0005, max_rows=None):
        self.window = window
        self.max_rows = max_rows or default_max_rows()
        self._cond = threading.Condition()
        self._queue = []
        self._leading = False
        self._last_batch = 1

    def search(self, searcher, vectors, k, breadth=None):
        job = _Job(searcher, vectors, k, breadth)
        with self._cond:
            self._queue.append(job)
            job.lead = not self._leading
            self._leading = True
            self._cond.notify()
        if not job.lead:
            job.done.wait()
        if job.lead:
            self._lead(job)
        if job.error is not None:
            raise job.error
        return job.answer

    def _lead(self, job):
        """Search one batch holding `job`, answer its requests, then pass the lead on."""
        try:
            batch = self._take(job)
            self._run(batch)
        finally:
            with self._cond:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._leading = False

    def _take(self, job):
        """`job` and the queued jobs searched with it: same key, in arrival order, while the rows
        stay within max_rows."""
        with self._cond:
            if self.window > 0 and self._last_batch > 1:
                wanted = min(self._last_batch, self.max_rows)
                self._cond.wait_for(lambda: self._rows(job.key()) >= wanted, self.window)
            batch, rows, rest = [job], len(job.vectors), []
            for queued in self._queue:
                if queued is job:
                    continue
                if queued.key() == job.key() and rows + len(queued.vectors) <= self.max_rows:
                    batch.append(queued)
                    rows += len(queued.vectors)
                else:
                    rest.append(queued)
            self._queue = rest
            self._last_batch = len(batch)
        return batch

    def _rows(self, key):
        return sum(len(queued.vectors) for queued in self._queue if queued.key() == key)

    @staticmethod
    def _run(batch):
        first = batch[0]
        try:
            answers = search_together(first.searcher, [job.vectors for job in batch], first.k,
                                      first.breadth)
        except Exception as err:  # every request of the batch gets the error, none hangs
            for queued in batch:
                queued.error = err
                queued.done.set()
            return
        for queued, found in zip(batch, answers):
            queued.answer = found
            queued.done.set()


def search_together(searcher, parts, k, breadth):
    """The vectors of several queries (`parts`, arrays (n_i, D)) searched in one Faiss call ->
    [(distances, ids)] of each part, in order."""
    if len(parts) == 1:
        return [searcher.search_arrays(parts[0], k, breadth)]
    distances, ids = searcher.search_arrays(np.concatenate(parts), k, breadth)
    ends = np.cumsum([len(part) for part in parts]).tolist()
    return [(distances[end - len(part):end], ids[end - len(part):end])
            for part, end in zip(parts, ends)]
