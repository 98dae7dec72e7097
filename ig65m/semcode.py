"""Pictures of clip features over time ("semantic codes").

Pure functions turn features (N clips, D dimensions) into the arrays to draw:

- `strip_image`: the original tool's barcode, RGB (D, M, 3): time along x, feature dimensions along
  y, saturation of one hue = activation;
- `self_similarity`: the clip-by-clip cosine self-similarity matrix (M, M), of the features minus
  their mean over the video by default (raw cosines of one video's clips are all close to 1);
- `principal_components`: the first three principal components over time (M, 3), and `pca_band`,
  the same as an RGB colour band (1, M, 3).

`ig65m.timeline` adds scene boundaries and a row of the video's frames along the time axis.
`draw` lays them out in a matplotlib `Figure` (no pyplot state, rendered with Agg), `save` writes
it atomically with fixed metadata so the same input gives the same bytes, and `semcode` is the
whole job the CLI runs.

Long videos: `summarise` reads the memory-mapped (N, D) array once, in chunks, and averages
consecutive clips into at most `max_bins` equal bins (M = min(N, max_bins)), so a 10-hour video
draws in the memory of a short one (a second pass first when centring). Similarity of two bins is the mean cosine similarity over all
clip pairs between them (the block average of the full N x N matrix), which is exactly the dot
product of the bins' means of unit-length features.
"""

from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure

from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path, check_writable, load_features, sidecar_path
from ig65m.sidecar import Sidecar
from ig65m.timeline import frames_for_axis, scene_boundaries

VIEWS = ("strip", "similarity", "pca", "all")
SCALES = ("robust", "dim", "global")
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpeg", ".jpeg": "jpeg"}

# figure height / width for each panel; "all" stacks them
_PANEL_HEIGHT = {"strip": 0.3, "pca": 0.45, "similarity": 0.8, "frames": 0.1}
# no dates and no version strings: the same input gives the same bytes
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
             "pdf": {"CreationDate": None, "Creator": None, "Producer": None}, "jpeg": None}
_RC = {"svg.hashsalt": "ig65m-semcode", "svg.fonttype": "path", "pdf.compression": 6}
_PC_COLOURS = ("tab:red", "tab:green", "tab:blue")


class Summary(NamedTuple):
    """Features averaged into M time bins.

    means: (M, D) float64 mean features; unit_means: (M, D) mean of the unit-length features
    (centred first when summarised with `centre=True`);
    edges: (M + 1,) first row of each bin plus N; spans: (M, 2) start and end of each bin, in
    seconds (sidecar clip times) or clip numbers (clip i spans i - 0.5 .. i + 0.5); seconds: which.
    """

    means: np.ndarray
    unit_means: np.ndarray
    edges: np.ndarray
    spans: np.ndarray
    seconds: bool


def bin_edges(rows, max_bins):
    """(M + 1,) int64 bin boundaries splitting `rows` into M = min(rows, max_bins) near-equal bins."""
    bins = min(rows, max_bins)
    # bins are >= 1 row wide, so rounding keeps the edges strictly increasing
    return np.rint(np.linspace(0, rows, bins + 1)).astype(np.int64)


