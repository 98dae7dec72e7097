"""The extraction pipeline: source -> frames -> clips -> transforms -> backend -> features -> writer.

A background thread decodes, windows and preprocesses clips into batches while the model runs on
the previous batch, so decoding overlaps inference. Every stage is an iterator: memory does not
grow with the length of the video.
"""

import itertools
import queue
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from ig65m.clips import clip_windows, expected_clips, timed_frames
from ig65m.defaults import BACKENDS, MAX_THREADS, PRECISIONS, default_backend
from ig65m.device import resolve_device
from ig65m.embedder import ClipEmbedder
from ig65m.errors import Ig65mError
from ig65m.fileio import FeatureWriter, check_writable
from ig65m.flow import flow_frames
from ig65m.memory import check_fits
from ig65m.models import DEFAULT_MODEL, get_model, get_spec
from ig65m.preprocess import resolve as resolve_preprocess
from ig65m.transforms import transform_for
from ig65m.video import is_live, probe, read_frames
from ig65m.weights import sha256_file

CLIP_OPTIONS = ("frame_size", "clip_frames", "step", "fps", "crop_size", "frame_stride")
_QUEUE_BATCHES = 2  # batches prepared ahead of the model: enough to hide decoding, little memory


class Batch(NamedTuple):
    """Model outputs for n consecutive clips: logits (n, K), features (n, D), times (n, 2) s."""

    logits: np.ndarray
    features: np.ndarray
    times: np.ndarray


