import numpy as np
import pytest
import torch

from ig65m.clips import clip_windows, resample_fps
from ig65m.errors import Ig65mError
from ig65m.transforms import ClipTransform
from ig65m.video import Frame


def frames(count, period=0.1):
    """Frames whose pixels hold their index (two bytes: low, high), `period` seconds apart."""
    return [Frame(np.tile(np.array([i % 256, i // 256, 0], np.uint8), (4, 6, 1)), i * period)
            for i in range(count)]


def windows(count, **kwargs):
    clips = list(clip_windows(iter(frames(count)), **kwargs))
    return [clip.frames[:, 0, 0, 0].tolist() for clip in clips], clips


def test_windows_without_overlap_pad_the_tail():
    indices, clips = windows(10, clip_frames=4)
    assert indices == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    np.testing.assert_allclose([(c.start, c.end) for c in clips], [(0, 0.4), (0.4, 0.8), (0.8, 1.0)])
    assert clips[0].frames.shape == (4, 4, 6, 3)


def test_drop_tail_and_exact_fit():
    assert windows(10, clip_frames=4, tail="drop")[0] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows(8, clip_frames=4)[0] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_video_shorter_than_a_clip_gives_one_padded_clip():
    assert windows(3, clip_frames=8)[0] == [[0, 1, 2, 2, 2, 2, 2, 2]]
    assert windows(1, clip_frames=4)[0] == [[0, 0, 0, 0]]
    assert windows(3, clip_frames=8, tail="drop")[0] == []


def test_overlapping_and_sparse_steps():
    assert windows(10, clip_frames=4, step=2)[0] == [
        [0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    # every frame already covered: no extra padded clip
    assert windows(8, clip_frames=4, step=2)[0] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    assert windows(10, clip_frames=2, step=5)[0] == [[0, 1], [5, 6]]
    assert windows(11, clip_frames=2, step=5)[0] == [[0, 1], [5, 6], [10, 10]]


def test_bad_window_settings():
    with pytest.raises(ValueError):
        list(clip_windows(iter(frames(3)), clip_frames=0))


def resampled(count, period, fps):
    return [(int(f.image[0, 0, 0]) + 256 * int(f.image[0, 0, 1]), round(f.time, 4)) for f in
            resample_fps(iter(frames(count, period)), fps)]


def test_resample_down_keeps_the_frame_on_screen():
    assert resampled(10, 1 / 30, 10) == [(0, 0.0), (3, 0.1), (6, 0.2), (9, 0.3)]


def test_resample_up_repeats_frames():
    assert resampled(3, 0.1, 20) == [(0, 0.0), (0, 0.05), (1, 0.1), (1, 0.15), (2, 0.2), (2, 0.25)]
    assert resampled(1, 0.1, 20) == [(0, 0.0)]


def test_resample_odd_source_rate_by_timestamp():
    period = 50 / 981  # 19.62 fps
    out = resampled(981, period, 10)  # 50 s of video
    assert len(out) == 500
    # each sample shows the latest frame at or before its instant
    for index, time in out[::37]:
        assert index * period <= time + 1e-6 < (index + 1) * period


def test_transform_crops_centre_and_normalises():
    video = np.random.default_rng(0).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    clip = ClipTransform(4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))(video)
    assert clip.shape == (3, 2, 4, 4) and clip.dtype == torch.float32
    expected = (video[:, 1:5, 2:6, 1] / 255.0 - 0.25) / 0.25
    np.testing.assert_allclose(clip[1].numpy(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(Ig65mError, match="smaller than"):
        ClipTransform(7, (0, 0, 0), (1, 1, 1))(video)
