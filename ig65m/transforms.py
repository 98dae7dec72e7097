"""Model-side preprocessing: centre crop, scale to [0, 1], normalise, reorder to (C, T, H, W); for
optical flow, centre crop and bound."""

import numpy as np
import torch

from ig65m.defaults import FLOW_BOUND
from ig65m.errors import Ig65mError


class ClipTransform:
    """uint8 frames (T, H, W, 3) -> float32 tensor (3, T, crop_size, crop_size).

    Values are scaled to [0, 1], then normalised per channel: (x - mean) / std. Frames must be at
    least `crop_size` on both sides (decode with a short side >= crop_size).
    """

    def __init__(self, crop_size, mean, std):
        self.crop_size = crop_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)

    def __call__(self, frames):
        crop = centre_crop(torch.from_numpy(np.asarray(frames)), self.crop_size)
        clip = crop.permute(3, 0, 1, 2).float().div_(255.0)
        return clip.sub_(self.mean).div_(self.std).contiguous()


def centre_crop(frames, crop_size):
    """The centre `crop_size` square of frames (T, H, W, C); Ig65mError if they are smaller."""
    height, width = frames.shape[1:3]
    if height < crop_size or width < crop_size:
        raise Ig65mError(f"frames of {width}x{height} are smaller than the {crop_size} crop; "
                         f"decode with --frame-size >= {crop_size}")
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    return frames[:, top:top + crop_size, left:left + crop_size]


class FlowClipTransform:
    """Flow frames float (T, H, W, 2) -> float32 tensor (2, T, crop_size, crop_size): centre crop,
    values clipped to [-bound, bound] and divided by `bound` (I3D: bound 20 -> [-1, 1])."""

    def __init__(self, crop_size, bound=FLOW_BOUND):
        self.crop_size = crop_size
        self.bound = float(bound)

    def __call__(self, flows):
        flows = torch.from_numpy(np.asarray(flows, dtype=np.float32))
        if flows.dim() != 4 or flows.shape[-1] != 2:
            raise ValueError(f"expected flow frames (T, H, W, 2), got {tuple(flows.shape)}")
        crop = centre_crop(flows, self.crop_size)
        clip = crop.permute(3, 0, 1, 2).clamp(-self.bound, self.bound).div(self.bound)
        return clip.contiguous()


def transform_for(config, crop_size=None):
    """The preprocessing of a registry `Weights` row or a resolved `ig65m.preprocess.Preprocess`
    (optionally with another crop size): RGB normalisation, or flow bounding for flow models."""
    crop_size = crop_size or config.crop_size
    if config.modality == "flow":
        return FlowClipTransform(crop_size, config.flow_bound or FLOW_BOUND)
    return ClipTransform(crop_size, config.mean, config.std)
