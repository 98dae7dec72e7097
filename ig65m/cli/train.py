"""`finetune` and `evaluate`: train a registry model on labelled videos, and measure it."""

import json

import click

from ig65m.cli.base import command
from ig65m.cli.options import FRAMES, PIXELS, SEED, COUNT, finite
from ig65m.defaults import DEFAULT_MODEL

_MODEL_HELP = "Model name (see `ig65m models`)."


def _clip_options(function):
    for option in reversed([
        click.option("--clip-frames", type=FRAMES, default=None,
                     help="Frames per clip [model default]."),
        click.option("--frame-size", type=PIXELS, default=None,
                     help="Short side of decoded frames [model default]."),
        click.option("--crop-size", type=PIXELS, default=None,
                     help="Side of the square crop fed to the model [model default]."),
        click.option("--device", default=None, help="torch device [cuda when present, else cpu]."),
        click.option("--num-workers", type=click.IntRange(0, 256), default=0, show_default=True,
                     help="Decoding processes (DataLoader workers)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]):
        function = option(function)
    return function


@command("finetune")
@click.argument("dataset", type=click.Path())
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help=_MODEL_HELP)
@click.option("--weights", default=None,
              help="Starting weights: a local .pth, 'random', or [the pretrained release].")
@click.option("--val", "val_dataset", type=click.Path(), default=None,
              help="Validation dataset (folder or CSV) [DATASET/val, or --val-split].")
@click.option("--val-split", type=finite(0, 1, min_open=True, max_open=True),
              default=None,
              help="Fraction of each class held out for validation when DATASET has no val/ "
                   "[0.2].")
@click.option("--epochs", type=click.IntRange(1, 1_000_000), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 65536), default=8, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw",
              show_default=True)
@click.option("--lr", type=finite(0, 1000, min_open=True), default=None,
              help="Peak learning rate of the cosine schedule [1e-3 AdamW, 1e-2 SGD].")
@click.option("--weight-decay", type=finite(0, 1000), default=1e-4, show_default=True)
@click.option("--freeze", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Freeze the first K feature blocks (R(2+1)D: stem + residual blocks).")
@click.option("--no-flip", is_flag=True,
              help="No horizontal flips in training (for classes that flipping changes).")
@click.option("--chunk-frames", type=FRAMES, default=None,
              help="Stream models (movinet_*_stream): feed each training clip in chunks of "
                   "this many frames through the stream buffer, cleaned between videos.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in OUT_DIR from its last.pth.")
@_clip_options
def finetune(dataset, out_dir, model, weights, val_dataset, val_split, epochs, batch_size,
             optimizer, lr, weight_decay, freeze, no_flip, chunk_frames, seed, resume,
             clip_frames, frame_size, crop_size, device, num_workers, quiet):
    """Fine-tune MODEL on DATASET (class folders or a path,label CSV) into OUT_DIR.

    OUT_DIR gets best.pth + labels.txt (for --weights/--labels of extract, classify and
    evaluate), last.pth (for --resume), metrics.jsonl and curves.png. Prints a JSON summary.
    """
    from ig65m.train.finetune import FinetuneConfig
    from ig65m.train.finetune import finetune as run_finetune

    config = FinetuneConfig(model=model, weights=weights, epochs=epochs, batch_size=batch_size,
                            optimizer=optimizer, lr=lr, weight_decay=weight_decay, freeze=freeze,
                            clip_frames=clip_frames, frame_size=frame_size, crop_size=crop_size,
                            flip=not no_flip, val_split=val_split, seed=seed,
                            chunk_frames=chunk_frames)
    summary = run_finetune(dataset, out_dir, config, val=val_dataset, resume=resume,
                           device=device, num_workers=num_workers, progress=not quiet)
    click.echo(json.dumps(summary, indent=2))


@command("evaluate")
@click.argument("dataset", type=click.Path())
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help=_MODEL_HELP)
@click.option("--weights", default=None,
              help="A local .pth (e.g. finetune's OUT_DIR/best.pth), 'random', or [the "
                   "pretrained release].")
@click.option("--labels", "labels_file", type=click.Path(), default=None,
              help="Class names in logit order [labels.txt beside --weights, or the model's "
                   "published list].")
@click.option("--mode", type=click.Choice(["clip", "video"]), default="video", show_default=True,
              help="clip: one centred clip, centre crop; video: clips x 3 crops, averaged.")
@click.option("--num-clips", type=COUNT, default=10, show_default=True,
              help="Uniformly spaced clips per video in --mode video.")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=8, show_default=True,
              help="Clips per forward pass.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.json (every figure and prediction) and confusion.png.")
@_clip_options
def evaluate(dataset, model, weights, labels_file, mode, num_clips, batch_size, out_dir,
             clip_frames, frame_size, crop_size, device, num_workers, quiet):
    """Top-1, top-5 and mean per-class accuracy of MODEL on DATASET (class folders, its val/
    split, or a CSV). Prints the figures as JSON."""
    from ig65m.train.evaluate import evaluate as run_evaluate

    report = run_evaluate(dataset, model=model, weights=weights, labels=labels_file, mode=mode,
                          num_clips=num_clips, batch_size=batch_size, clip_frames=clip_frames,
                          frame_size=frame_size, crop_size=crop_size, device=device,
                          num_workers=num_workers, out_dir=out_dir, progress=not quiet)
    keys = ("model", "mode", "views_per_video", "videos", "skipped", "top1", "top5",
            "mean_class_accuracy")
    click.echo(json.dumps({key: report[key] for key in keys}, indent=2))
