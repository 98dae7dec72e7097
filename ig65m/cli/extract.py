"""`extract`: videos, folders or a camera -> per-clip features (.npy + .json sidecar)."""

import json

import click

from ig65m.classify import ClipLabels
from ig65m.cli.base import command
from ig65m.cli.options import (COUNT, POSITIVE, model_options, parse_input_options,
                               split_model_options)
from ig65m.errors import Ig65mError
from ig65m.cli.backend import backend_options
from ig65m.extract import Extractor
from ig65m.fileio import check_folder_writable, check_writable
from ig65m.jobs import JobManifest, job_settings, plan_jobs, run_batch, select_pending, video_record
from ig65m.labels import labels_for
from ig65m.models import get_spec
from ig65m.video import check_source, is_live

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
@click.option("--ray", is_flag=True,
              help="Run the collection on Ray (pip install 'ig65m[ray]'): a local Ray on this "
                   "machine, or the cluster of --ray-address. Needs --output-dir.")
@click.option("--ray-address", default=None, metavar="auto|ray://HOST:10001|HOST:PORT",
              help="The Ray cluster to join (default: start a local one).")
@click.option("--ray-workers", type=click.IntRange(1), default=None,
              help="Model actors [one per GPU of the cluster; without GPUs, half its CPUs].")
@click.option("--ray-clips-per-task", type=click.IntRange(1), default=None,
              help="Clips decoded per Ray task: longer videos are split into tasks of this "
                   "many clips [about 64 MB of preprocessed clips, a multiple of --batch-size].")
def extract(paths, output_dir, from_list, overwrite, input_format, old_input_format, input_option,
            labels, backend, onnx, threads, calibration, ray, ray_address, ray_workers,
            ray_clips_per_task, **options):
    """Extract per-clip features: `extract VIDEO FEATURES.npy`, or many videos with --output-dir.

    VIDEO is a file, a camera such as /dev/video0, or any ffmpeg input with --input-format (e.g.
    `--input-format lavfi testsrc=size=320x240:rate=30`). Prints one JSON line per video written.
    """
    if old_input_format is not None:
        click.echo("warning: extract --format is now --input-format (--format names the output "
                   "format in the other commands); the old spelling still works for now", err=True)
        input_format = input_format or old_input_format
    jobs = plan_jobs(paths, output_dir, from_list)
    model_kwargs, run_kwargs = split_model_options(options)
    run_kwargs.update(format=input_format, input_options=parse_input_options(input_option))
    if output_dir is None and from_list is None:
        _check_single_output(jobs[0][1], overwrite)
    else:
        check_folder_writable(output_dir)
    if labels is not None:  # a bad label file fails before the model loads
        labels = labels_for(get_spec(model_kwargs["model"]).weights,
                            None if labels == "published" else labels)
    if not calibration:  # INT8 calibrates on the user's own videos: the files being extracted
        calibration = [src for src, _ in jobs if not is_live(src, input_format)]
    model_kwargs.update(backend=backend, onnx=onnx, threads=threads,
                        calibration=calibration or None)
    if ray:
        if output_dir is None or labels is not None:
            raise Ig65mError("--ray runs collections: give --output-dir (and no --labels)")
        from ig65m.ray_extract import RayOptions, run_ray_job  # Ray is imported only here

        ray_options = RayOptions(ray_address, ray_workers, ray_clips_per_task)
        failed, attempted = run_ray_job(jobs, output_dir, model_kwargs, run_kwargs, ray_options,
                                        overwrite=overwrite, emit=_emit, say=_say)
    else:
        if output_dir is None:
            failed, attempted = _extract_one(*jobs[0], model_kwargs, run_kwargs, labels, overwrite)
        else:
            extractor = Extractor(**model_kwargs)
            failed, attempted = _extract_many(extractor, jobs, output_dir, run_kwargs, labels,
                                              overwrite)
    if failed:
        raise Ig65mError(f"{len(failed)} of {attempted} videos failed: "
                         f"{', '.join(str(source) for source in failed)}")


def _check_single_output(output, overwrite):
    """`extract VIDEO OUT.npy` names one output: an existing one is an error, not a silent skip
    (a script would take the old features for new ones); a bad output path fails before work."""
    if output.exists() and not overwrite:
        raise Ig65mError(f"{output} exists: nothing extracted; pass --overwrite to replace it")
    check_writable(output)


def _emit(record):
    click.echo(json.dumps(record))


def _say(text):
    click.echo(text, err=True)


def _extract_one(source, output, model_kwargs, run_kwargs, labels, overwrite):
    """VIDEO FEATURES.npy (checked by `_check_single_output`): errors stop at once."""
    check_source(source, format=run_kwargs["format"])  # before the model loads
    extractor = Extractor(**model_kwargs)
    tally, clip_tops = (ClipLabels(labels) if labels is not None else None), []
    on_batch = None if tally is None else (lambda batch: clip_tops.extend(tally.add(batch)))
    meta = extractor.extract(source, output, **run_kwargs, on_batch=on_batch,
                             replace=overwrite)
    _emit(video_record(source, output, meta, tally, clip_tops))
    return [], 1


def _extract_many(extractor, jobs, output_dir, run_kwargs, labels, overwrite):
    """--output-dir: resume from the job manifest; failures are recorded and the rest go on."""
    manifest = JobManifest(output_dir, job_settings(extractor, run_kwargs),
                           extractor.weights_sha256)
    try:
        pending = select_pending(jobs, manifest, overwrite, _say)
        progress = run_batch(extractor, pending, manifest, run_kwargs, emit=_emit, say=_say,
                             labels=labels, progress=extractor.progress)
    finally:
        manifest.close()
    _say(progress.summary(len(jobs) - len(pending)))
    return progress.failed_sources, len(pending)
