"""Clips of real videos for calibration and the accuracy gate, preprocessed as extraction does."""

import hashlib
import itertools
import math
from pathlib import Path

import torch

from ig65m.video import VIDEO_SUFFIXES
from ig65m.errors import Ig65mError

CALIBRATION_CLIPS = 300  # NNCF's default subset size: "a few hundred clips"
GATE_CLIPS = 8


def video_files(paths):
    """Video files among `paths` (files as given, folders searched recursively), sorted."""

    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise Ig65mError(f"calibration video or folder not found: {path}")
    return found


class ClipSet:
    """Up to `count` clips from `videos`, spread evenly over them, re-iterable: each iteration
    decodes again, so a few hundred clips never sit in memory together.

    `clips_of(video)`: an iterator of preprocessed clip tensors (C, T, H, W). Iterating yields
    float32 numpy arrays (1, C, T, H, W), NNCF's calibration items. `digest` names the set (paths,
    sizes, modification times, count) for cache keys.
    """

    def __init__(self, videos, clips_of, count=CALIBRATION_CLIPS):
        self.videos = [Path(v) for v in videos]
        if not self.videos:
            raise Ig65mError("no calibration videos found")
        self.clips_of, self.count = clips_of, count
        stamp = [f"{v.resolve()}:{v.stat().st_size}:{v.stat().st_mtime_ns}" for v in self.videos]
        self.digest = hashlib.sha256("\n".join([*stamp, str(count)]).encode()).hexdigest()[:16]

    def __iter__(self):
        per_video = max(1, math.ceil(self.count / len(self.videos)))
        clips = itertools.chain.from_iterable(itertools.islice(self.clips_of(v), per_video)
                                              for v in self.videos)
        for clip in itertools.islice(clips, self.count):
            yield clip[None].numpy()

    def __len__(self):
        return self.count

    def tensor(self, count):
        """The first `count` clips (fewer if the videos are short) as one (N, C, T, H, W) tensor."""
        clips = [torch.from_numpy(clip[0]) for clip in itertools.islice(self, count)]
        if not clips:
            raise Ig65mError(f"{', '.join(map(str, self.videos))} gave no clips")
        return torch.stack(clips)
