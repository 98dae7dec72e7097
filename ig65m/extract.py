"""The extraction pipeline: source -> frames -> clips -> transforms -> backend -> features -> writer.

A background thread decodes, windows and preprocesses clips into batches while the model runs on
the previous batch, so decoding overlaps inference. Every stage is an iterator: memory does not
grow with the length of the video.
"""

import itertools
import queue
import sys
import threading
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from ig65m.clips import clip_windows, expected_clips, source_frames
from ig65m.defaults import BACKENDS
from ig65m.device import resolve_device
from ig65m.embedder import ClipEmbedder, run_torch
from ig65m.errors import Ig65mError
from ig65m.fileio import FeatureWriter, check_writable
from ig65m.flow import flow_frames
from ig65m.memory import check_fits
from ig65m.models import DEFAULT_MODEL, get_model, get_spec
from ig65m.preprocess import resolve as resolve_preprocess
from ig65m.transforms import transform_for
from ig65m.video import is_live, probe

CLIP_OPTIONS = ("frame_size", "clip_frames", "step", "fps", "crop_size", "frame_stride")
_QUEUE_BATCHES = 2  # batches prepared ahead of the model: enough to hide decoding, little memory


class Batch(NamedTuple):
    """Model outputs for n consecutive clips: logits (n, K), features (n, D), times (n, 2) s."""

    logits: np.ndarray
    features: np.ndarray
    times: np.ndarray


