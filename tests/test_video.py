import itertools

import numpy as np
import pytest

from ig65m.errors import Ig65mError
from ig65m.sample import write_sample_video
from ig65m.video import is_live, read_frames, scaled_size
from tests.videos import ODD_RATE, audio_only, empty_video, lossless_video


@pytest.mark.parametrize("threads", [None, 1, 2, 0])  # the default, one, two, FFmpeg's choice
def test_frames_are_exact_and_rgb(tmp_path, threads):
    images = lossless_video(tmp_path / "v.mkv", frames=12)
    frames = list(read_frames(tmp_path / "v.mkv", frame_size=None, threads=threads))
    assert len(frames) == 12
    for frame, image in zip(frames, images):
        assert frame.image.dtype == np.uint8 and frame.image.shape == (48, 64, 3)
        np.testing.assert_array_equal(frame.image, image)


def test_times_come_from_presentation_timestamps(tmp_path):
    lossless_video(tmp_path / "v.mp4", frames=20, fps=ODD_RATE)
    times = [frame.time for frame in read_frames(tmp_path / "v.mp4")]
    expected = np.arange(20) * 50 / 981
    np.testing.assert_allclose(times, expected, atol=1e-3)
    assert not np.allclose(times, np.arange(20) / 30, atol=1e-3)


def test_frames_scaled_at_decode_keep_aspect(tmp_path):
    lossless_video(tmp_path / "v.mkv", frames=2, width=96, height=48)
    frames = list(read_frames(tmp_path / "v.mkv", frame_size=32))
    assert frames[0].image.shape == (32, 64, 3)
    assert scaled_size(320, 240, 128) == (171, 128)
    assert scaled_size(240, 320, 128) == (128, 171)


def test_shared_sample_at_odd_rate(shared_data):
    frames = list(read_frames(shared_data / "videos" / "v_GGSY1Qvo990.mp4", frame_size=64))
    assert len(frames) == 355
    assert frames[0].image.shape == (64, 85, 3)
    np.testing.assert_allclose(frames[100].time, 100 * 50 / 981, atol=1e-3)
    np.testing.assert_allclose(frames[-1].time, 354 * 50 / 981, atol=1e-3)


def test_lavfi_stand_in_camera():
    assert is_live("testsrc=size=64x48:rate=30", "lavfi") and is_live("/dev/video0")
    frames = list(itertools.islice(read_frames("testsrc=size=64x48:rate=30", format="lavfi",
                                               frame_size=32), 5))
    assert [f.image.shape for f in frames] == [(32, 43, 3)] * 5
    np.testing.assert_allclose([f.time for f in frames], np.arange(5) / 30, atol=1e-6)


def _error_of(source, **kwargs):
    with pytest.raises(Ig65mError) as info:
        list(read_frames(source, **kwargs))
    return str(info.value)


def test_bad_sources(tmp_path):
    assert "not found" in _error_of(tmp_path / "missing.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    assert "cannot open" in _error_of(tmp_path / "text.mp4")
    assert "folder" in _error_of(tmp_path)
    assert "cannot open" in _error_of(empty_video(tmp_path / "empty.mkv"))
    (tmp_path / "zero.mp4").write_bytes(b"")
    assert "cannot open" in _error_of(tmp_path / "zero.mp4")
    assert "no video stream" in _error_of(audio_only(tmp_path / "audio.m4a"))
    assert "cannot open /dev/video97" in _error_of("/dev/video97")


def test_truncated_videos(tmp_path):
    write_sample_video(tmp_path / "v.mp4", seconds=3, width=64, height=48)
    data = (tmp_path / "v.mp4").read_bytes()  # moov at the end: cut -> nothing to read
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    assert "cannot open" in _error_of(tmp_path / "cut.mp4")
    write_sample_video(tmp_path / "v.mkv", seconds=4, width=64, height=48)
    data = (tmp_path / "v.mkv").read_bytes()  # header first: decodes, then stops early
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    assert "truncated" in _error_of(tmp_path / "cut.mkv")
