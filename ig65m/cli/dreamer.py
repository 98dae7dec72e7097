"""`dreamer VIDEO DREAM.gif|.mp4|.png`: video deep dream, maximising a layer's activations."""

import click

from ig65m.cli.base import command
from ig65m.defaults import DEFAULT_MODEL
from ig65m.dreamer import DreamOptions, Dreamer, list_layers
from ig65m.errors import Ig65mError


def parse_channels(text):
    """'3,17' -> (3, 17); None stays None (the whole layer)."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise Ig65mError(f"--channels takes channel numbers separated by commas, got {text!r}") \
            from None


@command("dreamer", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("video", required=False)
@click.argument("dream", required=False)
@click.option("--list-layers", "list_model", metavar="MODEL", default=None,
              help="Print MODEL's layers (name, output channels x T x H x W) and exit.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Any RGB model of `ig65m models`.")
@click.option("--weights", default=None,
              help="Local .pth, 'random' or 'random:SEED'; default: the pretrained release.")
@click.option("--layer", default=None, help="Layer to maximise [layer2, else a third of the way in].")
@click.option("--channels", default=None, metavar="C1,C2,...",
              help="Maximise only these channels of the layer [all of them].")
@click.option("--steps", type=int, default=DreamOptions.steps, show_default=True,
              help="Gradient steps per octave and clip.")
@click.option("--lr", type=float, default=DreamOptions.lr, show_default=True,
              help="Mean step size, in normalised pixel units.")
@click.option("--tv", type=float, default=DreamOptions.tv, show_default=True,
              help="Weight of the total-variation penalty (smoothness).")
@click.option("--octaves", type=int, default=DreamOptions.octaves, show_default=True,
              help="Coarse-to-fine pyramid levels, each 1.4x the previous.")
@click.option("--seed", type=int, default=DreamOptions.seed, show_default=True,
              help="Seed of the random shifts: the same seed gives the same dream.")
@click.option("--start", type=float, default=0.0, show_default=True, help="First second dreamt.")
@click.option("--duration", type=float, default=None, help="Seconds dreamt [to the end].")
@click.option("--frame-size", type=int, default=None,
              help="Short side of the dreamt frames [the model's crop size].")
@click.option("--device", default=None, help="torch device [cuda when present, else cpu].")
def dreamer(video, dream, list_model, model, weights, layer, channels, steps, lr, tv, octaves,
            seed, start, duration, frame_size, device):
    """Dream VIDEO into DREAM (.gif, .mp4, or .png: a few source and dreamt frames side by side).

    Gradient ascent on the video's clips maximising the mean square of a layer's activations,
    with a total-variation penalty, clip by clip (overlaps cross-faded) in constant memory.
    """
    if list_model is not None:
        for name, shape in list_layers(list_model):
            click.echo(f"{name}\t{' x '.join(map(str, shape))}")
        return
    if video is None or dream is None:
        raise Ig65mError("dreamer needs VIDEO and DREAM (or --list-layers MODEL)")
    options = DreamOptions(layer=layer, channels=parse_channels(channels), steps=steps, lr=lr,
                           tv=tv, octaves=octaves, seed=seed)
    options.check()
    Dreamer(model, weights, device=device).dream(video, dream, options, frame_size=frame_size,
                                                  start=start, duration=duration)
