"""`semcode FEATURES.npy PICTURE.png`: pictures of clip features over time."""

import json
from pathlib import Path

import click

from ig65m.cli.base import command
from ig65m.cli.options import finite
from ig65m.semcode import SCALES, VIEWS, semcode as draw_semcode


@command("semcode", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("features", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--view", default="strip", show_default=True, metavar="[" + "|".join(VIEWS) + "]",
              help="strip: the semantic code barcode; similarity: clip-by-clip cosine "
                   "similarity; pca: first three principal components; all: the three stacked.")
@click.option("--scale", default="robust", show_default=True, metavar="[" + "|".join(SCALES) + "]",
              help="strip intensity: each dimension over time between its 2nd and 98th "
                   "percentile (robust) or its min and max (dim), or one min-max for all values "
                   "(global, the original tool's).")
@click.option("--centre/--no-centre", default=True, show_default=True,
              help="similarity of features minus their mean over the video (what changes), "
                   "or of the raw features (all close to 1).")
@click.option("--video", type=click.Path(path_type=Path), default=None,
              help="the source video: adds a row of its frames along the time axis.")
@click.option("--boundaries", is_flag=True,
              help="mark scene boundaries (where consecutive clips change most) and print "
                   "them as JSON on stdout.")
@click.option("--color", "hue", type=finite(0, 360), default=20.0, show_default=True,
              help="hue of the strip in degrees (0-360), as the original semcode.")
@click.option("--title", default=None, help="figure title  [default: the features file name; '' for none]")
@click.option("--width", type=click.IntRange(100, 20000), default=1000, show_default=True, help="picture width in pixels.")
@click.option("--dpi", type=click.IntRange(10, 2400), default=100, show_default=True,
              help="dots per inch: text size relative to the picture, and raster resolution.")
def semcode(features, image, view, scale, centre, video, boundaries, hue, title, width, dpi):
    """Draw the clip features in FEATURES (.npy from `extract`) over time into IMAGE.

    The format follows IMAGE's extension: png, svg, pdf or jpg. Time is in seconds when the
    sidecar FEATURES.json is beside the features, in clip numbers otherwise.
    """
    drawn = draw_semcode(features, image, view=view, scale=scale, hue=hue, title=title,
                         width=width, dpi=dpi, centre=centre, video=video, boundaries=boundaries)
    if boundaries:
        click.echo(json.dumps({"features": str(features), "boundaries": drawn.boundaries}))