class Extractor:
    """A model loaded once, turning sources into per-clip features.

    `weights`: None (the pretrained release, downloaded and cached), a `.pth` path, or "random".
    `backend`: "torch", or "onnxruntime" with `onnx` an exported file (exported into the cache
    when None).
    """

    def __init__(self, model=DEFAULT_MODEL, weights=None, *, device=None, pool_spatial="mean",
                 pool_temporal="mean", backend="torch", onnx=None, progress=True):
        if backend not in BACKENDS:
            raise Ig65mError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        self.spec = get_spec(model)
        self.device = resolve_device(device)
        self.progress = progress
        network, self.weights_sha256 = get_model(model, weights, progress=progress)
        self.embedder = ClipEmbedder(network, pool_spatial=pool_spatial,
                                     pool_temporal=pool_temporal).to(self.device).eval()
        self.backend = backend
        self._run = self._make_runner(backend, onnx)

    @property
    def feature_dim(self):
        return self.spec.feature_dim

    def _make_runner(self, backend, onnx):
        if backend == "torch":
            return lambda clips: run_torch(self.embedder, clips, self.device)
        from ig65m.convert.onnx import OnnxBackend  # optional path, imported lazily
        if onnx is not None:
            return OnnxBackend(onnx)
        sessions = {}  # one exported model per clip shape (channels, frames, crop, crop)

        def run(clips):
            shape = tuple(clips.shape[1:])
            if shape not in sessions:
                sessions[shape] = OnnxBackend(self._cached_onnx(shape))
            return sessions[shape](clips)

        return run

    def _cached_onnx(self, clip_shape):
        """The embedder exported for clips of `clip_shape` (C, T, H, W), in the cache."""
        from ig65m.convert.onnx import export_onnx
        from ig65m.weights import cache_dir

        channels, frames, crop = clip_shape[:3]
        sha = (self.weights_sha256 or "random")[:16]
        path = cache_dir() / "onnx" / (f"{self.spec.name}-{sha}-{self.embedder.pool_spatial}-"
                                       f"{self.embedder.pool_temporal}-{frames}x{crop}.onnx")
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(self.embedder.cpu(), path, clip_frames=frames, crop_size=crop,
                        channels=channels)
            self.embedder.to(self.device)
        return path

    def settings(self, *, frame_size=None, clip_frames=None, step=None, fps=None, tail="pad",
                 crop_size=None, frame_stride=None):
        """The resolved Preprocess: the model's own settings where an option is None."""
        return resolve_preprocess(self.spec.weights, frame_size=frame_size, clip_frames=clip_frames,
                                  step=step, fps=fps, tail=tail, crop_size=crop_size,
                                  frame_stride=frame_stride)

    def batches(self, source, *, batch_size=4, max_clips=None, duration=None, format=None,
                input_options=None, **clip_options):
        """Run `source` through the model -> Batch after Batch (see `settings` for clip options)."""
        if batch_size < 1:
            raise Ig65mError(f"--batch-size must be positive, got {batch_size}")
        if max_clips is not None and max_clips < 1:
            raise Ig65mError(f"--max-clips must be positive, got {max_clips}")
        settings = self.settings(**clip_options)
        # a batch being prepared, the queue ahead of the model, and the batch in the model
        check_fits((_QUEUE_BATCHES + 2) * batch_size, settings.clip_frames,
                   settings.crop_size, settings.frame_size,
                   what="--batch-size, --clip-frames and --crop-size")
        clips = self._clips(source, settings, max_clips, duration, format, input_options)
        transform = transform_for(settings)
        with _Prefetcher(_batched(clips, transform, batch_size)) as prepared:
            for tensor, times in prepared:
                logits, features = self._run(tensor)
                yield Batch(logits, features, times)

    def _clips(self, source, settings, max_clips, duration, format, input_options):
        frames = source_frames(source, settings, duration=duration, format=format,
                               input_options=input_options)
        if settings.modality == "flow":
            frames = flow_frames(frames)
        clips = clip_windows(frames, clip_frames=settings.clip_frames, step=settings.step,
                             tail=settings.tail, frame_stride=settings.frame_stride)
        return itertools.islice(clips, max_clips) if max_clips is not None else clips

    def features(self, source, **options):
        """All features of `source` in memory -> (float32 (N, D), meta as in the sidecar)."""
        rows, times = [], []
        for batch in self.progress_bar(self.batches(source, **options), source, options):
            rows.append(batch.features)
            times.extend(batch.times.tolist())
        features = np.concatenate(rows).astype(np.float32, copy=False)
        return features, self.metadata(source, times, options)

    def extract(self, source, output, *, format=None, on_batch=None, **options):
        """Write the features of `source` to `output` (.npy + .json sidecar, atomically) -> meta.

        `on_batch(batch)`, if given, sees every Batch (logits included) as it is written. A live
        source (camera, lavfi) stopped with Ctrl-C keeps what was extracted until then; a file
        interrupted or failing leaves nothing behind.
        """
        check_writable(output)
        times, interrupted = [], False
        with FeatureWriter(output) as writer:
            try:
                batches = self.batches(source, format=format, **options)
                for batch in self.progress_bar(batches, source, dict(options, format=format)):
                    writer.write(batch.features)
                    times.extend(batch.times.tolist())
                    if on_batch is not None:
                        on_batch(batch)
            except KeyboardInterrupt:
                if not is_live(source, format) or not times:
                    raise
                interrupted = True
            meta = self.metadata(source, times, dict(options, format=format))
            meta["interrupted"] = interrupted
            writer.commit(meta)
        return meta

    def progress_bar(self, batches, source, options):
        """`batches`, counted on a clip bar whose total comes from the file's stated duration."""
        total = self.expected_clips(source, options) if self.progress else None
        with tqdm(desc=str(source), unit="clip", total=total, disable=not self.progress,
                  file=sys.stderr, leave=False) as bar:
            for batch in batches:
                bar.update(len(batch.features))
                yield batch

    def expected_clips(self, source, options):
        """Clips `source` will give with these options, from its stated duration and frame rate
        (None for a live source or a file that states neither)."""
        duration, rate = probe(source, format=options.get("format"),
                               options=options.get("input_options"))
        if duration is None or not rate:
            return None
        settings = self.settings(**{key: options.get(key) for key in CLIP_OPTIONS},
                                 tail=options.get("tail") or "pad")
        seconds = min(duration, options.get("duration") or duration)
        frames = max(round(seconds * (settings.fps or rate)) - (settings.modality == "flow"), 0)
        count = expected_clips(frames, clip_frames=settings.clip_frames, step=settings.step,
                               tail=settings.tail, frame_stride=settings.frame_stride)
        return min(count, options.get("max_clips") or count)

    def metadata(self, source, times, options):
        """The sidecar of a features file (see ig65m.fileio)."""
        settings = self.settings(**{key: options.get(key) for key in CLIP_OPTIONS},
                                 tail=options.get("tail") or "pad")
        return {
            "source": str(source),
            "model": self.spec.name,
            "weights_sha256": self.weights_sha256,
            "feature_dim": self.feature_dim,
            "backend": self.backend,
            **settings.clip_settings(),
            "pool_spatial": self.embedder.pool_spatial,
            "pool_temporal": self.embedder.pool_temporal,
            "clips": [[round(start, 6), round(end, 6)] for start, end in times],
        }


def _batched(clips, transform, batch_size):
    """Clips -> (tensor (n, C, T, H, W), times (n, 2)) with n = batch_size except the last."""
    while chunk := list(itertools.islice(clips, batch_size)):
        tensor = torch.stack([transform(clip.frames) for clip in chunk])
        times = np.array([[clip.start, clip.end] for clip in chunk], dtype=np.float64)
        yield tensor, times


class _Prefetcher:
    """Iterate `items` in a background thread, a bounded queue ahead of the consumer.

    Exceptions in the producer are re-raised in the consumer; leaving the `with` block (normally,
    by an error or Ctrl-C) stops the producer.
    """

    _DONE = object()

    def __init__(self, items):
        self._items = items
        self._queue = queue.Queue(maxsize=_QUEUE_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)

    def _produce(self):
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(err)

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self):
        self._thread.start()
        return self

    def __iter__(self):
        while (item := self._queue.get()) is not self._DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        return False
