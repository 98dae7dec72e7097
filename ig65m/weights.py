"""Pretrained weights as data: the table row type, its integrity pin, download into a cache.

A `Weights` row says where a model's weights are (an immutable URL: a release asset or a raw URL at
a commit), how the download is checked (`Pin`), which file format they are in and which checkpoint
filter turns that format into the model's state_dict, and how inputs must look (`Preprocess`
fields: clip frames, frame stride, sizes, mean/std, modality, fps).

The cache is `$IG65M_HOME` (default `~/.cache/ig65m`, or under `$XDG_CACHE_HOME`). `--weights PATH`
skips the download and loads a local file. Importing this module does not import torch.

Why our own download and not `torch.hub.download_url_to_file`: it checks only a sha256 prefix,
and the MoViNet and I3D Inception files are pinned by their git blob SHA-1; ours also reads each
file once for both its pin and the sha256 recorded in sidecars, keeps one-line errors, and imports
no torch.
"""

import hashlib
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path

log = logging.getLogger(__name__)

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
MODALITIES = ("rgb", "flow")
PIN_KINDS = ("sha256", "git_blob_sha1", "size")


@dataclass(frozen=True)
class Pin:
    """What a weights file must be: its sha256 (full, or the prefix in a torch.hub file name), its
    git blob SHA-1 (`sha1(b"blob %d\\0" % len(data) + data)`, for files published in a git
    repository), or, where nothing better is published, only its size in bytes (not a content
    check: `ig65m models` says so)."""

    kind: str
    value: str | int

    def __post_init__(self):
        if self.kind not in PIN_KINDS:
            raise ValueError(f"pin kind {self.kind!r} is not one of {PIN_KINDS}")

    @property
    def checks_content(self):
        return self.kind != "size"

    def describe(self):
        return f"{self.kind} {self.value}"

    def matches(self, digests):
        """Whether a file's `FileDigests` satisfy this pin."""
        if self.kind == "sha256":
            return digests.sha256.startswith(str(self.value))
        if self.kind == "git_blob_sha1":
            return digests.git_blob_sha1 == self.value
        return digests.size == self.value


@dataclass(frozen=True)
class FileDigests:
    """A file read once: its size, sha256 and git blob SHA-1."""

    size: int
    sha256: str
    git_blob_sha1: str


def file_digests(path, chunk_bytes=1 << 20):
    """Read `path` once -> FileDigests."""
    size = os.path.getsize(path)
    sha256, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            sha256.update(chunk)
            blob.update(chunk)
    return FileDigests(size, sha256.hexdigest(), blob.hexdigest())


def sha256_file(path):
    return file_digests(path).sha256


@dataclass(frozen=True)
class Weights:
    """One row of a model's pretrained table: where the weights are, how the download is checked,
    what format they are in, and how inputs must look.

    Preprocessing (read through `ig65m.preprocess.resolve`, never field by field elsewhere):
    `clip_frames` frames per clip, taken every `frame_stride`-th decoded frame (I3D ResNet-50 was
    trained on 32 frames, every 2nd); frames decoded with short side `frame_size`, centre-cropped to
    `crop_size`; values in [0, 1] normalised by `mean`/`std`; `modality` "rgb" or "flow"
    (TV-L1, clipped to +-`flow_bound`); `fps` the frame rate the model expects (None: the video's
    own); `stream` whether the model has causal stream buffers (frame-by-frame classify).

    `file_format`: "pth", "caffe2" or "tensorflow" (the release's own). `filters`: {format:
    checkpoint filter}, a function `(checkpoint, *, build, num_classes) -> state_dict`, pure, that
    maps a file of that format to this model's keys; `build(num_classes=...)` builds the model on
    the meta device for shapes (see `ig65m.models.loading`). A format with no filter is loaded as is.
    """

    url: str
    num_classes: int
    clip_frames: int
    crop_size: int = 112
    frame_size: int = 128  # short side of decoded frames before the centre crop
    mean: tuple = KINETICS_MEAN
    std: tuple = KINETICS_STD
    frame_stride: int = 1
    modality: str = "rgb"
    flow_bound: float | None = None
    fps: float | None = None
    stream: bool = False
    labels: str | None = None  # name of a label list shipped in ig65m/data, e.g. "kinetics400"
    pin: Pin | None = None  # None: the sha256 prefix in the file name, if it has one
    file_format: str = "pth"
    filters: dict = field(default_factory=dict)
    source: str = ""  # who published the file, when it is not the URL's owner

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality {self.modality!r} is not one of {MODALITIES}")
        if self.frame_stride < 1 or self.clip_frames < 1:
            raise ValueError("clip_frames and frame_stride must be positive")

    @property
    def sha256_prefix(self):
        """The hash prefix the release file name ends with (`name-<8 hex>.ext`)."""
        match = re.search(r"-([0-9a-f]{8,64})\.[a-z]+$", self.url)
        return match.group(1) if match else None

    @property
    def integrity(self):
        """The Pin the download checks: the declared one, else the file name's sha256 prefix."""
        if self.pin is not None:
            return self.pin
        return Pin("sha256", self.sha256_prefix) if self.sha256_prefix else None

    def filter_for(self, file_format) -> Callable | None:
        return self.filters.get(file_format)


