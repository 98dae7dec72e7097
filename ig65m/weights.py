"""Pretrained weights: the table row type, download into a cache, sha256 check, safe loading.

Release file names end in the first 8 hex digits of the file's sha256 (torchvision's convention);
the download checks them. The cache is `$IG65M_HOME` (default `~/.cache/ig65m`, or under
`$XDG_CACHE_HOME`). `--weights PATH` skips all of this and loads a local file.
"""

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class Weights:
    """One row of a model's pretrained table: where the weights are and how inputs must look."""

    url: str
    num_classes: int
    clip_frames: int
    crop_size: int = 112
    frame_size: int = 128  # short side of decoded frames before the centre crop
    mean: tuple = KINETICS_MEAN
    std: tuple = KINETICS_STD
    labels: str | None = None  # name of a label list, e.g. "kinetics400"
    meta: dict = field(default_factory=dict)

    @property
    def sha256_prefix(self):
        """The hash prefix the release file name ends with (`name-<8 hex>.ext`)."""
        match = re.search(r"-([0-9a-f]{8,64})\.[a-z]+$", self.url)
        return match.group(1) if match else None


def cache_dir():
    """Folder of downloaded weights and other cached files."""
    if os.environ.get("IG65M_HOME"):
        return Path(os.environ["IG65M_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ig65m"


def sha256_file(path, chunk_bytes=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def download(url, sha256_prefix=None, *, progress=True, folder=None):
    """Return the cached path of `url`, downloading it first when absent or corrupt.

    The file goes to a temporary name, is hashed, and only renamed into the cache when its sha256
    starts with `sha256_prefix`. `file://` URLs work like any other.
    """
    folder = Path(folder) if folder else cache_dir() / "weights"
    target = folder / Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1]))
    if target.is_file():
        if sha256_prefix is None or sha256_file(target).startswith(sha256_prefix):
            return target
        print(f"cached {target} is corrupt (sha256 mismatch), downloading again", file=sys.stderr)
        target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as tmp:
            _fetch(url, tmp, progress)
            actual = sha256_file(tmp)
            if sha256_prefix and not actual.startswith(sha256_prefix):
                raise Ig65mError(f"downloaded {url} has sha256 {actual}, expected it to start "
                                 f"with {sha256_prefix}; nothing was cached")
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise Ig65mError(f"cannot download weights from {url} ({_reason(err)}); not in the cache "
                         f"at {target} either. Download it there by hand, or pass --weights PATH "
                         f"to load a local file") from None
    return target


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
    path = Path(path)
    if not path.is_file():
        raise Ig65mError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or hostile file
        raise Ig65mError(f"cannot load weights from {path}: {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise Ig65mError(f"{path} does not hold a state_dict of tensors")
    return state

