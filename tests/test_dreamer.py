"""dreamer: gradient ascent on real decoded clips of a small random-weights model (R(2+1)D-18)."""

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ig65m.cli import main
from ig65m.dreamer import (
    Dreamer, DreamOptions, blend, dream_clip, evenly_spaced, list_layers, span_frames, windows,
)
from tests.videos import lossless_video

MODEL = "r2plus1d_18_16_kinetics"  # 16-frame clips
WEIGHTS = "random:0"
FAST = dict(layer="layer1", steps=4, octaves=1)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """20 frames of 64x48 at 10 fps: two overlapping 16-frame clips."""
    path = tmp_path_factory.mktemp("dream") / "pattern.mkv"
    lossless_video(path, frames=20, fps=10)
    return path


@pytest.fixture(scope="module")
def dreamer(one_thread):
    return Dreamer(MODEL, WEIGHTS, progress=False)


def first_clip(video):
    return np.stack(list(span_frames(video, frame_size=32))[:16])


def channel_energy(dreamer, layer, frames):
    """Mean square of each channel of `layer` for uint8 frames (T, H, W, 3)."""
    objective = dreamer.objective(DreamOptions(layer=layer), frames.shape[1])
    with torch.no_grad():
        output = objective.activations(dreamer.normaliser.to_clip(frames))
    return output.pow(2).mean(dim=(0, 2, 3, 4)).numpy()


def test_the_objective_rises_over_the_steps_and_pixels_stay_valid(dreamer, video):
    frames = first_clip(video)
    options = DreamOptions(**FAST)
    gains = []
    dreamt = dream_clip(dreamer.objective(options, 32), frames, options, dreamer.normaliser,
                        torch.Generator().manual_seed(0), lambda gain, loss: gains.append(gain))
    assert len(gains) == options.steps
    assert gains[-1] > gains[0]
    assert dreamt.shape == frames.shape and dreamt.min() >= 0 and dreamt.max() <= 255
    before = channel_energy(dreamer, "layer1", frames).mean()
    after = channel_energy(dreamer, "layer1", np.rint(dreamt).astype(np.uint8)).mean()
    assert after > 1.1 * before
    assert np.abs(dreamt - frames).mean() > 1.0  # the picture changed


def test_channels_choose_what_rises(dreamer, video):
    frames = first_clip(video)
    channel = 5
    options = DreamOptions(**FAST, channels=(channel,))
    dreamt = dream_clip(dreamer.objective(options, 32), frames, options, dreamer.normaliser,
                        torch.Generator().manual_seed(0))
    rise = channel_energy(dreamer, "layer1", np.rint(dreamt).astype(np.uint8)) / \
        channel_energy(dreamer, "layer1", frames)
    assert rise.argmax() == channel
    assert rise[channel] > np.median(rise) * 1.25


def test_windows_overlap_and_blend_cross_fades():
    frames = list(range(20))
    assert [(first, len(w)) for first, w in windows(frames, 8, 6)] == [(0, 8), (6, 8), (12, 8)]
    assert [(first, len(w)) for first, w in windows(frames[:14], 8, 6)] == [(0, 8), (6, 8)]
    assert [(first, len(w)) for first, w in windows(frames[:5], 8, 6)] == [(0, 5)]
    # three windows of 8 overlapping by 2 over 20 frames, dreamt as constants 0, 90, 180
    originals = [np.full((2, 2, 3), i, np.uint8) for i in range(20)]
    dreamt = [(originals[f:f + 8], [np.full((2, 2, 3), 90.0 * k)] * len(originals[f:f + 8]))
              for k, f in enumerate((0, 6, 12))]
    pairs = list(blend(dreamt, 2))
    assert [int(p[0][0, 0, 0]) for p in pairs] == list(range(20))
    values = [int(p[1][0, 0, 0]) for p in pairs]
    assert values == [0] * 6 + [30, 60] + [90] * 4 + [120, 150] + [180] * 6


