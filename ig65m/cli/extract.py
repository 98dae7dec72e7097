"""`extract`: videos, folders or a camera -> per-clip features (.npy + .json sidecar)."""

import json
from pathlib import Path

import click

from ig65m.classify import ClipLabels
from ig65m.cli.base import command
from ig65m.cli.options import (COUNT, POSITIVE, model_options, parse_input_options,
                               split_model_options)
from ig65m.errors import Ig65mError
from ig65m.cli.backend import backend_options
from ig65m.extract import Extractor
from ig65m.fileio import check_folder_writable, check_writable
from ig65m.labels import labels_for
from ig65m.models import get_spec
from ig65m.video import VIDEO_SUFFIXES, check_source, is_live

def _expand(paths, from_list):
    """Sources: files as given, folders searched for videos, plus the lines of --from-list."""
    sources = []
    for path in list(paths) + _read_list(from_list):
        if Path(path).is_dir():
            found = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            sources.extend((p, p.relative_to(path)) for p in found)
        else:
            sources.append((Path(path), Path(Path(path).name)))
    return sources


def _read_list(from_list):
    if from_list is None:
        return []
    try:
        lines = Path(from_list).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise Ig65mError(f"cannot read --from-list {from_list}: {err}") from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _jobs(paths, output_dir, from_list):
    """[(source, output .npy)] from the command line's two forms."""
    if output_dir is None and from_list is None:
        if len(paths) != 2:
            raise Ig65mError("give VIDEO FEATURES.npy, or videos/folders with --output-dir")
        if not paths[1].endswith(".npy"):
            raise Ig65mError(f"the output must be a .npy file, got {paths[1]}")
        return [(paths[0], Path(paths[1]))]
    if output_dir is None:
        raise Ig65mError("--from-list needs --output-dir")
    jobs = [(str(src), Path(output_dir) / rel.with_suffix(".npy"))
            for src, rel in _expand(paths, from_list)]
    if not jobs:
        raise Ig65mError("no videos found in the given paths")
    outputs = [out for _, out in jobs]
    if len(set(outputs)) != len(outputs):
        raise Ig65mError("two videos would write the same features file; give folders instead")
    return jobs


@command("extract")
@click.argument("paths", nargs=-1)
@model_options
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Write FOLDER/<video>.npy for every video given (files or folders).")
@click.option("--from-list", type=click.Path(dir_okay=False), default=None,
              help="A file of video paths, one per line (with --output-dir).")
@click.option("--overwrite", is_flag=True, help="Replace existing features files.")
@click.option("--max-clips", type=COUNT, default=None, help="Stop after this many clips.")
@click.option("--duration", type=POSITIVE, default=None, help="Stop after this many seconds.")
@click.option("--tail", type=click.Choice(["pad", "drop"]), default="pad", show_default=True,
              help="Pad the last partial clip by repeating its last frame, or drop it.")
@click.option("--input-format", "input_format", default=None,
              help="ffmpeg input format, e.g. v4l2 or lavfi (default: from the source).")
@click.option("--format", "old_input_format", default=None, hidden=True,
              help="The old spelling of --input-format (--format means the output elsewhere).")
@click.option("--input-option", multiple=True, metavar="KEY=VALUE",
              help="ffmpeg input option, e.g. video_size=640x480 (repeatable).")
@click.option("--labels", is_flag=False, flag_value="published", default=None, metavar="[FILE]",
              help="Also print the top-5 labels per clip and for the whole video: the model's "
                   "published label list, or the names in FILE (one per line).")
@backend_options
def extract(paths, output_dir, from_list, overwrite, input_format, old_input_format, input_option,
            labels, backend, onnx, threads, calibration, **options):
    """Extract per-clip features: `extract VIDEO FEATURES.npy`, or many videos with --output-dir.

    VIDEO is a file, a camera such as /dev/video0, or any ffmpeg input with --input-format (e.g.
    `--input-format lavfi testsrc=size=320x240:rate=30`). Prints one JSON line per video written.
    """
    if old_input_format is not None:
        click.echo("warning: extract --format is now --input-format (--format names the output "
                   "format in the other commands); the old spelling still works for now", err=True)
        input_format = input_format or old_input_format
    jobs = _jobs(paths, output_dir, from_list)
    model_kwargs, run_kwargs = split_model_options(options)
    run_kwargs.update(format=input_format, input_options=parse_input_options(input_option))
    if output_dir is None and from_list is None:
        _check_single_output(jobs[0][1], overwrite)
    else:
        check_folder_writable(output_dir)
    pending = [(src, out) for src, out in jobs if overwrite or not out.exists()]
    for src, out in jobs:
        if (src, out) not in pending:
            click.echo(f"skipping {src}: {out} exists (use --overwrite)", err=True)
    if not pending:
        return
    if len(pending) == 1:  # fail on a bad source before the model loads
        check_source(pending[0][0], format=input_format)
    if labels is not None:  # a bad label file fails before the model loads
        labels = labels_for(get_spec(model_kwargs["model"]).weights,
                            None if labels == "published" else labels)
    if not calibration:  # INT8 calibrates on the user's own videos: the files being extracted
        calibration = [src for src, _ in pending if not is_live(src, input_format)]
    extractor = Extractor(backend=backend, onnx=onnx, threads=threads,
                          calibration=calibration or None, **model_kwargs)
    failed = _run_jobs(extractor, pending, run_kwargs, labels, single=len(jobs) == 1)
    if failed:
        raise Ig65mError(f"{len(failed)} of {len(pending)} videos failed: "
                         f"{', '.join(str(src) for src in failed)}")


def _check_single_output(output, overwrite):
    """`extract VIDEO OUT.npy` names one output: an existing one is an error, not a silent skip
    (a script would take the old features for new ones); a bad output path fails before work."""
    if output.exists() and not overwrite:
        raise Ig65mError(f"{output} exists: nothing extracted; pass --overwrite to replace it")
    check_writable(output)


def _make_folder(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Ig65mError(f"cannot make folder {folder}: {err.strerror}") from None


def _run_jobs(extractor, jobs, run_kwargs, labels, single):
    failed = []
    for source, output in jobs:
        tally, clip_tops, on_batch = None, [], None
        if labels is not None:
            tally = ClipLabels(labels)
            on_batch = lambda batch: clip_tops.extend(tally.add(batch))  # noqa: E731
        try:
            if not single:
                _make_folder(output.parent)
            meta = extractor.extract(source, output, **run_kwargs, on_batch=on_batch)
        except Ig65mError as err:
            if single:
                raise
            click.echo(f"error: {source}: {err}", err=True)
            failed.append(source)
            continue
        record = {"source": str(source), "output": str(output), "clips": len(meta["clips"]),
                  "interrupted": meta["interrupted"]}
        if tally is not None:
            record.update(top=tally.video_top(), clip_top=[clip["top"] for clip in clip_tops])
        click.echo(json.dumps(record))
    return failed
