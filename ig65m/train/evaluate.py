"""Evaluation of a classifier on a labelled dataset, the Kinetics way (seed 001).

`--mode clip`: one centred clip with a centre crop per video. `--mode video`: `num_clips` (10)
uniformly spaced clips x 3 crops along the long side; the softmax probabilities of the views are
averaged per video. Clips from consecutive videos share batches of `batch_size` clips.
"""

import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ig65m.errors import Ig65mError
from ig65m.fileio import check_folder_writable, write_json
from ig65m.memory import check_fits
from ig65m.labels import dataset_labels, read_labels
from ig65m.models import get_spec
from ig65m.device import resolve_device
from ig65m.models.loading import random_seed
from ig65m.preprocess import resolve as resolve_preprocess
from ig65m.train import adapt, datasets, metrics, plots
from ig65m.transforms import transform_for

log = logging.getLogger(__name__)


REPORTED = ("clip_frames", "frame_stride", "frame_size", "crop_size")


def clip_settings(spec, clip_frames=None, frame_size=None, crop_size=None):
    """The model's own Preprocess (`ig65m.preprocess.resolve`), each size overridable."""
    return resolve_preprocess(spec.weights, clip_frames=clip_frames, frame_size=frame_size,
                              crop_size=crop_size)


def _clip_batches(loader, batch_size, targets):
    """Videos (views (V, 3, T, H, W), label) -> batches (clips (B, 3, T, H, W), video index (B,));
    appends each video's label to `targets` as it is read."""
    pending, owners = [], []
    for video, (views, label) in enumerate(loader):
        targets.append(int(label))
        pending.extend(views.unbind(0))
        owners.extend([video] * len(views))
        while len(pending) >= batch_size:
            yield torch.stack(pending[:batch_size]), owners[:batch_size]
            del pending[:batch_size], owners[:batch_size]
    if pending:
        yield torch.stack(pending), owners


@torch.inference_mode()
def predict(model, loader, device, *, batch_size=8, progress=False):
    """Average softmax probabilities per video -> (scores float64 (N, K), targets int64 (N,)).

    `loader` yields one video at a time (a `ClipDataset` in "clip" or "video" mode, unbatched).
    """
    model.eval()
    targets, sums, counts = [], {}, {}
    use_amp = device.type == "cuda"
    bar = tqdm(total=len(loader), desc="evaluating", unit="video", disable=not progress,
               file=sys.stderr, leave=False)
    for clips, owners in _clip_batches(loader, batch_size, targets):
        with torch.autocast(device.type, enabled=use_amp):
            logits = model(clips.to(device, non_blocking=True))
        probabilities = torch.softmax(logits.float(), dim=1).cpu().double().numpy()
        for row, video in zip(probabilities, owners):
            sums[video] = sums.get(video, 0.0) + row
            counts[video] = counts.get(video, 0) + 1
        bar.update(len(targets) - bar.n)
    bar.close()
    scores = np.stack([sums[video] / counts[video] for video in range(len(targets))])
    return scores, np.asarray(targets, dtype=np.int64)


def nll(scores, targets):
    """Mean negative log of the probability given to the target."""
    picked = scores[np.arange(len(targets)), targets]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def eval_loader(samples, settings, transform, *, mode, num_clips=10, num_workers=0):
    dataset = datasets.ClipDataset(samples, mode=mode, clip_frames=settings.clip_frames,
                                   frame_size=settings.frame_size, transform=transform,
                                   num_clips=num_clips, frame_stride=settings.frame_stride)
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False,
                                       num_workers=num_workers)


def find_labels(spec, weights, labels_file, *, progress=True):
    """Class names in logit order: --labels, else labels.txt beside a --weights file (as
    `finetune` writes it), else the published list of the model's pretrained weights."""
    if labels_file:
        return read_labels(labels_file)
    local = weights not in (None, "random", "pretrained") and random_seed(weights) is None
    beside = Path(weights).parent / "labels.txt" if local else None
    if beside is not None and beside.is_file():
        log.info("labels: %s", beside)
        return read_labels(beside)
    if not local and spec.weights.labels:
        return dataset_labels(spec.weights.labels, progress=progress)
    raise Ig65mError("give --labels FILE (the class names in the model's logit order); "
                     "a finetune OUT_DIR/labels.txt beside --weights is found by itself")


def evaluation_entries(dataset):
    """A dataset's entries; a folder with train/ and val/ is evaluated on val/."""
    dataset = Path(dataset)
    if dataset.is_dir() and (dataset / "val").is_dir() and (dataset / "train").is_dir():
        log.info("evaluating the val/ split of %s", dataset)
        dataset = dataset / "val"
    return datasets.list_entries(dataset)


def evaluate(dataset, *, model, weights=None, labels=None, mode="video", num_clips=10,
             batch_size=8, clip_frames=None, frame_size=None, crop_size=None, device=None,
             num_workers=0, out_dir=None, progress=True):
    """Evaluate `model` (+ `weights`) on `dataset` -> the report dict (also `out_dir/report.json`
    and `out_dir/confusion.png` when `out_dir` is given)."""
    if mode not in ("clip", "video"):
        raise Ig65mError(f"--mode must be clip or video, not {mode!r}")
    if out_dir is not None:
        out_dir = check_folder_writable(out_dir)
    spec = get_spec(model)
    settings = clip_settings(spec, clip_frames, frame_size, crop_size)
    views = 1 if mode == "clip" else num_clips * 3
    check_fits(max(views, batch_size), settings.clip_frames, settings.crop_size,
               settings.frame_size, what="--num-clips, --batch-size and --clip-frames")
    label_names = find_labels(spec, weights, labels, progress=progress)
    entries = datasets.label_indices(evaluation_entries(dataset), label_names)
    net, sha256 = adapt.load_for_eval(spec, weights, len(label_names), progress=progress)
    samples = datasets.probe(entries, frame_size=settings.frame_size, progress=progress,
                             what="videos")
    device = resolve_device(device)
    loader = eval_loader(samples, settings, transform_for(settings),
                         mode=mode, num_clips=num_clips, num_workers=num_workers)
    scores, targets = predict(net.to(device), loader, device, batch_size=batch_size,
                              progress=progress)
    report = {"model": model, "weights": None if weights is None else str(weights),
              "weights_sha256": sha256, "dataset": str(dataset), "mode": mode,
              "views_per_video": 1 if mode == "clip" else num_clips * 3,
              **{key: getattr(settings, key) for key in REPORTED}, "skipped": len(entries) - len(samples),
              **metrics.summarize(scores, targets, label_names),
              "predictions": _predictions(samples, scores, label_names)}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(out_dir) / "report.json", report)
        plots.plot_confusion(report["confusion_matrix"], report["confusion_labels"],
                             Path(out_dir) / "confusion.png",
                             title=f"{model}, {mode} mode: top-1 {report['top1']:.3f}")
    return report


def _predictions(samples, scores, labels, k=5):
    top = metrics.ranked(scores)[:, :k]
    return [{"path": str(sample.path), "label": labels[sample.label],
             "top5": [[labels[c], float(row[c])] for c in best]}
            for sample, row, best in zip(samples, scores, top)]