class Extractor:
    """A model loaded once, turning sources into per-clip features.

    `weights`: None (the pretrained release, downloaded and cached), a `.pth` path, "random" or
    "random:SEED".
    `backend`: a name of ig65m.defaults.BACKENDS; None is `default_backend()` ($IG65M_BACKEND, else
    "auto"), resolved on the first batch of each clip shape (ig65m.backends.select).
    `onnx`: an exported embedder to run with "onnxruntime" or "openvino" instead of torch weights
    (none are loaded). `threads`: intra-op threads of every backend (None: torch's setting, one per
    core unless changed). `calibration`: videos or folders whose clips calibrate INT8 and check the
    accuracy gate (None: the source being extracted, when it is a file). `weights_sha256`: the
    sha256 the weights are known to have (a Ray driver's, for its model actors): the torch model
    is then built only when a backend needs it, and auto's cached ONNX/OpenVINO choice does not.
    """

    def __init__(self, model=DEFAULT_MODEL, weights=None, *, device=None, pool_spatial="mean",
                 pool_temporal="mean", backend=None, onnx=None, threads=None, calibration=None,
                 progress=True, weights_sha256=None):
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise Ig65mError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}")
        self.spec = get_spec(model)
        self.device = resolve_device(device)
        self.progress, self.calibration = progress, calibration
        if threads is not None:
            if not 1 <= threads <= MAX_THREADS:
                raise Ig65mError(f"--threads must be from 1 to {MAX_THREADS}, got {threads}")
            torch.set_num_threads(threads)
        self.threads = threads or torch.get_num_threads()
        self.pooling = (pool_spatial, pool_temporal)
        self._runners = {}  # clip shape (C, T, H, W) -> backend Runner
        self.runner = None  # the last one used, recorded in the sidecar
        if onnx is not None:
            self._open_onnx(onnx)
            return
        self.onnx, self._weights, self._embedder = None, weights, None
        self.weights_sha256 = weights_sha256
        if weights_sha256 is None:
            self._load_embedder()

    @property
    def embedder(self):
        """The torch ClipEmbedder (None with `onnx`), built here on first use when the weights'
        sha256 was given."""
        if self._embedder is None and self.onnx is None:
            self._load_embedder()
        return self._embedder

    def _load_embedder(self):
        network, sha256 = get_model(self.spec.name, self._weights, progress=self.progress)
        if self.weights_sha256 not in (None, sha256):
            raise Ig65mError(f"weights {self._weights} have sha256 {sha256} here, not "
                             f"{self.weights_sha256}: every node must see the same weights")
        self.weights_sha256 = sha256
        self._embedder = ClipEmbedder(network, pool_spatial=self.pooling[0],
                                      pool_temporal=self.pooling[1]).to(self.device).eval()

    def _open_onnx(self, path):
        """Run an exported file: no torch weights are loaded (or downloaded); the sidecar records
        the file and its sha256 instead."""
        from ig65m.backends.runners import Runner

        if self.backend not in ("onnxruntime", "openvino"):
            raise Ig65mError(f"--onnx runs with --backend onnxruntime or openvino, not {self.backend}")
        if not Path(path).is_file():
            raise Ig65mError(f"ONNX model not found: {path}")
        self._embedder, self.weights_sha256 = None, None
        self.onnx = {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}
        if self.backend == "onnxruntime":
            from ig65m.convert.onnx import OnnxBackend
            run = OnnxBackend(path, threads=self.threads, device=self.device)
        else:
            from ig65m.backends.openvino import OpenVinoRunner
            run = OpenVinoRunner(path, precision="fp32", threads=self.threads)
        self.runner = Runner(self.backend, run)

    @property
    def feature_dim(self):
        return self.spec.feature_dim

    def _runner_for(self, clip_shape, source, settings, format, batch_size):
        """The backend for clips of `clip_shape`, chosen on first use (see ig65m.backends)."""
        if self.onnx is not None:
            return self.runner
        if clip_shape not in self._runners:
            from ig65m.backends.runners import Target
            from ig65m.backends.select import choose

            def calibration():
                return self._clip_set(source, settings, format, for_gate=False)

            def gate_clips():
                clips = self._clip_set(source, settings, format, for_gate=True)
                return None if clips is None else clips.tensor(clips.count)

            target = Target(lambda: self.embedder, self.spec.name, self.weights_sha256,
                            self.pooling, clip_shape, self.device, self.threads, calibration)
            self._runners[clip_shape] = choose(self.backend, target, gate_clips, batch_size)
        self.runner = self._runners[clip_shape]
        return self.runner

    def run(self, clips, source=None, settings=None):
        """One prepared batch (N, C, T, H, W) through the backend -> float32 (logits, features).
        The backend is chosen on first use of the shape, as `batches` chooses it: `source` (a video
        file) gives its gate clips, else --calibration does, cut with `settings` (Extractor.settings;
        None: the model's own at the clips' shape)."""
        settings = settings or self.settings(clip_frames=clips.shape[2], crop_size=clips.shape[3])
        runner = self._runner_for(tuple(clips.shape[1:]), source, settings, None, len(clips))
        return runner(clips)

    def _clip_set(self, source, settings, format, *, for_gate):
        """Real clips for the gate (the source first) or INT8 calibration (--calibration first),
        preprocessed like the extraction; None when there are none (a camera, no --calibration)."""
        from ig65m.backends.clipset import CALIBRATION_CLIPS, GATE_CLIPS, ClipSet, video_files

        own = [] if source is None or is_live(source, format) else [source]
        given = video_files(self.calibration) if self.calibration else []
        videos = (own or given) if for_gate else (given or own)
        if not videos:
            return None
        transform = transform_for(settings)

        def clips_of(video):
            for clip in self._clips(video, settings, None, None, None, None):
                yield transform(clip.frames)

        return ClipSet(videos, clips_of, GATE_CLIPS if for_gate else CALIBRATION_CLIPS)

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
        pin = self.device.type == "cuda"  # pinned pages: the copy to the GPU overlaps compute
        with _Prefetcher(_batched(clips, transform, batch_size, pin)) as prepared:
            for tensor, times in prepared:
                runner = self._runner_for(tuple(tensor.shape[1:]), source, settings, format,
                                          batch_size)
                logits, features = runner(tensor)
                yield Batch(logits, features, times)

    def _clips(self, source, settings, max_clips, duration, format, input_options):
        # decode on the GPU where PyAV can (NVDEC), falling back to the CPU
        frames = read_frames(source, frame_size=settings.frame_size, format=format,
                             options=input_options,
                             hwaccel="cuda" if self.device.type == "cuda" else None)
        return clip_stream(frames, settings, max_clips=max_clips, duration=duration)

    def features(self, source, **options):
        """All features of `source` in memory -> (float32 (N, D), meta as in the sidecar)."""
        rows, times = [], []
        for batch in self.progress_bar(self.batches(source, **options), source, options):
            rows.append(batch.features)
            times.extend(batch.times.tolist())
        features = np.concatenate(rows).astype(np.float32, copy=False)
        return features, self.metadata(source, times, options)

    def extract(self, source, output, *, format=None, on_batch=None, replace=True, **options):
        """Write the features of `source` to `output` (.npy + .json sidecar, atomically) -> meta.

        `on_batch(batch)`, if given, sees every Batch (logits included) as it is written. A live
        source (camera, lavfi) stopped with Ctrl-C keeps what was extracted until then; a file
        interrupted or failing leaves nothing behind. `replace=False`: an `output` that another
        run wrote meanwhile is an Ig65mError, not replaced.
        """
        check_writable(output)
        times, interrupted = [], False
        with FeatureWriter(output, replace=replace) as writer:
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

    def metadata(self, source, times, options, backend=None):
        """The sidecar of a features file (see ig65m.fileio); `backend`: the one that ran, where
        another process ran it (a Ray model actor), else this extractor's."""
        backend = backend or (self.runner.name if self.runner else self.backend)
        settings = self.settings(**{key: options.get(key) for key in CLIP_OPTIONS},
                                 tail=options.get("tail") or "pad")
        return {
            "source": str(source),
            "model": self.spec.name,
            "weights_sha256": self.weights_sha256,
            "feature_dim": self.feature_dim,
            "backend": backend,
            "precision": PRECISIONS.get(backend),
            **({"onnx": self.onnx} if self.onnx else {}),
            **settings.clip_settings(),
            "pool_spatial": self.pooling[0],
            "pool_temporal": self.pooling[1],
            "clips": [[round(start, 6), round(end, 6)] for start, end in times],
        }


def clip_stream(frames, settings, *, max_clips=None, duration=None):
    """Frames -> the clips `settings` (a resolved `ig65m.preprocess.Preprocess`) cut from them, in
    order.

    The one place clips are defined: the single-process pipeline runs it on decoded frames, and
    the split planner of `ig65m.ranges` on frame numbers, so both give exactly the same clips.
    """
    frames = timed_frames(frames, settings, duration=duration)
    if settings.modality == "flow":
        frames = flow_frames(frames)
    clips = clip_windows(frames, clip_frames=settings.clip_frames, step=settings.step,
                         tail=settings.tail, frame_stride=settings.frame_stride)
    return itertools.islice(clips, max_clips) if max_clips is not None else clips


def _batched(clips, transform, batch_size, pin=False):
    """Clips -> (tensor (n, C, T, H, W), times (n, 2)) with n = batch_size except the last;
    `pin`: in page-locked memory, for asynchronous copies to a GPU."""
    while chunk := list(itertools.islice(clips, batch_size)):
        tensor = torch.stack([transform(clip.frames) for clip in chunk])
        tensor = tensor.pin_memory() if pin else tensor
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
