"""Fine-tuning a registry model on a user's labelled videos.

Starts from the model's weights (pretrained, a local file, or random), replaces the head for the
dataset's classes, freezes the first `freeze` feature blocks, and trains with AdamW or SGD under a
cosine schedule (stepped per batch), in mixed precision on CUDA. Every epoch ends with:

- `OUT_DIR/last.pth`: model, optimizer, scheduler, grad scaler and RNG states (written atomically);
  `resume=True` continues from it exactly (same clips, same order, same weights);
- `OUT_DIR/best.pth` + `OUT_DIR/labels.txt` when validation top-1 improves: a plain state_dict
  that `--weights` of `extract`, `classify` and `evaluate` load directly;
- `OUT_DIR/metrics.jsonl` (one JSON object per epoch) and `OUT_DIR/curves.png`.

Training clips: random start, random crop, random horizontal flip; validation: the centred clip.
Data randomness derives from (seed, epoch, index), so it does not depend on workers or resumes.
"""

import logging
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path, check_folder_writable
from ig65m.memory import check_fits
from ig65m.models import get_spec
from ig65m.train import adapt, datasets, plots
from ig65m.device import resolve_device
from ig65m.train.evaluate import clip_settings, eval_loader, nll, predict
from ig65m.train.metrics import topk_accuracy
from ig65m.transforms import transform_for

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "ig65m-finetune-1"
CHECKPOINT_KEYS = ("format", "config", "labels", "epoch", "history", "best", "model", "optimizer",
                   "scheduler", "scaler", "rng_cpu", "rng_cuda")  # what `Run.checkpoint` saves
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the result; a resumed run must use the same values."""

    model: str
    weights: str | None = None
    epochs: int = 10
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float | None = None  # None: DEFAULT_LR of the optimizer
    weight_decay: float = 1e-4
    freeze: int = 0
    clip_frames: int | None = None  # None: the model's own settings
    frame_size: int | None = None
    crop_size: int | None = None
    flip: bool = True
    val_split: float | None = None
    seed: int = 0
    chunk_frames: int | None = None  # stream models: train through the stream buffer in chunks

    def learning_rate(self):
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the training set drawn from (seed, epoch): the same after a resume."""

    def __init__(self, size, seed):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.size)
                    .tolist())


