"""Labelled video datasets for `finetune` and `evaluate`.

A dataset is one of:

- a folder of class folders, each holding videos or image-sequence folders (seed 003's layout:
  `root/CLASS/clip.mp4`, `root/CLASS/Series1/pic1.jpg ...`); a root holding `train/` and `val/`
  folders of that shape gives the two splits, otherwise `split_entries` draws a stratified
  validation fraction;
- a CSV of `path,label` rows (a header naming `path` and `label` is optional; paths relative to the
  CSV's folder), or a Kinetics annotation CSV (`label,youtube_id,time_start,time_end,...`, seed 001),
  whose videos are found as `YOUTUBEID_START_END.mp4` (the crawler's names, start and end zero
  padded to 6 digits) in `LABEL/` or directly beside the CSV.

Every item is decoded once up front by `probe`: unreadable ones are reported on stderr and skipped
with a count, and the frame counts the clip sampling needs are learnt.
"""

import logging
import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ig65m.errors import Ig65mError
from ig65m.train import sampling
from ig65m.video import VIDEO_SUFFIXES, read_frames

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Sample:
    """A decodable item: a video file or an image-sequence folder, its label index, its length."""

    path: Path
    label: int
    num_frames: int


def normalise_label(name):
    """Labels compare case-blind, with `_` as a space and quotes dropped ("Air_drumming" ==
    "air drumming"), so folder names, Kinetics CSVs and label files match each other."""
    return " ".join(name.strip().strip("'\"").replace("_", " ").split()).lower()


def list_entries(source):
    """A folder of class folders or a CSV -> [(item path, class name)], sorted, never empty."""
    source = Path(source)
    if not source.exists():
        raise Ig65mError(f"dataset not found: {source}")
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        raise Ig65mError(f"dataset {source} is a video: give a folder of class folders (one per "
                         f"label) or a CSV of path,label rows")
    entries = read_csv(source) if source.is_file() else _folder_entries(source)
    if not entries:
        raise Ig65mError(f"dataset {source} is empty: expected class folders of videos or "
                         f"image-sequence folders, or a CSV of path,label rows")
    return entries


def _folder_entries(root):
    entries = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p)):
        for item in sorted(class_dir.iterdir()):
            if _hidden(item):
                continue
            if item.is_dir() and _images(item) or item.suffix.lower() in VIDEO_SUFFIXES:
                entries.append((item, class_dir.name))
    return entries


def _hidden(path):
    return path.name.startswith(".")


def _images(folder):
    """The images of a sequence folder in natural order (pic2.jpg before pic10.jpg)."""
    return sorted((p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p)), key=_natural_key)


def _natural_key(path):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", path.name)]


