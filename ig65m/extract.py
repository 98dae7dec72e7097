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

from ig65m.clips import clip_windows, resample_fps
from ig65m.defaults import BACKENDS
from ig65m.embedder import ClipEmbedder, run_torch
from ig65m.errors import Ig65mError
from ig65m.fileio import FeatureWriter, check_writable
from ig65m.flow import flow_frames, flow_transform_for, is_flow_model
from ig65m.models import DEFAULT_MODEL, get_model, get_spec
from ig65m.transforms import transform_for
from ig65m.video import is_live, read_frames
_QUEUE_BATCHES = 2  # batches prepared ahead of the model: enough to hide decoding, little memory


class Batch(NamedTuple):
    """Model outputs for n consecutive clips: logits (n, K), features (n, D), times (n, 2) s."""

    logits: np.ndarray
    features: np.ndarray
    times: np.ndarray


def resolve_device(device=None):
    """The torch device to run on: `device` if given, else CUDA when present, else CPU."""
    if device:
        try:
            device = torch.device(device)
        except RuntimeError as err:
            raise Ig65mError(f"bad --device {device!r}: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise Ig65mError(f"--device {device} asked for, but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
                 crop_size=None):
        """The resolved clip settings: the model's defaults where an option is None."""
        row = self.spec.weights
        crop_size = crop_size or row.crop_size
        frame_size = frame_size or max(row.frame_size, crop_size)
        if frame_size < crop_size:
            raise Ig65mError(f"--frame-size {frame_size} is smaller than the model's "
                             f"{crop_size} crop")
        clip_frames = clip_frames or row.clip_frames
        for name, value in (("--clip-frames", clip_frames), ("--step", step), ("--fps", fps)):
            if value is not None and value <= 0:
                raise Ig65mError(f"{name} must be positive, got {value}")
        return dict(frame_size=frame_size, clip_frames=clip_frames, step=step or clip_frames,
                    fps=fps, tail=tail, crop_size=crop_size)

    def batches(self, source, *, batch_size=4, max_clips=None, duration=None, format=None,
                input_options=None, **clip_options):
        """Run `source` through the model -> Batch after Batch (see `settings` for clip options)."""
        if batch_size < 1:
            raise Ig65mError(f"--batch-size must be positive, got {batch_size}")
        settings = self.settings(**clip_options)
        clips = self._clips(source, settings, max_clips, duration, format, input_options)
        transform = self._transform(settings["crop_size"])
        with _Prefetcher(_batched(clips, transform, batch_size)) as prepared:
            for tensor, times in prepared:
                logits, features = self._run(tensor)
                yield Batch(logits, features, times)

    def _transform(self, crop_size):
        if is_flow_model(self.spec.weights):
            return flow_transform_for(self.spec.weights, crop_size)
        return transform_for(self.spec.weights, crop_size)

    def _clips(self, source, settings, max_clips, duration, format, input_options):
        frames = read_frames(source, frame_size=settings["frame_size"], format=format,
                             options=input_options)
        return clip_stream(frames, settings, max_clips=max_clips, duration=duration,
                           flow=is_flow_model(self.spec.weights))

    def run(self, clips):
        """One batch of clips (n, C, T, H, W) float32 tensor -> (logits (n, K), features (n, D))."""
        return self._run(clips)

    def features(self, source, **options):
        """All features of `source` in memory -> (float32 (N, D), meta as in the sidecar)."""
        rows, times = [], []
        for batch in self._progress(self.batches(source, **options), source):
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
                for batch in self._progress(self.batches(source, format=format, **options), source):
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

    def _progress(self, batches, source):
        with tqdm(desc=str(source), unit="clip", disable=not self.progress, file=sys.stderr,
                  leave=False) as bar:
            for batch in batches:
                bar.update(len(batch.features))
                yield batch

    def metadata(self, source, times, options):
        """The sidecar of a features file (see ig65m.fileio)."""
        settings = self.settings(**{key: options.get(key) for key in
                                    ("frame_size", "clip_frames", "step", "fps", "crop_size")},
                                 tail=options.get("tail") or "pad")
        return {
            "source": str(source),
            "model": self.spec.name,
            "weights_sha256": self.weights_sha256,
            "feature_dim": self.feature_dim,
            "backend": self.backend,
            **{key: settings[key] for key in ("clip_frames", "step", "fps", "frame_size",
                                               "crop_size", "tail")},
            "pool_spatial": self.embedder.pool_spatial,
            "pool_temporal": self.embedder.pool_temporal,
            "clips": [[round(start, 6), round(end, 6)] for start, end in times],
        }


def clip_stream(frames, settings, *, max_clips=None, duration=None, flow=False):
    """Frames -> the clips `settings` (see Extractor.settings) cut from them, in order.

    The one place clips are defined: the single-process pipeline runs it on decoded frames, and
    the split planner of `ig65m.ranges` on frame numbers, so both give exactly the same clips.
    """
    if duration is not None:
        frames = itertools.takewhile(lambda frame: frame.time < duration, frames)
    if settings["fps"]:
        frames = resample_fps(frames, settings["fps"])
    if flow:
        frames = flow_frames(frames)
    clips = clip_windows(frames, clip_frames=settings["clip_frames"], step=settings["step"],
                         tail=settings["tail"])
    return itertools.islice(clips, max_clips) if max_clips else clips


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
