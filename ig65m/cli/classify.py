"""`classify`: top-k action labels per clip and for the whole video, or live from a stream model."""

import json

import click
import torch

from ig65m.classify import classify_clips, classify_stream, load_stream_model
from ig65m.cli.base import command
from ig65m.cli.options import (COUNT, FRAMES, POSITIVE, model_options, parse_input_options,
                               split_model_options)
from ig65m.cli.backend import backend_options
from ig65m.errors import Ig65mError
from ig65m.extract import Extractor
from ig65m.labels import labels_for
from ig65m.models import get_spec
from ig65m.stream import stream_backend
from ig65m.video import check_source, is_live


def _labels_text(top):
    return " | ".join(f"{entry['label']} {entry['score']:.3f}" for entry in top)


def format_record(record):
    """One line of the table format for a clip, a stream prediction or the whole video."""
    if "clip" in record:
        head = f"clip {record['clip']:>5}  {record['start']:9.2f}-{record['end']:<9.2f}s"
    elif "frame" in record:
        head = (f"frame {record['frame']:>6}  {record['time']:9.2f}s  "
                f"{record['latency_ms']:7.1f} ms/frame (max {record['latency_max_ms']:.1f})")
    else:
        count = f"{record['clips']} clips" if "clips" in record else \
            f"{record['frames']} frames, {record['latency_ms']:.1f} ms/frame"
        head = f"video ({count})"
    return f"{head}  {_labels_text(record['top'])}"


def _emit(records, output_format):
    for record in records:
        line = json.dumps(record) if output_format == "json" else format_record(record)
        click.echo(line)


@command("classify")
@click.argument("source")
@model_options
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False), default=None,
              help="Class names, one per line, replacing the model's dataset list.")
@click.option("--top", type=COUNT, default=5, show_default=True, help="Classes per prediction.")
@click.option("--every", type=FRAMES, default=None,
              help="Stream models: a prediction every N model frames [clip frames].")
@click.option("--format", "output_format", type=click.Choice(["json", "table"]), default="json",
              show_default=True, help="json: one object per line, the whole video last.")
@click.option("--max-clips", type=COUNT, default=None, help="Stop after this many clips.")
@click.option("--duration", type=POSITIVE, default=None, help="Stop after this many seconds.")
@click.option("--input-format", default=None,
              help="ffmpeg input format, e.g. v4l2 or lavfi (default: from the source).")
@click.option("--input-option", multiple=True, metavar="KEY=VALUE",
              help="ffmpeg input option, e.g. video_size=640x480 (repeatable).")
@backend_options
def classify(source, labels_file, top, every, output_format, max_clips, duration, input_format,
             input_option, backend, onnx, threads, calibration, **options):
    """Print the top classes of SOURCE: per clip and for the whole video.

    With a stream model (e.g. --model movinet_a0_stream) frames go through the stream buffer as
    they arrive, in constant memory: a prediction every --every frames with its per-frame
    latency; a camera (/dev/video0, or `--input-format lavfi testsrc=size=320x240:rate=30`) runs
    until Ctrl-C. Frames are resampled to the model's training frame rate unless --fps is given.
    """
    spec = get_spec(options["model"])
    if top < 1 or (every is not None and every < 1) or (threads is not None and threads < 1):
        raise Ig65mError("--top, --every and --threads must be positive")
    input_options = parse_input_options(input_option)
    check_source(source, format=input_format)
    labels = labels_for(spec.weights, labels_file)
    try:
        if spec.weights.stream:
            records = _stream_records(spec, source, labels, top, every, backend, onnx, duration,
                                      input_format, input_options, dict(options, threads=threads))
        else:
            calibration = calibration or None
            records = _clip_records(source, labels, top, max_clips, duration, input_format,
                                    input_options, dict(backend=backend, onnx=onnx,
                                                        threads=threads, calibration=calibration),
                                    options)
        _emit(records, output_format)
    except KeyboardInterrupt:
        if not is_live(source, input_format):
            raise
        click.echo("stopped", err=True)


def _clip_records(source, labels, top, max_clips, duration, input_format, input_options,
                  backend_kwargs, options):
    model_kwargs, run_kwargs = split_model_options(options)
    extractor = Extractor(**backend_kwargs, **model_kwargs)
    return classify_clips(extractor, source, labels, top=top, max_clips=max_clips,
                          duration=duration, format=input_format, input_options=input_options,
                          **run_kwargs)


def _stream_records(spec, source, labels, top, every, backend, onnx, duration, input_format,
                    input_options, options):
    backend = stream_backend(backend)
    # one thread: the lowest per-frame latency for the stream models on a busy machine
    torch.set_num_threads(options["threads"] or 1)
    model, sha, device = load_stream_model(spec, options["weights"], device=options["device"],
                                           backend=backend)
    return classify_stream(spec, model, source, labels, every=every, top=top, device=device,
                           backend=backend, onnx=onnx, weights_sha256=sha,
                           frame_size=options["frame_size"], crop_size=options["crop_size"],
                           fps=options["fps"], duration=duration, format=input_format,
                           input_options=input_options, threads=options["threads"] or 1)
