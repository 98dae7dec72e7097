"""`convert SRC OUT --model NAME`: released Caffe2 / TensorFlow weights -> OUT.pth and OUT.onnx."""

from pathlib import Path

import click

from ig65m.cli.base import command
from ig65m.cli.options import COUNT, FRAMES
from ig65m.convert.release import convert_release, convertible_models, resolve_model


def _model_help():
    return ", ".join(spec.name for spec in convertible_models())


@command("convert")
@click.argument("source", metavar="SRC", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--model", default=None, help=f"Registry model to convert into: {_model_help()}.")
@click.option("--frames", type=FRAMES, default=None,
              help="Clip frames (8 or 32), with --classes, instead of --model.")
@click.option("--classes", type=COUNT, default=None,
              help="Classes of the pickle's head (359, 400 or 487), with --frames.")
def convert(source, out, model, frames, classes):
    """Convert released weights into OUT.pth and OUT.onnx.

    SRC: a Caffe2 pickle (VMZ / IG-65M R(2+1)D-34, video-nonlocal-net I3D ResNet-50), DeepMind I3D
    TensorFlow variables (.npz or a checkpoint) or a published I3D PyTorch port. Pickles are read
    with an unpickler that only rebuilds numpy arrays (nothing in them runs); every blob must fill
    exactly one tensor. The ONNX model (input `clips` N x C x T x H x W, outputs `logits`,
    `features`) is checked against PyTorch with ONNX Runtime. Prints `sha256  path` for each
    output on stdout (the format `sha256sum -c` reads).
    """
    spec = resolve_model(model, frames=frames, classes=classes)
    result = convert_release(source, out, spec)
    click.echo(f"{result.pth_sha256}  {result.pth}")
    click.echo(f"{result.onnx_sha256}  {result.onnx}")