class Run:
    """One fine-tuning run: data, model, optimisation state and the files of OUT_DIR."""

    def __init__(self, dataset, out_dir, config, *, val=None, device=None, num_workers=0,
                 progress=True):
        if config.optimizer not in OPTIMIZERS:
            raise Ig65mError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.spec = get_spec(config.model)
        self.settings = clip_settings(self.spec, config.clip_frames, config.frame_size,
                                      config.crop_size)
        check_fits(config.batch_size, self.settings.clip_frames, self.settings.crop_size,
                   self.settings.frame_size, what="--batch-size and --clip-frames")
        if config.chunk_frames and not self.spec.weights.stream:
            raise Ig65mError(f"--chunk-frames needs a stream model with a stream buffer "
                             f"(e.g. movinet_a0_stream), not {config.model}")
        train, val_entries = datasets.load_splits(dataset, val=val, val_split=config.val_split,
                                                  seed=config.seed)
        self.labels = datasets.class_names(train)
        train = datasets.label_indices(train, self.labels, what="training set")
        val_entries = datasets.label_indices(val_entries, self.labels, what="validation set")
        self.device = resolve_device(device)
        self.amp = self.device.type == "cuda"
        torch.manual_seed(config.seed)  # the new head's initialisation
        model, self.weights_sha256 = adapt.load_for_finetune(
            self.spec, config.weights, len(self.labels), progress=progress)
        self.frozen = adapt.freeze(model, config.freeze)
        self.model = model.to(self.device)
        self._data(train, val_entries, num_workers)
        self._optimisation()
        self.epoch, self.history, self.best = 0, [], None

    def _data(self, train, val, num_workers):
        frame_size = self.settings.frame_size
        train = datasets.probe(train, frame_size=frame_size, progress=self.progress,
                               what="training videos")
        val = datasets.probe(val, frame_size=frame_size, progress=self.progress,
                             what="validation videos")
        transform = transform_for(self.settings)
        self.train_set = datasets.ClipDataset(
            train, mode="train", clip_frames=self.settings.clip_frames, frame_size=frame_size,
            frame_stride=self.settings.frame_stride,
            transform=transform, flip=self.config.flip, seed=self.config.seed)
        self.sampler = EpochSampler(len(train), self.config.seed)
        self.train_loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=self.config.batch_size, sampler=self.sampler,
            num_workers=num_workers, drop_last=len(train) > self.config.batch_size,
            pin_memory=self.device.type == "cuda")
        self.val_loader = eval_loader(val, self.settings, transform, mode="clip",
                                      num_workers=num_workers)
        self.num_workers = num_workers

    def _optimisation(self):
        params, config = adapt.trainable_parameters(self.model), self.config
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate(),
                                               weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=config.learning_rate(), momentum=0.9,
                                             weight_decay=config.weight_decay)
        steps = max(config.epochs * len(self.train_loader), 1)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self):
        """Everything `resume` needs, as tensors and plain Python values (weights_only-safe)."""
        return {"format": CHECKPOINT_FORMAT, "config": asdict(self.config), "labels": self.labels,
                "epoch": self.epoch, "history": self.history, "best": self.best,
                "model": adapt.state_dict_cpu(self.model),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def resume(self):
        """Load OUT_DIR/last.pth; the configuration and classes must be the ones it was made with."""
        path = self.out_dir / "last.pth"
        if not path.is_file():
            raise Ig65mError(f"nothing to resume: {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a corrupt file
            raise Ig65mError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
        self._check_checkpoint(path, state)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng_cpu"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise Ig65mError(f"{path} does not fit this run's model and optimiser: "
                             f"{str(err).splitlines()[0]}") from None
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        log.info("resuming after epoch %d of %d", self.epoch, self.config.epochs)

    def _check_checkpoint(self, path, state):
        """The checkpoint must hold every part `resume` loads, made with this run's options."""
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise Ig65mError(f"{path} is not a finetune checkpoint")
        missing = sorted(set(CHECKPOINT_KEYS) - set(state))
        if missing or not isinstance(state["config"], dict):
            raise Ig65mError(f"{path} is not a complete finetune checkpoint "
                             f"(missing: {', '.join(missing) or 'config'})")
        now = asdict(self.config)
        differs = [f"--{key.replace('_', '-')} {state['config'].get(key)!r} (now {now[key]!r})"
                   for key in sorted(set(now) | set(state["config"]))
                   if key not in now or state["config"].get(key, now[key]) != now[key]]
        if differs:
            raise Ig65mError(f"{path} was trained with other options; resume with the same ones: "
                             + ", ".join(differs))
        if state["labels"] != self.labels:
            raise Ig65mError(f"{path} was trained on other classes: "
                             f"{', '.join(map(str, state['labels'] or []))}")

    def _save_epoch(self, row):
        out = self.out_dir
        if self.best is None or row["val_top1"] > self.best["val_top1"]:
            self.best = {"epoch": row["epoch"], "val_top1": row["val_top1"]}
            with atomic_path(out / "best.pth") as tmp:
                torch.save(adapt.state_dict_cpu(self.model), tmp)
            with atomic_path(out / "labels.txt") as tmp:
                tmp.write_text("".join(f"{label}\n" for label in self.labels), encoding="utf-8")
        with atomic_path(out / "last.pth") as tmp:
            torch.save(self.checkpoint(), tmp)
        with atomic_path(out / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history), encoding="utf-8")
        plots.plot_history(self.history, out / "curves.png")

    # -- training ----------------------------------------------------------------------------

    def train_epoch(self):
        """One pass over the training set -> (mean loss, top-1 of the training clips)."""
        self.model.train()
        adapt.hold_frozen(self.frozen)
        self.train_set.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        losses, correct, seen = [], 0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   unit="batch", disable=not self.progress, file=sys.stderr, leave=False)
        for clips, targets in bar:
            clips, targets = clips.to(self.device), targets.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss, logits = self._forward_backward(clips, targets)
            if not torch.isfinite(loss):
                raise Ig65mError(f"the loss became {loss.item()} in epoch {self.epoch + 1}; "
                                 f"lower --lr")
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return float(np.mean(losses)), correct / max(seen, 1)

    def _forward_backward(self, clips, targets):
        """Loss and gradients of one batch -> (loss, logits). With `chunk_frames`, a stream model
        sees the clip in consecutive chunks through its stream buffer, one backward pass per
        chunk, the buffer cleaned before and after the batch (seed 004's training loop); the
        last chunk's logits cover the whole clip."""
        chunks = clips.split(self.config.chunk_frames or clips.shape[2], dim=2)
        streaming = len(chunks) > 1
        if streaming:
            self.model.streaming = True
            self.model.clean_activation_buffers()
        total = 0.0
        try:
            for chunk in chunks:
                with torch.autocast(self.device.type, enabled=self.amp):
                    logits = self.model(chunk)
                    loss = F.cross_entropy(logits.float(), targets) / len(chunks)
                self.scaler.scale(loss).backward()
                total = total + loss.detach()
        finally:
            if streaming:
                self.model.clean_activation_buffers()
                self.model.streaming = False
        return total, logits

    def validate(self):
        scores, targets = predict(self.model, self.val_loader, self.device,
                                  batch_size=self.config.batch_size)
        return {"val_loss": nll(scores, targets), "val_top1": topk_accuracy(scores, targets, 1),
                "val_top5": topk_accuracy(scores, targets, 5)}

    def fit(self, on_epoch_end=None):
        """Train the remaining epochs -> the summary (best epoch, its val top-1, files)."""
        while self.epoch < self.config.epochs:
            started = time.monotonic()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, train_top1 = self.train_epoch()
            row = {"epoch": self.epoch + 1, "lr": lr, "train_loss": train_loss,
                   "train_top1": train_top1, **self.validate(),
                   "seconds": round(time.monotonic() - started, 3)}
            if not math.isfinite(row["val_loss"]):
                row["val_loss"] = None
            self.history.append(row)
            self.epoch += 1
            self._save_epoch(row)
            log.info("%s", json.dumps(row))
            if on_epoch_end is not None:
                on_epoch_end(self, row)
        return {"model": self.config.model, "out_dir": str(self.out_dir),
                "classes": self.labels, "best_epoch": self.best["epoch"],
                "best_val_top1": self.best["val_top1"], "epochs": self.epoch,
                "train_videos": len(self.train_set), "val_videos": len(self.val_loader.dataset),
                "best": str(self.out_dir / "best.pth"), "labels": str(self.out_dir / "labels.txt")}


def finetune(dataset, out_dir, config, *, val=None, resume=False, device=None, num_workers=0,
             progress=True, on_epoch_end=None):
    """Fine-tune as `config` says -> the summary dict. `on_epoch_end(run, row)` is called after
    each epoch's files are written. A fresh run refuses an OUT_DIR holding a checkpoint."""
    out_dir = check_folder_writable(out_dir)
    if not resume and (out_dir / "last.pth").exists():
        raise Ig65mError(f"{out_dir} already holds a run (last.pth): pass --resume to continue "
                         f"it, or choose another folder")
    if resume and not (out_dir / "last.pth").is_file():
        raise Ig65mError(f"nothing to resume: {out_dir / 'last.pth'} does not exist")
    if out_dir.exists() and not out_dir.is_dir():
        raise Ig65mError(f"{out_dir} is not a folder")
    run = Run(dataset, out_dir, config, val=val, device=device, num_workers=num_workers,
              progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        run.resume()
    return run.fit(on_epoch_end)