def read_csv(path):
    """Rows of a `path,label` CSV (or a Kinetics annotation CSV) -> [(item path, label)]."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            rows = [row for row in csv.reader(stream) if row and any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error, OSError) as err:
        raise Ig65mError(f"dataset {path} is not a CSV of path,label rows ({_short(err)}): give a "
                         f"folder of class folders, or a CSV") from None
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if "youtube_id" in header:
        return [_kinetics_entry(path.parent, dict(zip(header, row))) for row in rows[1:]]
    if "path" in header and "label" in header:
        path_col, label_col, rows = header.index("path"), header.index("label"), rows[1:]
    else:
        path_col, label_col = 0, 1
    entries = []
    for number, row in enumerate(rows, start=1):
        if len(row) <= max(path_col, label_col):
            raise Ig65mError(f"{path}: row {number} is not path,label: {','.join(row)}")
        entries.append((path.parent / row[path_col].strip(), row[label_col].strip()))
    return entries


def _short(err):
    return getattr(err, "strerror", None) or str(err).splitlines()[0][:120]


def _kinetics_entry(folder, row):
    try:
        name = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_" \
               f"{int(float(row['time_end'])):06d}"
    except (KeyError, ValueError):
        raise Ig65mError(f"Kinetics CSV row without youtube_id/time_start/time_end: {row}") from None
    for candidate in (folder / row["label"], folder / row["label"].replace(" ", "_"), folder):
        for suffix in (".mp4", ".mkv", ".webm", ".avi"):
            if (candidate / (name + suffix)).exists():
                return candidate / (name + suffix), row["label"]
    return folder / row["label"] / (name + ".mp4"), row["label"]  # reported missing by probe


def load_splits(dataset, *, val=None, val_split=None, seed=0):
    """-> (train entries, val entries) from `dataset` plus a `val` dataset, its own `train/` and
    `val/` folders, or a stratified `val_split` fraction (default 0.2) drawn with `seed`."""
    dataset = Path(dataset)
    if val is not None:
        return list_entries(dataset), list_entries(val)
    if dataset.is_dir() and (dataset / "train").is_dir() and (dataset / "val").is_dir():
        if val_split is not None:
            raise Ig65mError(f"{dataset} has train/ and val/ folders; --val-split would ignore them")
        return list_entries(dataset / "train"), list_entries(dataset / "val")
    return split_entries(list_entries(dataset), 0.2 if val_split is None else val_split, seed)


def split_entries(entries, fraction, seed):
    """A stratified split: round(fraction * n) items of each class (at least one) go to val."""
    if not 0 < fraction < 1:
        raise Ig65mError(f"--val-split must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    class_names(entries)  # one class only is the first thing to say
    for name in sorted({label for _, label in entries}):
        items = [entry for entry in entries if entry[1] == name]
        if len(items) < 2:
            raise Ig65mError(f"class {name!r} has {len(items)} item; --val-split needs at least 2 "
                             f"per class (or give train/ and val/ folders)")
        chosen = set(rng.permutation(len(items))[:max(1, round(fraction * len(items)))].tolist())
        for index, item in enumerate(items):
            (val if index in chosen else train).append(item)
    return train, val


def class_names(entries):
    """The sorted class names of training entries; at least two are needed to learn anything."""
    names = sorted({normalise_label(label): label for _, label in entries}.values(),
                   key=normalise_label)
    if len(names) < 2:
        raise Ig65mError(f"the dataset has only one class ({names[0]!r}); fine-tuning needs at "
                         f"least two")
    return names


def label_indices(entries, labels, *, what="dataset"):
    """[(path, class name)] -> [(path, index into `labels`)]; every class must be in `labels`."""
    index = {normalise_label(name): i for i, name in enumerate(labels)}
    unknown = sorted({label for _, label in entries if normalise_label(label) not in index})
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise Ig65mError(f"{len(unknown)} label(s) of the {what} are not in the label list "
                         f"({len(labels)} labels): {shown}")
    return [(path, index[normalise_label(label)]) for path, label in entries]


def probe(entries, *, frame_size, progress=True, what="items"):
    """Decode every (path, label index) once -> [Sample]; unreadable items are reported on stderr
    and skipped. Raises Ig65mError when nothing is left."""
    samples, skipped = [], []
    for path, label in tqdm(entries, desc=f"checking {what}", unit="item", disable=not progress,
                            file=sys.stderr, leave=False):
        try:
            samples.append(Sample(Path(path), label, count_frames(path, frame_size)))
        except Ig65mError as err:
            skipped.append(str(err))
    for reason in skipped:
        log.warning("skipped: %s", reason)
    if skipped:
        log.warning("skipped %d of %d %s (unreadable)", len(skipped), len(entries), what)
    if not samples:
        raise Ig65mError(f"none of the {len(entries)} {what} could be read")
    return samples


def count_frames(path, frame_size):
    """Decode the whole item (checking every frame) -> its number of frames."""
    path = Path(path)
    if path.is_dir():
        images = _images(path)
        for image in images:
            read_image(image, frame_size)
        if not images:
            raise Ig65mError(f"{path} holds no images")
        return len(images)
    return sum(1 for _ in read_frames(path, frame_size=frame_size))


def read_image(path, frame_size):
    """One image as an RGB uint8 (H, W, 3) frame, decoded and scaled as video frames are."""
    frames = list(read_frames(path, frame_size=frame_size))
    if len(frames) != 1:
        raise Ig65mError(f"{path} is not a single image")
    return frames[0].image


def read_indices(path, indices, frame_size):
    """The frames at `indices` (any order, repeats allowed) of a video or image folder ->
    uint8 (len(indices), H, W, 3). A video is decoded up to its last needed frame only, keeping
    only the needed frames."""
    path, wanted = Path(path), sorted(set(indices))
    wanted_set = set(wanted)
    if path.is_dir():
        images = _images(path)
        frames = {i: read_image(images[i], frame_size) for i in wanted}
    else:
        frames = {}
        for index, frame in enumerate(read_frames(path, frame_size=frame_size)):
            if index in wanted_set:
                frames[index] = frame.image
            if index >= wanted[-1]:
                break
    missing = [i for i in wanted if i not in frames]
    if missing:
        raise Ig65mError(f"{path} ended before frame {missing[0]}; it changed since it was checked")
    return np.stack([frames[i] for i in indices])


class ClipDataset(torch.utils.data.Dataset):
    """Clips of `samples` as the model takes them, with their label index.

    mode "train": one random clip, random crop, random horizontal flip (unless `flip=False`)
    -> float32 (3, T, crop, crop). Randomness comes from (seed, epoch, index) alone, so a resumed
    run or any number of workers draws the same clips.
    mode "clip": the centred clip, centre crop -> (1, 3, T, crop, crop);
    mode "video": `num_clips` uniform clips x 3 crops -> (num_clips * 3, 3, T, crop, crop), clip
    major. `transform` is a `ClipTransform` (normalisation; its centre crop is a no-op here).
    """

    MODES = ("train", "clip", "video")

    def __init__(self, samples, *, mode, clip_frames, frame_size, transform, flip=True, seed=0,
                 num_clips=10, frame_stride=1):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        self.samples, self.mode, self.clip_frames = list(samples), mode, clip_frames
        self.frame_stride, self.span = frame_stride, sampling.span(clip_frames, frame_stride)
        self.frame_size, self.transform, self.flip = frame_size, transform, flip
        self.crop_size, self.seed, self.num_clips, self.epoch = transform.crop_size, seed, num_clips, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        if self.mode == "train":
            return self._train_clip(sample, np.random.default_rng([self.seed, self.epoch, index]))
        if self.mode == "clip":
            starts = [sampling.centre_start(sample.num_frames, self.span)]
        else:
            starts = sampling.uniform_starts(sample.num_frames, self.span, self.num_clips)
        clips = [sampling.clip_indices(sample.num_frames, self.clip_frames, s, self.frame_stride)
                 for s in starts]
        frames = read_indices(sample.path, [i for clip in clips for i in clip], self.frame_size)
        frames = frames.reshape(len(clips), self.clip_frames, *frames.shape[1:])
        height, width = frames.shape[2:4]
        crops = ([sampling.centre_crop(height, width, self.crop_size)] if self.mode == "clip"
                 else sampling.three_crops(height, width, self.crop_size))
        out = [self._crop(clip, top, left) for clip in frames for top, left in crops]
        return torch.stack(out), sample.label

    def _train_clip(self, sample, rng):
        start = sampling.random_start(sample.num_frames, self.span, rng)
        indices = sampling.clip_indices(sample.num_frames, self.clip_frames, start,
                                        self.frame_stride)
        frames = read_indices(sample.path, indices, self.frame_size)
        top, left = sampling.random_crop(*frames.shape[1:3], self.crop_size, rng)
        flip = self.flip and rng.random() < 0.5
        return self._crop(frames, top, left, flip), sample.label

    def _crop(self, frames, top, left, flip=False):
        if frames.shape[1] < self.crop_size or frames.shape[2] < self.crop_size:
            raise Ig65mError(f"frames of {frames.shape[2]}x{frames.shape[1]} are smaller than "
                             f"the {self.crop_size} crop; use a larger --frame-size")
        crop = frames[:, top:top + self.crop_size, left:left + self.crop_size]
        return self.transform(np.ascontiguousarray(crop[:, :, ::-1] if flip else crop))
