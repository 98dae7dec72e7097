"""Action labels from any registered model: per clip and for the whole video, or live per frame.

Clip models (`classify_clips`): the top-k classes of every clip the `Extractor` windows, then of
the whole video as the mean of the clips' softmax probabilities.

Stream models (`classify_stream`, MoViNet `*_stream`): frames go through the stream buffer one at a
time as they are decoded, so memory stays constant however long the stream (a camera runs until
stopped). Every `every` frames a prediction of everything seen so far is yielded, with the
per-frame latency (preprocessing + model) of those frames; the last record is the whole video.
"""

import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch

from ig65m.clips import resample_fps
from ig65m.errors import Ig65mError
from ig65m.extract import resolve_device
from ig65m.models import get_model
from ig65m.stream import StreamRunner
from ig65m.transforms import transform_for
from ig65m.video import read_frames
from ig65m.weights import cache_dir


def softmax(logits):
    """Row-wise softmax of (..., K) logits, float64 for stable sums."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def top_k(probabilities, labels, k=5):
    """The k most probable classes of one (K,) row -> [{"label", "index", "score"}], best first."""
    k = min(k, len(probabilities))
    best = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": labels[i], "index": int(i), "score": round(float(probabilities[i]), 6)}
            for i in best]


class ClipLabels:
    """Top-k labels of clips as their batches arrive, and of the whole video (the mean of the
    clips' softmax probabilities)."""

    def __init__(self, labels, top=5):
        if top < 1:
            raise Ig65mError(f"--top must be positive, got {top}")
        self.labels, self.top, self.count, self._total = labels, top, 0, None

    def add(self, batch):
        """An `Extractor` Batch -> [{"clip", "start", "end", "top"}] for its clips."""
        probabilities = softmax(batch.logits)
        records = []
        for row, (start, end) in zip(probabilities, batch.times):
            records.append({"clip": self.count, "start": round(float(start), 6),
                            "end": round(float(end), 6), "top": top_k(row, self.labels, self.top)})
            self.count += 1
        self._total = probabilities.sum(0) + (0 if self._total is None else self._total)
        return records

    def video_top(self):
        return top_k(self._total / self.count, self.labels, self.top)


def classify_clips(extractor, source, labels, *, top=5, **batch_options):
    """Yield {"clip", "start", "end", "top"} per clip, then {"video", "clips", "top"}.

    `batch_options` go to `Extractor.batches` (frame_size, clip_frames, step, fps, batch_size,
    max_clips, duration, format, input_options).
    """
    tally = ClipLabels(labels, top)
    for batch in extractor.batches(source, **batch_options):
        yield from tally.add(batch)
    if tally.count == 0:
        raise Ig65mError(f"{source} gave no clips to classify")
    yield {"video": str(source), "model": extractor.spec.name, "clips": tally.count,
           "top": tally.video_top()}


class _Latency:
    """Per-frame latencies since the last report, and over the whole stream."""

    def __init__(self):
        self.recent, self.total, self.worst, self.frames = [], 0.0, 0.0, 0

    def add(self, seconds):
        self.recent.append(seconds)
        self.total += seconds
        self.worst = max(self.worst, seconds)
        self.frames += 1

    def report(self):
        recent, self.recent = self.recent, []
        return {"latency_ms": round(1e3 * float(np.mean(recent)), 3),
                "latency_max_ms": round(1e3 * float(np.max(recent)), 3)}


def _rss_mb():
    """Resident memory of this process now, MiB (Linux; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def load_stream_model(spec, weights=None, *, device=None, backend="torch", progress=True):
    """Load a registry stream model -> (model in eval mode on its device, weights sha256, device)."""
    if not spec.weights.meta.get("stream"):
        raise Ig65mError(f"{spec.name} is not a stream model; live classification needs one of "
                         f"the *_stream models (see `ig65m models`)")
    device = resolve_device(device) if backend == "torch" else torch.device("cpu")
    model, sha = get_model(spec.name, weights, progress=progress)
    return model.to(device).eval(), sha, device


def classify_stream(spec, model, source, labels, *, every=None, top=5, device="cpu",
                    backend="torch", onnx=None, weights_sha256=None, frame_size=None,
                    crop_size=None, fps=None, duration=None, format=None, input_options=None,
                    threads=None):
    """Yield {"frame", "time", "top", "latency_ms", "latency_max_ms", "rss_mb"} every `every`
    model frames (default: the model's clip frames), then {"video", "frames", "top", ...}.

    Frames are resampled to `fps` (default: the rate the model was trained at), decoded with the
    short side `frame_size` and centre-cropped to `crop_size` (model defaults). `threads` sets
    ONNX Runtime's intra-op threads (torch follows `torch.set_num_threads`).
    """
    row = spec.weights
    every = row.clip_frames if every is None else every
    if every < 1 or top < 1:
        raise Ig65mError("--every and --top must be positive")
    crop_size = row.crop_size if crop_size is None else crop_size
    frames = _frames(source, row, frame_size, crop_size, fps, duration, format, input_options)
    transform = transform_for(row, crop_size)
    if backend == "onnxruntime" and onnx is None:
        onnx = _cached_stream_onnx(spec, weights_sha256, crop_size)
    runner = StreamRunner(model, height=crop_size, width=crop_size, backend=backend, onnx=onnx,
                          device=device, threads=threads)
    latency, logits, count, now = _Latency(), None, 0, 0.0
    for frame in frames:
        began = time.perf_counter()
        chunk = transform(frame.image[None]).unsqueeze(0)  # (1, 3, 1, crop, crop)
        logits, _ = runner.step(chunk)
        latency.add(time.perf_counter() - began)
        count, now = count + 1, frame.time
        if count % every == 0:
            yield {"frame": count, "time": round(now, 6), "top": top_k(softmax(logits), labels, top),
                   **latency.report(), "rss_mb": _rss_mb()}
    if logits is None:
        raise Ig65mError(f"{source} gave no frames to classify")
    yield {"video": str(source), "model": spec.name, "frames": count, "time": round(now, 6),
           "top": top_k(softmax(logits), labels, top),
           "latency_ms": round(1e3 * latency.total / latency.frames, 3),
           "latency_max_ms": round(1e3 * latency.worst, 3), "rss_mb": _rss_mb()}


def _frames(source, row, frame_size, crop_size, fps, duration, format, input_options):
    frame_size = max(row.frame_size, crop_size) if frame_size is None else frame_size
    if frame_size < crop_size:
        raise Ig65mError(f"--frame-size {frame_size} is smaller than the {crop_size} crop")
    frames = read_frames(source, frame_size=frame_size, format=format, options=input_options)
    if duration is not None:
        frames = itertools.takewhile(lambda frame: frame.time < duration, frames)
    fps = row.meta.get("fps") if fps is None else fps
    return resample_fps(frames, fps) if fps else frames


def _cached_stream_onnx(spec, weights_sha256, crop_size):
    sha = (weights_sha256 or "random")[:16]
    path = cache_dir() / "onnx" / f"{spec.name}-{sha}-stream-{crop_size}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