def test_evenly_spaced_keeps_first_and_last_in_bounded_memory():
    picks = evenly_spaced(range(1000), 4)
    assert len(picks) == 4 and picks[0] == 0 and picks[-1] == 999 and picks == sorted(picks)
    assert all(abs(b - a - 333) <= 70 for a, b in zip(picks, picks[1:]))
    assert evenly_spaced(range(3), 4) == [0, 1, 2]
    assert evenly_spaced(iter([]), 4) == []


def test_list_layers_names_shapes():
    result = CliRunner().invoke(main, ["dreamer", "--list-layers", MODEL])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("\t") for line in result.stdout.splitlines())
    assert lines["layer2"] == "128 x 8 x 28 x 28"
    assert list(lines)[0] == "stem"
    assert ("layer2", (128, 8, 28, 28)) in list_layers(MODEL)


def dream(video, out, *extra):
    return CliRunner().invoke(main, ["dreamer", str(video), str(out), "--model", MODEL,
                                     "--weights", WEIGHTS, "--layer", "layer1", "--steps", "1",
                                     "--frame-size", "32", *map(str, extra)])


def decoded(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_gif_has_every_frame_and_the_same_seed_gives_the_same_bytes(one_thread, video, tmp_path):
    for name, seed in (("a.gif", 0), ("b.gif", 0), ("c.gif", 1)):
        result = dream(video, tmp_path / name, "--seed", seed)
        assert result.exit_code == 0, result.output
    frames = decoded(tmp_path / "a.gif")
    assert len(frames) == 20 and frames[0].shape == (32, 42, 3)  # 64x48 -> 43x32, even sides
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()
    assert (tmp_path / "a.gif").read_bytes() != (tmp_path / "c.gif").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "b.gif", "c.gif"]


def test_mp4_covers_start_and_duration_and_png_shows_source_over_dream(one_thread, video,
                                                                         tmp_path):
    result = dream(video, tmp_path / "d.mp4", "--start", "0.5", "--duration", "1", "--frame-size",
                   "48", "--octaves", "2")
    assert result.exit_code == 0, result.output
    frames = decoded(tmp_path / "d.mp4")
    assert len(frames) == 10 and frames[0].shape == (48, 64, 3)
    result = dream(video, tmp_path / "d.png", "--duration", "1")
    assert result.exit_code == 0, result.output
    sheet = Image.open(tmp_path / "d.png")
    assert sheet.size == (6 * 42 + 5 * 4, 2 * 32 + 4)


BAD = {
    "flow model": ["--model", "i3d_inception_flow_kinetics"],
    "unknown model": ["--model", "nope"],
    "unknown layer": ["--layer", "layer9"],
    "channel out of range": ["--channels", "3,128"],
    "channels not numbers": ["--channels", "a,b"],
    "steps": ["--steps", "0"],
    "lr": ["--lr", "-1"],
    "frame size": ["--frame-size", "8"],
    "frame size 0": ["--frame-size", "0"],  # not "the default"
    "start nan": ["--start", "nan"],
    "start inf": ["--start", "inf"],
    "duration nan": ["--duration", "nan"],
    "duration inf": ["--duration", "inf"],
    "seed negative": ["--seed", "-1"],
    "empty span": ["--start", "100"],
}


@pytest.mark.parametrize("case", [*BAD, "suffix", "missing video", "no folder"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(one_thread, video, tmp_path, case):
    out = {"suffix": tmp_path / "d.avi", "no folder": tmp_path / "no" / "d.gif"}.get(
        case, tmp_path / "d.gif")
    source = tmp_path / "missing.mp4" if case == "missing video" else video
    result = CliRunner().invoke(main, ["dreamer", str(source), str(out), "--model", MODEL,
                                       "--weights", WEIGHTS, "--steps", "1", "--frame-size", "32",
                                       *BAD.get(case, [])])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any("Traceback" in line for line in lines)
    assert list(tmp_path.iterdir()) == []
