"""What ties a semcode picture's time axis to the video: scene boundaries and frame thumbnails.

`scene_boundaries` finds where consecutive time bins change most: the cosine distance between
neighbouring bins of mean-centred features, kept where it is a local peak and an outlier, more than
`_OUTLIER` robust standard deviations (1.4826 x the median absolute deviation) above the median
change, and above `_MIN_CHANGE`. A video without cuts usually has none.

`frames_at` decodes the frames on screen at given times (seconds from the first frame), seeking
to each, so thumbnails of a long video cost a few seeks, not a full decode.
"""

import av
import numpy as np

from ig65m.errors import Ig65mError
from ig65m.video import open_container

_OUTLIER = 5.0
_MIN_CHANGE = 0.05  # cosine distance: below it, consecutive clips are alike whatever the spread


def consecutive_change(unit_means):
    """(M, D) centred bin means -> (M - 1,) cosine distance between each bin and the next."""
    norms = np.linalg.norm(unit_means, axis=1)
    dots = (unit_means[:-1] * unit_means[1:]).sum(axis=1)
    scale = norms[:-1] * norms[1:]
    cosine = np.divide(dots, scale, out=np.ones_like(dots), where=scale > 0)
    return 1.0 - np.clip(cosine, -1.0, 1.0)


def scene_boundaries(summary):
    """Summary (centred) -> [{"clip": first row after the boundary, "time": its start (seconds,
    only with sidecar times), "change": cosine distance}], in time order."""
    change = consecutive_change(summary.unit_means)
    if len(change) < 2:
        return []
    median = np.median(change)
    spread = 1.4826 * np.median(np.abs(change - median))
    threshold = max(median + _OUTLIER * spread, _MIN_CHANGE)
    padded = np.concatenate([[-np.inf], change, [-np.inf]])
    peaks = (change >= padded[:-2]) & (change > padded[2:]) & (change > threshold)
    found = []
    for i in np.flatnonzero(peaks):
        entry = {"clip": int(summary.edges[i + 1]), "change": round(float(change[i]), 6)}
        if summary.seconds:
            entry["time"] = round(float(summary.spans[i + 1, 0]), 6)
        found.append(entry)
    return found


def frame_aspect(source):
    """Width / height of the source's video frames."""
    container, stream = open_container(source)
    with container:
        return stream.codec_context.width / max(stream.codec_context.height, 1)


def frames_at(source, times, height):
    """The frames on screen at `times` (seconds from the first frame) -> list of RGB uint8
    (height, W, 3), aspect kept. Ig65mError if `source` cannot be opened or decoded."""
    container, stream = open_container(source)
    with container:
        origin = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        try:
            return [_frame_at(container, stream, origin + time, height) for time in times]
        except (av.FFmpegError, OSError) as err:
            raise Ig65mError(f"cannot decode {source} for thumbnails: {err}") from None


def _frame_at(container, stream, time, height):
    container.seek(max(int(time / stream.time_base), 0), stream=stream, backward=True)
    shown = None
    for frame in container.decode(stream):
        if shown is not None and frame.time is not None and frame.time > time + 1e-6:
            break
        shown = frame
    if shown is None:
        raise Ig65mError(f"no frame at {time:.2f} s")
    width = max(round(height * shown.width / shown.height), 1)
    return shown.reformat(width=width, height=height, format="rgb24",
                          interpolation="AREA").to_ndarray()


def frames_for_axis(video, extent, width, panel_height):
    """Thumbnails for a time axis spanning `extent` (seconds) in a figure `width` pixels wide
    whose frames panel is `panel_height` x width high: as many frames as fit side by side at
    the video's aspect ratio, each the frame at the centre of its slot of the axis."""
    aspect = frame_aspect(video)
    count = int(np.clip(round(0.85 / (panel_height * aspect)), 2, 24))
    left, right = extent
    times = left + (np.arange(count) + 0.5) * (right - left) / count
    height = max(round(width * 0.85 / count / aspect), 8)
    return frames_at(video, times, height)
