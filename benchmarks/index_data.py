"""Benchmark collections built from real clip features, so that index recall is not flattered.

Real features (extracted from the shared sample videos) are tiled to the wanted size as "virtual
videos": each samples points along one real video's feature trajectory (between adjacent clips),
is centred, gets per-dimension Gaussian noise scaled by the real features' spread, is turned by its
own random signed permutation of the dimensions (an orthogonal map: the distances inside a video
stay the real ones, while different virtual videos overlap instead of forming far-apart, easy
clusters) and moved by its own offset of half the real spread per dimension. Without the offset
the clips near the real mean of every virtual video fell in one place: at 1M clips one IVF list
held 98,855 of them (Faiss imbalance factor 43.6), and a search cost 27 ms. The noise level is calibrated so that the collection's
neighbour-distance ratio (median distance to the 1st / to the 10th nearest neighbour) equals the
one measured on the real features themselves.
"""

from pathlib import Path

import faiss
import numpy as np

from ig65m.fileio import FeatureWriter, load_features

CLIPS_PER_VIDEO = 500
VIDEO_OFFSET = 0.5  # a virtual video's offset from the real mean, in real spreads per dimension


def neighbour_ratio(database, queries, exclude_self=False, k=10):
    """Median over queries of d(1st neighbour) / d(k-th neighbour), exact search."""
    distances, _ = faiss.knn(np.ascontiguousarray(queries), np.ascontiguousarray(database),
                             k + int(exclude_self))
    distances = np.sqrt(np.maximum(distances[:, int(exclude_self):], 0))
    return float(np.median(distances[:, 0] / np.maximum(distances[:, k - 1], 1e-12)))


class RealTiles:
    """Virtual videos drawn from the real feature files in `folder` (see the module docstring)."""

    def __init__(self, folder):
        self.videos = [load_features(path)[0].astype("f4")
                       for path in sorted(Path(folder).glob("*.npy"))]
        if not self.videos or min(len(v) for v in self.videos) < 2:
            raise SystemExit(f"no real features in {folder}: extract some first, e.g.\n  ig65m "
                             "extract ../shared/data/videos --output-dir FOLDER --weights random:0 "
                             "--step 4")
        real = np.concatenate(self.videos)
        self.real = real
        self.dim = real.shape[1]
        self.mean = real.mean(axis=0)
        self.spread = real.std(axis=0) + 1e-6
        self.sigma = 0.0

    def real_ratio(self):
        return neighbour_ratio(self.real, self.real, exclude_self=True)

    def video(self, number, rows, seed):
        """`rows` clips of virtual video `number` (its rotation depends on the number only)."""
        turn = np.random.default_rng(number)
        source = self.videos[number % len(self.videos)]
        permutation = turn.permutation(self.dim)
        signs = turn.choice(np.array([-1, 1], "f4"), self.dim)
        offset = VIDEO_OFFSET * self.spread * turn.standard_normal(self.dim, dtype="f4")
        rng = np.random.default_rng([number, seed])
        where = np.sort(rng.uniform(0, len(source) - 1, rows))
        left = np.floor(where).astype(int)
        right = np.minimum(left + 1, len(source) - 1)
        mix = (where - left)[:, None].astype("f4")
        points = source[left] * (1 - mix) + source[right] * mix - self.mean
        points += self.sigma * self.spread * rng.standard_normal(points.shape, dtype="f4")
        return (self.mean + offset + signs * points[:, permutation]).astype("f4")

    def collection(self, count, seed=0):
        """Yields (video number, rows) for `count` clips in videos of CLIPS_PER_VIDEO."""
        for number, first in enumerate(range(0, count, CLIPS_PER_VIDEO)):
            yield number, self.video(number, min(CLIPS_PER_VIDEO, count - first), seed)

    def queries(self, count, videos, seed=1):
        """Held-out clips: new points (new noise) of randomly chosen indexed virtual videos."""
        rng = np.random.default_rng(seed)
        return np.concatenate([self.video(int(v), 1, seed + i)
                               for i, v in enumerate(rng.integers(0, videos, count))])

    def calibrate(self, count, target, probes=200, steps=7):
        """Binary search of the noise level giving neighbour ratio `target` at `count` clips."""
        low, high = 0.0, 0.5
        queries = self.queries(probes, -(-count // CLIPS_PER_VIDEO), seed=99)
        for _ in range(steps):
            self.sigma = (low + high) / 2
            ratio = self.ratio_of(count, queries)
            low, high = (self.sigma, high) if ratio < target else (low, self.sigma)
        self.sigma = (low + high) / 2
        return self.ratio_of(count, queries)

    def ratio_of(self, count, queries):
        heap = faiss.ResultHeap(len(queries), 10)
        first = 0
        for _, rows in self.collection(count):
            distances, ids = faiss.knn(queries, rows, min(10, len(rows)))
            heap.add_result(distances, ids + first)
            first += len(rows)
        heap.finalize()
        distances = np.sqrt(np.maximum(heap.D, 0))
        return float(np.median(distances[:, 0] / np.maximum(distances[:, 9], 1e-12)))

    def write(self, folder, count):
        """Feature files with sidecars, one per virtual video, as `extract` writes them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for number, rows in self.collection(count):
            with FeatureWriter(folder / f"video{number:05d}.npy") as writer:
                writer.write(rows)
                writer.commit({"source": f"/videos/video{number:05d}.mp4", "model": "tiled-real",
                               "clips": [[i * 0.5, i * 0.5 + 1.0] for i in range(len(rows))]})


def exact_neighbours(tiles, count, queries, k=10):
    """Brute-force L2 top-k of `queries` over the whole collection -> ids (nq, k)."""
    heap = faiss.ResultHeap(len(queries), k)
    first = 0
    for _, rows in tiles.collection(count):
        distances, ids = faiss.knn(queries, rows, min(k, len(rows)))
        heap.add_result(distances, ids + first)
        first += len(rows)
    heap.finalize()
    return heap.I
