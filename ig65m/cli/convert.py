"""`convert SRC.pkl OUT --model NAME`: Caffe2 IG-65M R(2+1)D-34 weights -> OUT.pth and OUT.onnx."""

from pathlib import Path

import click

from ig65m.cli.base import command
from ig65m.convert.release import caffe2_models, convert_caffe2, resolve_model


def _model_help():
    return ", ".join(spec.name for spec in caffe2_models())


@command("convert")
@click.argument("source", metavar="SRC.pkl", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--model", default=None, help=f"Registry model to convert into: {_model_help()}.")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Clip frames (8 or 32), with --classes, instead of --model.")
@click.option("--classes", type=click.IntRange(min=1), default=None,
              help="Classes of the pickle's head (359, 400 or 487), with --frames.")
def convert(source, out, model, frames, classes):
    """Convert a Caffe2 R(2+1)D-34 weights pickle (VMZ / IG-65M release) into OUT.pth and OUT.onnx.

    The pickle is read with an unpickler that only rebuilds numpy arrays (nothing in it runs);
    every blob must fill exactly one tensor. The ONNX model (input `clips` N x 3 x T x 112 x 112,
    outputs `logits`, `features`) is checked against PyTorch with ONNX Runtime. Prints
    `sha256  path` for each output on stdout (the format `sha256sum -c` reads).
    """
    spec = resolve_model(model, frames=frames, classes=classes)
    result = convert_caffe2(source, out, spec)
    click.echo(f"{result.pth_sha256}  {result.pth}")
    click.echo(f"{result.onnx_sha256}  {result.onnx}")