def cache_dir():
    """Folder of downloaded weights and other cached files."""
    if os.environ.get("IG65M_HOME"):
        return Path(os.environ["IG65M_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ig65m"


def cache_folder(folder):
    """Create the cache folder `folder` (weights/, backends/) -> Path; an Ig65mError naming
    $IG65M_HOME when it cannot be made (a read-only home, a container's read-only root)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Ig65mError(f"cannot create the cache folder {folder} "
                         f"({getattr(err, 'strerror', None) or err}): set $IG65M_HOME to a "
                         f"writable folder") from None
    return folder


def _as_pin(pin):
    """A Pin, or a bare string taken as a sha256 (prefix), or None."""
    return Pin("sha256", pin) if isinstance(pin, str) else pin


def fetch(url, pin=None, *, progress=True, folder=None):
    """-> (cached path of `url`, FileDigests), downloading it first when absent or not matching
    `pin`. The file is read once: for the pin and for the digests the caller records.

    The file goes to a temporary name, is checked, and only renamed into the cache when it matches
    `pin`. `file://` URLs work like any other.
    """
    pin = _as_pin(pin)
    folder = Path(folder) if folder else cache_dir() / "weights"
    target = folder / Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1]))
    if target.is_file():
        digests = file_digests(target)
        if pin is None or pin.matches(digests):
            return target, digests
        log.warning("cached %s does not match its %s pin, downloading again", target, pin.kind)
        target.unlink()
    cache_folder(folder)
    try:
        with atomic_path(target) as tmp:
            _fetch(url, tmp, progress)
            digests = file_digests(tmp)
            if pin is not None and not pin.matches(digests):
                raise Ig65mError(_mismatch(url, pin, digests))
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise Ig65mError(f"cannot download weights from {url} ({_reason(err)}); not in the cache "
                         f"at {target} either. Download it there by hand, or pass --weights PATH "
                         f"to load a local file") from None
    return target, digests


def download(url, pin=None, *, progress=True, folder=None):
    """The cached path of `url` (see `fetch`); `pin` a Pin or a sha256 prefix."""
    return fetch(url, pin, progress=progress, folder=folder)[0]


def _mismatch(url, pin, digests):
    got = {"sha256": digests.sha256, "git_blob_sha1": digests.git_blob_sha1,
           "size": digests.size}[pin.kind]
    expected = "start with" if pin.kind == "sha256" else "be"
    return (f"downloaded {url} has {pin.kind} {got}, expected it to {expected} {pin.value}; "
            f"nothing was cached")


def _reason(err):
    return getattr(err, "reason", None) or err


def _fetch(url, tmp, progress):
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, file=sys.stderr,
                  desc=Path(tmp).name.split(".tmp")[0].lstrip(".")) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def load_state_dict(path):
    """Load a `.pth` state_dict safely (`weights_only=True`); unwraps {'state_dict': ...}."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise Ig65mError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or hostile file
        what = describe_file(path)
        # torch's own reason helps only for what could be a torch file (a ZIP or a pickle)
        reason = f" ({_first_line(err)})" if what.startswith(("a ZIP", "a pickle")) else ""
        raise Ig65mError(f"cannot load weights from {path}: it is {what}; expected a PyTorch "
                         f"state_dict (.pth){reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise Ig65mError(f"{path} does not hold a state_dict of tensors (it holds "
                         f"{type(state).__name__}); expected a PyTorch state_dict")
    return state


def _first_line(err):
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


_MAGIC = ((b"PK\x03\x04", "a ZIP archive"), (b"\x80", "a pickle"), (b"\x93NUMPY", "a .npy array"),
          (b"\x89HDF", "an HDF5 file"), (b"\x1f\x8b", "a gzip file"))


def describe_file(path):
    """What a file looks like from its first bytes, for error messages: "an empty file", "a ZIP
    archive", "a text file", "N bytes of binary data"."""
    size = os.path.getsize(path)
    if size == 0:
        return "an empty file"
    with open(path, "rb") as stream:
        head = stream.read(512)
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"{what} of {size} bytes"
    try:
        head.decode("utf-8")
        return f"a text file of {size} bytes"
    except UnicodeDecodeError:
        return f"{size} bytes of binary data"
