"""Query vectors from an uploaded file: a video (extracted by the server's own model) or a
features .npy with its sidecar.

The model is loaded on the first video upload, not at start-up: a server nobody uploads to never
imports torch, and starts and runs in the memory it did before. Videos are extracted with the
settings the index records (`manifest["extraction"]`: model, clip frames, step, fps, frame and crop
size, pooling); a model or weights other than the index's is refused, since its features would
not be comparable. One extraction runs at a time; at most `queue` more wait, and the next gets
`Busy` (503). Every uploaded byte goes to a private temporary folder removed whatever happens.
"""

import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
import time

import numpy as np

from ig65m.errors import Ig65mError
from ig65m.index.sources import extraction_mismatch
from ig65m.index.vectors import PROBLEM, first_bad_row
from ig65m.models.registry import get_spec
from ig65m.sidecar import Sidecar

DEFAULT_MAX_MB = 200
DEFAULT_MAX_SECONDS = 600
DEFAULT_QUEUE = 2


class Busy(Exception):
    """Too many uploads waiting: answer 503."""


class UploadRejected(Exception):
    """An upload that cannot be searched with: answer `status` (4xx) with the message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class UploadSearch:
    """Extracts uploaded videos with `model`/`weights` as the index `manifest` records."""

    def __init__(self, manifest, *, model=None, weights=None, max_seconds=DEFAULT_MAX_SECONDS,
                 queue=DEFAULT_QUEUE):
        self.extraction = dict(manifest.get("extraction") or {})
        self.index_model = manifest.get("model") or self.extraction.get("model")
        if model and self.index_model and model != self.index_model:
            raise Ig65mError(f"--model {model} differs from the index's model {self.index_model}: "
                             "uploads must be extracted with the model the index was built with")
        if model:  # the registry is data (no torch): a typo fails at start-up, not at an upload
            get_spec(model)
        if weights not in (None, "pretrained", "random") and not weights.startswith("random:") \
                and not os.path.isfile(weights):  # a file's path (as models.loading reads them)
            raise Ig65mError(f"weights file not found: {weights}")
        self.model = model
        self.weights = weights
        self.max_seconds = max_seconds
        self.dimension = int(manifest["dimension"])
        self._extractor = None
        self._run_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(1 + queue)

    @property
    def enabled(self):
        return bool(self.model)

    def video_vectors(self, upload):
        """A video upload (a werkzeug FileStorage) -> (vectors (n, D), clip times [(start, end)],
        seconds spent {"model_load", "extract"})."""
        if not self.enabled:
            raise UploadRejected(400, "this server searches by video only when started with "
                                      "--model (and --weights): upload a features .npy instead")
        if not self._slots.acquire(blocking=False):
            raise Busy("the server is busy extracting other uploads: try again shortly")
        try:
            with self._run_lock, _saved(upload) as path:
                seconds = probe_seconds(path)
                if seconds > self.max_seconds:
                    raise UploadRejected(413, f"the video lasts {seconds:.0f} s; this server takes "
                                              f"at most {self.max_seconds:g} s")
                return self._extract(path)
        finally:
            self._slots.release()

    def _extract(self, path):
        started = time.perf_counter()
        extractor = self._load()
        loaded = time.perf_counter()
        options = {key: self.extraction.get(key) for key in
                   ("clip_frames", "step", "fps", "frame_size", "crop_size")}
        options["tail"] = self.extraction.get("tail") or "pad"
        try:
            features, meta = extractor.features(path, duration=self.max_seconds, **options)
        except Ig65mError as err:
            raise UploadRejected(400, f"cannot read the uploaded video: {_short(err)}") from None
        seconds = {"model_load": loaded - started, "extract": time.perf_counter() - loaded}
        return features, [tuple(times) for times in meta["clips"]], seconds

    def _load(self):
        if self._extractor is None:
            from ig65m.extract import Extractor  # torch: only once somebody uploads a video

            extractor = Extractor(self.model, self.weights, progress=False,
                                  pool_spatial=self.extraction.get("pool_spatial", "mean"),
                                  pool_temporal=self.extraction.get("pool_temporal", "mean"))
            wanted = self.extraction.get("weights_sha256")
            if wanted and extractor.weights_sha256 and wanted != extractor.weights_sha256:
                raise UploadRejected(409, "the server's --weights differ from those the index was "
                                          f"built with (sha256 {wanted[:12]}...)")
            self._extractor = extractor
        return self._extractor


def features_vectors(npy_upload, sidecar_upload, dimension, model=None, extraction=None):
    """A features .npy upload (+ optional sidecar JSON) -> (vectors (n, D), times or None).

    Checked as index-build and index-query check a local pair (the same Sidecar rules), and
    against the index's `model` and `extraction` settings (the manifest's) where both record them."""
    data = npy_upload.read()
    if not data.startswith(b"\x93NUMPY"):
        raise UploadRejected(400, "not a .npy features file (no .npy header)")
    try:
        vectors = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UploadRejected(400, f"not a valid .npy features file ({_short(err)})") from None
    if vectors.ndim != 2 or vectors.shape[1] != dimension or not len(vectors):
        raise UploadRejected(400, f"features must be (clips, {dimension}), got {vectors.shape}")
    if vectors.dtype.kind not in "fiu":
        raise UploadRejected(400, "features must be finite numbers")
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused below
        vectors = vectors.astype(np.float32)
    bad = first_bad_row(vectors)
    if bad is not None:
        raise UploadRejected(400, f"features row {bad} {PROBLEM}")
    times = None
    if sidecar_upload is not None:
        try:
            settings = json.loads(sidecar_upload.read())
            sidecar = Sidecar.from_dict(settings, name="the sidecar", rows=len(vectors))
        except (ValueError, RecursionError) as err:  # RecursionError: nested too deep
            raise UploadRejected(400, f"the sidecar is not valid JSON ({_short(err)})") from None
        except Ig65mError as err:
            raise UploadRejected(400, str(err)) from None
        if sidecar.model and model and sidecar.model != model:
            raise UploadRejected(400, f"the features come from model {sidecar.model}, the index "
                                      f"from {model}")
        mismatch = extraction_mismatch(settings, extraction, "the uploaded .npy", "the index")
        if mismatch:  # features made otherwise find meaningless neighbours, as in index-query
            raise UploadRejected(400, mismatch[0])
        times = sidecar.clips or None
    return vectors, times


def probe_seconds(path):
    """The duration of the video at `path`, from its container; UploadRejected for non-videos."""
    import av  # here, not at import: a server start-up stays as light as before the page

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UploadRejected(400, "the upload has no video stream")
            if container.duration is not None:
                return container.duration / av.time_base
            stream = container.streams.video[0]
            return float((stream.duration or 0) * (stream.time_base or 0))
    except av.FFmpegError as err:
        raise UploadRejected(400, f"the upload is not a video PyAV can read ({_short(err)})") from None


@contextlib.contextmanager
def _saved(upload):
    """The upload written to a file in a private temporary folder, removed on leaving."""
    folder = tempfile.mkdtemp(prefix="ig65m-upload-")
    try:
        path = f"{folder}/upload"
        with open(path, "wb") as out:
            shutil.copyfileobj(upload.stream, out, 1 << 20)
        if not os.path.getsize(path):
            raise UploadRejected(400, "the upload is empty")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _short(err):
    text = str(err).strip().splitlines()
    return text[-1][:200] if text else type(err).__name__