def check_features(features, name="features"):
    """Raise Ig65mError unless `features` is a non-empty 2-d array of real numbers."""
    if features.ndim != 2:
        raise Ig65mError(f"{name} must be 2-d (clips x dims), got shape {features.shape}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise Ig65mError(f"{name} is empty (shape {features.shape})")
    if not (np.issubdtype(features.dtype, np.integer) or np.issubdtype(features.dtype, np.floating)):
        raise Ig65mError(f"{name} must hold real numbers, got dtype {features.dtype}")


def clip_spans(meta, rows, name="sidecar"):
    """(N, 2) float64 clip [start, end]: seconds from the sidecar's `clips`, else clip numbers.

    Returns (spans, seconds) where `seconds` says which. A sidecar whose clips disagree with the
    features raises Ig65mError rather than drawing a wrong time axis.
    """
    clips = None if meta is None else Sidecar.from_dict(meta, name=name, rows=rows).clips
    if clips is None:
        index = np.arange(rows, dtype=np.float64)
        return np.stack([index - 0.5, index + 0.5], axis=1), False
    return np.asarray(clips, dtype=np.float64).reshape(rows, 2), True


def feature_mean(features, *, chunk_rows=4096, name="features"):
    """(D,) float64 mean of all rows, read `chunk_rows` at a time; Ig65mError for NaN or inf."""
    total = np.zeros(features.shape[1])
    for first in range(0, features.shape[0], chunk_rows):
        block = np.asarray(features[first:first + chunk_rows], dtype=np.float64)
        if not np.isfinite(block).all():
            raise Ig65mError(f"{name} holds NaN or infinite values")
        total += block.sum(axis=0)
    return total / features.shape[0]


def summarise(features, spans=None, *, max_bins=1000, chunk_rows=4096, centre=False,
              name="features"):
    """(N, D) features (any array, e.g. memory-mapped) -> Summary of M = min(N, max_bins) bins.

    Reads `chunk_rows` rows at a time (twice with `centre`: unit_means are then those of the
    features minus their mean over the whole video, so the similarity shows what changes rather
    than what every clip shares). Raises Ig65mError for empty, non-real or non-finite features.
    """
    check_features(features, name)
    rows, dims = features.shape
    offset = feature_mean(features, chunk_rows=chunk_rows, name=name) if centre else 0.0
    edges = bin_edges(rows, max_bins)
    bins = len(edges) - 1
    means, unit_means = np.empty((bins, dims)), np.empty((bins, dims))
    per_chunk = max(1, chunk_rows * bins // rows)
    for first in range(0, bins, per_chunk):
        last = min(first + per_chunk, bins)
        block = np.asarray(features[edges[first]:edges[last]], dtype=np.float64)
        if not np.isfinite(block).all():
            raise Ig65mError(f"{name} holds NaN or infinite values")
        starts = edges[first:last] - edges[first]
        means[first:last] = np.add.reduceat(block, starts, axis=0)
        block = block - offset
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        unit = np.divide(block, norms, out=np.zeros_like(block), where=norms > 0)
        unit_means[first:last] = np.add.reduceat(unit, starts, axis=0)
    counts = np.diff(edges)[:, None]
    seconds = spans is not None
    if spans is None:
        spans, _ = clip_spans(None, rows)
    bin_spans = np.stack([spans[edges[:-1], 0], spans[edges[1:] - 1, 1]], axis=1)
    return Summary(means / counts, unit_means / counts, edges, bin_spans, seconds)


def scale_activations(means, scale="robust"):
    """(M, D) -> (M, D) in [0, 1]: each dimension over time from its 2nd to its 98th percentile,
    clipped ("robust": a few outlier clips do not wash out the rest), from its minimum to its
    maximum ("dim"), or everything from the overall minimum to maximum ("global", the original
    tool's: dimensions with large offsets dominate). A constant range maps to 0, so constant
    features draw a flat strip."""
    if scale not in SCALES:
        raise Ig65mError(f"unknown scale {scale!r}: choose one of {', '.join(SCALES)}")
    axis = None if scale == "global" else 0
    if scale == "robust":
        low, high = np.percentile(means, [2, 98], axis=0, keepdims=True)
    else:
        low, high = means.min(axis=axis, keepdims=True), means.max(axis=axis, keepdims=True)
    span = high - low
    scaled = np.divide(means - low, span, out=np.zeros_like(means), where=span > 0)
    return np.clip(scaled, 0.0, 1.0)


def strip_image(means, *, scale="robust", hue=20.0):
    """(M, D) features -> RGB (D, M, 3) in [0, 1]: the original semcode, vectorised.

    Hue `hue` degrees everywhere, value 1, saturation = scaled activation: white for the lowest,
    the full colour for the highest. Row d is feature dimension d, column m is time bin m.
    """
    intensity = scale_activations(means, scale).T
    hsv = np.empty(intensity.shape + (3,))
    hsv[..., 0] = (hue % 360.0) / 360.0
    hsv[..., 1] = intensity
    hsv[..., 2] = 1.0
    return hsv_to_rgb(hsv)


def self_similarity(unit_means):
    """(M, D) bin means of unit-length features -> (M, M) mean cosine similarity, in [-1, 1].

    Without binning (one clip per bin) this is the plain cosine similarity matrix; all-zero
    features have similarity 0 with everything.
    """
    return np.clip(unit_means @ unit_means.T, -1.0, 1.0)


def principal_components(means, components=3):
    """(M, D) -> (scores (M, components), explained variance ratios (components,)).

    Zero-padded when the data has fewer components (one clip, one dimension, constant features).
    Each component's sign is fixed so its largest-magnitude loading is positive, which makes the
    picture independent of the linear algebra library.
    """
    centred = means - means.mean(axis=0)
    # eigen-decompose the smaller Gram matrix: M x M or D x D
    if centred.shape[0] <= centred.shape[1]:
        values, left = np.linalg.eigh(centred @ centred.T)
        loadings = centred.T @ left
    else:
        values, loadings = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(values)[::-1][:components]
    values, loadings = np.clip(values[order], 0.0, None), loadings[:, order]
    norms = np.linalg.norm(loadings, axis=0)
    keep = (values > 1e-12 * values.sum()) & (norms > 0)
    loadings = np.where(keep, loadings / np.where(norms > 0, norms, 1.0), 0.0)
    peak = loadings[np.abs(loadings).argmax(axis=0), np.arange(loadings.shape[1])]
    loadings *= np.where(peak < 0, -1.0, 1.0)
    scores, ratios = np.zeros((means.shape[0], components)), np.zeros(components)
    scores[:, :loadings.shape[1]] = centred @ loadings
    total = (centred ** 2).sum()
    if total > 0:
        ratios[:len(values)] = np.where(keep, values, 0.0) / total
    return scores, ratios


def pca_band(scores):
    """(M, 3) component scores -> RGB (1, M, 3) in [0, 1]: PC1 red, PC2 green, PC3 blue, all on one
    symmetric scale around 0.5, so a weak component stays near grey instead of being stretched."""
    peak = np.abs(scores).max()
    band = 0.5 + scores / (2 * peak) if peak > 0 else np.full_like(scores, 0.5)
    return band[None]


def time_extent(spans):
    """(M, 2) bin spans -> (left, right) of the time axis, bins drawn evenly around their centres."""
    centres = spans.mean(axis=1)
    if len(centres) == 1:
        left, right = spans[0]
        return (left, right) if right > left else (left - 0.5, left + 0.5)
    half = (centres[-1] - centres[0]) / (2 * (len(centres) - 1))
    half = half if half > 0 else 0.5
    return centres[0] - half, centres[-1] + half


def _draw_strip(ax, summary, extent, scale, hue):
    dims = summary.means.shape[1]
    ax.imshow(strip_image(summary.means, scale=scale, hue=hue), aspect="auto",
              extent=(*extent, dims - 0.5, -0.5), interpolation="antialiased")
    ax.set_ylabel("feature dimension")
    how = {"robust": "each dimension: 2nd-98th percentile", "dim": "each dimension: min-max",
           "global": "one min-max for all"}[scale]
    ax.set_title(f"feature activations ({how})", fontsize="medium")


def _draw_pca(band_ax, line_ax, summary, extent):
    scores, ratios = principal_components(summary.means)
    band_ax.imshow(pca_band(scores), aspect="auto", extent=(*extent, 0, 1),
                   interpolation="antialiased")
    band_ax.set_yticks([])
    band_ax.tick_params(labelbottom=False)
    band_ax.set_title("principal components (band: PC1-3 as RGB)", fontsize="medium")
    centres = summary.spans.mean(axis=1)
    marker = "o" if len(centres) == 1 else None
    for k, colour in enumerate(_PC_COLOURS):
        line_ax.plot(centres, scores[:, k], color=colour, marker=marker, linewidth=1,
                     label=f"PC{k + 1} ({ratios[k]:.0%})")
    line_ax.set_xlim(extent)
    line_ax.set_ylabel("score")
    line_ax.legend(loc="upper right", fontsize="small", ncols=3)


def similarity_title(similarity, centred):
    """What the similarity colours mean; the range is stated when it is narrow (< 0.1 wide)."""
    title = "cosine self-similarity" + (" of mean-centred features" if centred else "")
    low, high = similarity.min(), similarity.max()
    if high - low < 0.1:
        title += f" (all within {low:.4f}-{high:.4f})"
    return title


def _draw_similarity(fig, ax, summary, extent, label, centred):
    similarity = self_similarity(summary.unit_means)
    # aspect "auto" and the colour bar below keep the time axis as wide as the other panels'
    image = ax.imshow(similarity, cmap="magma", extent=(*extent, extent[1], extent[0]),
                      interpolation="antialiased", aspect="auto")
    ax.set_ylabel(label)
    ax.set_title(similarity_title(similarity, centred), fontsize="medium")
    fig.colorbar(image, ax=ax, location="bottom", shrink=0.6, aspect=40, pad=0.01,
                 label="cosine similarity")


def _draw_frames(ax, thumbnails, extent):
    """Thumbnails side by side over the time axis, each centred on the time it shows
    (`ig65m.timeline.frames_for_axis`)."""
    ax.imshow(np.concatenate(thumbnails, axis=1), aspect="auto", extent=(*extent, 0, 1),
              interpolation="antialiased")
    ax.set_yticks([])
    ax.tick_params(labelbottom=False)
    ax.set_title("frames", fontsize="medium")


def _mark_boundaries(ax, boundaries, summary, both_axes=False):
    for boundary in boundaries:
        at = boundary.get("time", boundary["clip"] - 0.5)
        ax.axvline(at, color="tab:cyan", linestyle="--", linewidth=1.2)
        if both_axes:
            ax.axhline(at, color="tab:cyan", linestyle="--", linewidth=1.2)


def draw(summary, *, view="strip", scale="robust", hue=20.0, title=None, width=1000, dpi=100,
         centred=False, boundaries=(), thumbnails=None):
    """Summary -> matplotlib Figure of `width` pixels at `dpi`, attached to an Agg canvas.

    view: "strip", "similarity", "pca" or "all" (the three stacked); `thumbnails` (frames at
    `thumbnail_times`) add a row of frames on top; `boundaries` (from
    `ig65m.timeline.scene_boundaries`) are dashed lines across every panel.
    """
    check_options(view=view, scale=scale, hue=hue, width=width, dpi=dpi)
    panels = ("strip", "pca", "similarity") if view == "all" else (view,)
    panels = (("frames",) if thumbnails else ()) + panels
    height = round(width * sum(_PANEL_HEIGHT[p] for p in panels))
    # Agg truncates the size in pixels: a quarter pixel more keeps 333 / 100 * 100 from giving 332
    fig = Figure(figsize=((width + 0.25) / dpi, (height + 0.25) / dpi), dpi=dpi,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ratios = {"strip": [3], "pca": [0.6, 3.9], "similarity": [8], "frames": [1]}
    grid = fig.add_gridspec(sum(len(ratios[p]) for p in panels), 1,
                            height_ratios=[r for p in panels for r in ratios[p]])
    extent = time_extent(summary.spans)
    label = "time (s)" if summary.seconds else "clip"
    row = 0
    for panel in panels:
        ax = fig.add_subplot(grid[row])
        if panel == "frames":
            _draw_frames(ax, thumbnails, extent)
        elif panel == "strip":
            _draw_strip(ax, summary, extent, scale, hue)
        elif panel == "pca":
            line_ax = fig.add_subplot(grid[row + 1], sharex=ax)
            _draw_pca(ax, line_ax, summary, extent)
            _mark_boundaries(ax, boundaries, summary)
            ax = line_ax
        else:
            _draw_similarity(fig, ax, summary, extent, label, centred)
        _mark_boundaries(ax, boundaries, summary, both_axes=panel == "similarity")
        if panel != "frames":
            ax.set_xlabel(label)
        row += len(ratios[panel])
    if boundaries:
        top = fig.axes[0]
        top.set_title(top.get_title() + "; dashed: scene boundaries", fontsize="medium")
    if title:
        fig.suptitle(title)
    return fig


def check_options(*, view="strip", scale="robust", hue=20.0, width=1000, dpi=100):
    """Raise Ig65mError for an unknown view or scale, a non-finite hue, or an absurd size."""
    if view not in VIEWS:
        raise Ig65mError(f"unknown view {view!r}: choose one of {', '.join(VIEWS)}")
    if scale not in SCALES:
        raise Ig65mError(f"unknown scale {scale!r}: choose one of {', '.join(SCALES)}")
    if not np.isfinite(hue):
        raise Ig65mError(f"--color must be a hue in degrees, got {hue}")
    if not 100 <= width <= 20000:
        raise Ig65mError(f"--width must be 100 to 20000 pixels, got {width}")
    if not 10 <= dpi <= 1200:
        raise Ig65mError(f"--dpi must be 10 to 1200, got {dpi}")


def image_format(path):
    """The matplotlib format for an output path, from its extension."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise Ig65mError(f"cannot tell the picture format of {path}: use one of "
                         f"{', '.join(FORMATS)}")
    return fmt


def save(fig, path):
    """Write `fig` to `path` atomically, in the format its extension names, with metadata that
    carries no date, so the same figure gives the same bytes."""
    fmt = image_format(path)
    with matplotlib.rc_context(_RC), atomic_path(path) as tmp:
        options = {"pil_kwargs": {"quality": 90}} if fmt == "jpeg" else {}
        fig.savefig(tmp, format=fmt, metadata=_METADATA[fmt], **options)
    return path


class Drawn(NamedTuple):
    """What `semcode` drew: the Figure, and the scene boundaries found ([] unless asked for)."""

    figure: Figure
    boundaries: list


def semcode(features_path, image_path, *, view="strip", scale="robust", hue=20.0, title=None,
            width=1000, dpi=100, max_bins=1000, centre=True, video=None, boundaries=False):
    """Draw the features in `features_path` (.npy + optional sidecar) into `image_path`.

    `centre`: the similarity view compares mean-centred features. `video`: the source video,
    for a row of frames along the time axis (needs the sidecar's clip times). `boundaries`: find
    scene boundaries (see ig65m.timeline) and mark them. `title=None` uses the features file
    name, "" draws none. Every check runs before any drawing and nothing is written on error.
    """
    check_options(view=view, scale=scale, hue=hue, width=width, dpi=dpi)
    image_format(image_path)
    check_writable(image_path)
    features, meta = load_features(features_path)
    check_features(features, str(features_path))
    spans, seconds = clip_spans(meta, features.shape[0], name=str(sidecar_path(features_path)))
    if video is not None and not seconds:
        raise Ig65mError(f"--video needs clip times: {sidecar_path(features_path)} is missing")
    summary = summarise(features, spans if seconds else None, max_bins=max_bins, centre=centre,
                        name=str(features_path))
    found = scene_boundaries(summary) if boundaries else []
    thumbnails = None if video is None else \
        frames_for_axis(video, time_extent(summary.spans), width, _PANEL_HEIGHT["frames"])
    if title is None:
        title = Path(features_path).name
    with matplotlib.rc_context(_RC):
        fig = draw(summary, view=view, scale=scale, hue=hue, title=title, width=width, dpi=dpi,
                   centred=centre, boundaries=found, thumbnails=thumbnails)
    save(fig, image_path)
    return Drawn(fig, found)
