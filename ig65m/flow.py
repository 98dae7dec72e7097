"""Optical flow from decoded frames, as input for I3D's flow stream.

DeepMind's I3D flow stream was trained on TV-L1 flow (C. Zach, T. Pock, H. Bischof, "A Duality Based
Approach for Realtime TV-L1 Optical Flow", 2007) computed on grayscale frames whose short side is
256, with values clipped to [-20, 20] and scaled to [-1, 1]. `flow_frames` computes it from any
frame iterator (`ig65m.video.read_frames`, after `resample_fps` if wanted) with OpenCV's Dual TV-L1
(`cv2.optflow`, in opencv-contrib-python-headless: `pip install ig65m[flow]`). Where only plain
OpenCV is installed, `method="auto"` falls back to Farneback flow, which is faster but not what the
model was trained on, and says so on stderr.

Flow frame k is the motion from frame k to frame k + 1 and carries frame k's time, so an RGB clip
and a flow clip starting at the same index cover the same moment; a stream of N frames gives N - 1
flow frames. Memory: two frames at a time.
"""

import logging
from typing import Iterator, NamedTuple

import numpy as np

from ig65m.errors import Ig65mError

log = logging.getLogger(__name__)

METHODS = ("auto", "tvl1", "farneback")


class FlowFrame(NamedTuple):
    """`image` float32 (H, W, 2): (dx, dy) in pixels from this frame to the next; `time` seconds."""

    image: np.ndarray
    time: float


def _cv2():
    try:
        import cv2
    except ImportError:
        raise Ig65mError("optical flow needs OpenCV: pip install opencv-contrib-python-headless "
                         "(or pip install 'ig65m[flow]')") from None
    return cv2


def resolve_method(method="auto"):
    """"tvl1" when cv2.optflow is there, else "farneback" for "auto"; checks an explicit choice."""
    if method not in METHODS:
        raise Ig65mError(f"unknown flow method {method!r}; choose one of {', '.join(METHODS)}")
    cv2 = _cv2()
    has_tvl1 = hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")
    if method == "tvl1" and not has_tvl1:
        raise Ig65mError("TV-L1 flow needs OpenCV's contrib modules: pip install "
                         "opencv-contrib-python-headless")
    if method == "auto":
        method = "tvl1" if has_tvl1 else "farneback"
        if method == "farneback":
            log.warning("cv2.optflow (opencv-contrib) is missing; using Farneback flow, not the "
                        "TV-L1 flow I3D was trained on")
    return method


def flow_estimator(method="auto"):
    """-> function(previous gray uint8 (H, W), next gray uint8 (H, W)) -> flow float32 (H, W, 2)."""
    method = resolve_method(method)
    cv2 = _cv2()
    if method == "tvl1":
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()  # OpenCV's defaults, as the usual I3D tools
        return lambda previous, following: tvl1.calc(previous, following, None)
    return lambda previous, following: cv2.calcOpticalFlowFarneback(
        previous, following, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def flow_frames(frames, *, method="auto") -> Iterator[FlowFrame]:
    """Frames (`image` RGB uint8 (H, W, 3), `time`) -> FlowFrame after FlowFrame, one per pair of
    consecutive frames (see the module notes), computed on grayscale images."""
    cv2 = _cv2()
    estimate = flow_estimator(method)
    previous = None
    for frame in frames:
        gray = cv2.cvtColor(np.ascontiguousarray(frame.image), cv2.COLOR_RGB2GRAY)
        if previous is not None:
            if gray.shape != previous[0].shape:
                raise Ig65mError(f"frame size changed from {previous[0].shape} to {gray.shape} "
                                 f"at {frame.time:.3f} s; optical flow needs a constant size")
            flow = estimate(previous[0], gray)
            yield FlowFrame(np.asarray(flow, dtype=np.float32), previous[1])
        previous = (gray, frame.time)
