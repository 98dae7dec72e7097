"""Optical flow from decoded frames: a real (lossless) video of a texture moving by a known amount,
TV-L1 and the Farneback fallback, flow clips into the I3D flow stream, two-stream fusion."""

import numpy as np
import pytest
import torch

from ig65m.clips import clip_windows
from ig65m.errors import Ig65mError
from ig65m.flow import FlowFrame, flow_frames, resolve_method
from ig65m.models import get_spec
from ig65m.models.i3d_inception import InceptionI3D, two_stream_logits
from ig65m.sample import write_video
from ig65m.transforms import FlowClipTransform, transform_for
from ig65m.video import Frame, read_frames

pytest.importorskip("cv2")
DX, DY = 2, 1  # pixels per frame


def moving_texture(count, height=48, width=64, seed=0):
    """Frames of a smooth random texture translating by (DX, DY) pixels per frame."""
    import cv2

    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (height + 4 * count, width + 4 * count)).astype(np.uint8)
    big = cv2.GaussianBlur(big, (0, 0), 2.0)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX)
    top, left = 2 * count, 2 * count
    for index in range(count):
        # content moves right and down: the window moves left and up
        window = big[top - index * DY:top - index * DY + height,
                     left - index * DX:left - index * DX + width]
        yield np.repeat(window[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def texture_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("flow") / "texture.mkv"
    return write_video(path, moving_texture(6), fps=25, codec="libx264rgb", options={"crf": "0"})


@pytest.mark.parametrize("method, tolerance", [("tvl1", 0.25), ("farneback", 0.5)])
def test_flow_recovers_a_known_translation(texture_video, method, tolerance):
    frames = list(read_frames(texture_video, frame_size=48))
    flows = list(flow_frames(frames, method=method))
    assert len(flows) == len(frames) - 1
    assert [flow.time for flow in flows] == [frame.time for frame in frames[:-1]]
    for flow in flows:
        assert flow.image.shape == (48, 64, 2) and flow.image.dtype == np.float32
        interior = flow.image[12:-12, 12:-12].reshape(-1, 2)
        np.testing.assert_allclose(np.median(interior, axis=0), (DX, DY), atol=tolerance)


def test_auto_prefers_tvl1_and_unknown_methods_are_refused():
    assert resolve_method("auto") == "tvl1"
    with pytest.raises(Ig65mError, match="unknown flow method 'raft'"):
        resolve_method("raft")


def test_frame_size_change_is_a_user_error():
    frames = [Frame(np.zeros((32, 32, 3), np.uint8), 0.0), Frame(np.zeros((32, 40, 3), np.uint8),
                                                                 0.04)]
    with pytest.raises(Ig65mError, match="frame size changed"):
        list(flow_frames(frames, method="farneback"))


def test_flow_transform_crops_clips_and_scales():
    flows = np.zeros((2, 6, 8, 2), np.float32)
    flows[:, :, :, 0] = np.arange(8) * 10 - 40  # x: -40 ... 30
    flows[:, :, :, 1] = 5.0
    clip = FlowClipTransform(4, bound=20)(flows)
    assert clip.shape == (2, 2, 4, 4) and clip.dtype == torch.float32
    # (channel, time, row, column): centre columns 2..5 hold -20, -10, 0, 10, divided by 20
    torch.testing.assert_close(clip[0, 0, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5]))
    assert torch.all(clip[1] == 0.25)
    flows[:, :, :, 0] = -100
    assert torch.all(FlowClipTransform(4, bound=20)(flows)[0] == -1)
    with pytest.raises(Ig65mError, match="smaller than the 8 crop"):
        FlowClipTransform(8)(flows)


def test_flow_model_weights_row_describes_flow_input():
    weights = get_spec("i3d_inception_flow_kinetics").weights
    transform = transform_for(weights, crop_size=32)
    assert transform.bound == 20.0 and transform.crop_size == 32
    rgb = get_spec("i3d_inception_rgb_kinetics").weights
    clip = transform_for(rgb, 2)(np.array([[[[0, 255, 128]] * 2] * 2], np.uint8))
    torch.testing.assert_close(clip[:, 0, 0, 0], torch.tensor([-1.0, 1.0, 128 / 255 * 2 - 1]))


def test_two_stream_pipeline_on_a_real_video(texture_video):
    """RGB and flow clips over the same frames through both streams, fused by summing logits."""
    torch.manual_seed(0)
    rgb_model, flow_model = InceptionI3D(in_channels=3).eval(), InceptionI3D(in_channels=2).eval()
    frames = list(read_frames(texture_video, frame_size=48))
    flow_clip = next(clip_windows(flow_frames(frames, method="farneback"), clip_frames=4))
    rgb_clip = next(clip_windows(iter(frames), clip_frames=4))
    assert flow_clip.start == rgb_clip.start and flow_clip.frames.shape == (4, 48, 64, 2)
    rgb_weights = get_spec("i3d_inception_rgb_kinetics").weights
    rgb_input = transform_for(rgb_weights, 32)(rgb_clip.frames)[None]
    flow_input = FlowClipTransform(32)(flow_clip.frames)[None]
    with torch.no_grad():
        rgb_logits, flow_logits = rgb_model(rgb_input), flow_model(flow_input)
    fused = two_stream_logits(rgb_logits, flow_logits)
    assert fused.shape == (1, 400)
    torch.testing.assert_close(fused, rgb_logits + flow_logits)
    assert isinstance(next(flow_frames(frames[:2], method="farneback")), FlowFrame)
