"""Options shared by every command that runs a model; importable without torch."""

import functools
import math

import click

from ig65m.defaults import DEFAULT_MODEL, POOLINGS
from ig65m.errors import Ig65mError

EXTRACTOR_KEYS = ("model", "weights", "device", "pool_spatial", "pool_temporal")

# Ranges shared by every command's numeric options. Upper bounds keep numbers inside what the
# libraries underneath take (C ints, pixel sizes); memory is checked separately, once the model's
# settings are known (ig65m.memory).
PIXELS = click.IntRange(1, 16384)        # frame and crop sides
FRAMES = click.IntRange(1, 1_000_000)    # frames per clip, frames between clips
COUNT = click.IntRange(1, 2**31 - 1)     # clips, batches, epochs, classes
SEED = click.IntRange(0, 2**32 - 1)      # what numpy and torch take


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which compare false against any bound)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def finite(min=None, max=None, *, min_open=False, max_open=False):
    """A finite float option type within [min, max] (open ends as asked)."""
    return FiniteFloat(min, max, min_open=min_open, max_open=max_open)


POSITIVE = finite(0, min_open=True)      # seconds, rates, learning rates


def model_options(function):
    """Options choosing the model and its clips, shared by every command that runs a model.

    They reach the command as keyword arguments; `split_model_options` sorts them into the
    `Extractor(...)` arguments and the per-source clip options.
    """
    options = [
        click.option("--model", default=DEFAULT_MODEL, show_default=True,
                     help="Model name (see `ig65m models`)."),
        click.option("--weights", default=None,
                     help="Local .pth file, 'random' for pipeline checks, or 'random:SEED' for the "
                          "same random weights in every run and process; default: the "
                          "model's pretrained release, downloaded into the cache."),
        click.option("--frame-size", type=PIXELS, default=None,
                     help="Short side of decoded frames [model default]."),
        click.option("--crop-size", type=PIXELS, default=None,
                     help="Side of the centre crop fed to the model [model default]."),
        click.option("--clip-frames", type=FRAMES, default=None,
                     help="Frames per clip [model default]."),
        click.option("--step", type=FRAMES, default=None,
                     help="Frames between clip starts [clip frames]."),
        click.option("--fps", type=finite(0, 1000, min_open=True), default=None,
                     help="Resample to this frame rate by timestamp first."),
        click.option("--batch-size", type=click.IntRange(1, 65536), default=4, show_default=True),
        click.option("--device", default=None, help="torch device [cuda when present, else cpu]."),
        click.option("--pool-spatial", type=click.Choice(POOLINGS), default="mean", show_default=True),
        click.option("--pool-temporal", type=click.Choice(POOLINGS), default="mean", show_default=True),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)


def split_model_options(options):
    """kwargs of `model_options` -> (Extractor kwargs, per-source kwargs)."""
    model = {key: options.pop(key) for key in EXTRACTOR_KEYS}
    return model, options


def parse_input_options(pairs):
    """--input-option KEY=VALUE pairs -> {key: value} for ffmpeg."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Ig65mError(f"--input-option takes KEY=VALUE, got {pair!r}")
        parsed[key] = value
    return parsed
