"""semcode: arrays computed from features, pictures drawn from them, and every bad input."""

import errno
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure
from PIL import Image

from ig65m.cli import main
from ig65m.errors import Ig65mError
from ig65m.fileio import save_features
from ig65m.sample import scene_frame, write_sample_video
from ig65m.semcode import (
    bin_edges, principal_components, self_similarity, semcode, similarity_title, strip_image,
    summarise,
)
from ig65m.timeline import frames_at, scene_boundaries

SMALL = ["--width", "300", "--dpi", "50"]
# figure height / width per view: the documented layout
HEIGHT_RATIO = {"strip": 0.3, "similarity": 0.8, "pca": 0.45, "all": 1.55}


def random_features(rows=12, dims=64, seed=0):
    return np.abs(np.random.default_rng(seed).normal(size=(rows, dims))).astype(np.float32)


def write(path, features, clips=None):
    """features -> path; with `clips` through save_features (sidecar), else a bare .npy."""
    if clips is None:
        np.save(path, features)
    else:
        save_features(path, features, {"clips": clips})
    return path


def run(*args):
    result = CliRunner().invoke(main, ["semcode", *map(str, args)])
    return result


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def axes_pixels(fig, image, ax, inset=3):
    """The pixels of `image` (H, W, 3) inside `ax`, `inset` pixels in from the frame."""
    box = ax.get_window_extent()
    height = image.shape[0]
    top, bottom = int(np.ceil(height - box.y1)) + inset, int(height - box.y0) - inset
    left, right = int(np.ceil(box.x0)) + inset, int(box.x1) - inset
    return image[top:bottom, left:right]


@pytest.mark.parametrize("view", ["strip", "similarity", "pca", "all"])
def test_each_view_has_its_size(tmp_path, view):
    features = write(tmp_path / "f.npy", random_features())
    result = run(features, tmp_path / "p.png", "--view", view, *SMALL)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert Image.open(tmp_path / "p.png").size == (300, round(300 * HEIGHT_RATIO[view]))


@pytest.mark.parametrize("width, dpi", [(333, 100), (640, 72)])
def test_width_in_pixels_at_any_dpi(tmp_path, width, dpi):
    features = write(tmp_path / "f.npy", random_features())
    assert run(features, tmp_path / "p.png", "--width", width, "--dpi", dpi).exit_code == 0
    assert Image.open(tmp_path / "p.png").size == (width, round(width * 0.3))


@pytest.mark.parametrize("name, magic", [("p.png", b"\x89PNG"), ("p.svg", b"<?xml"),
                                         ("p.pdf", b"%PDF"), ("p.jpg", b"\xff\xd8\xff"),
                                         ("p.JPEG", b"\xff\xd8\xff"), ("p.PNG", b"\x89PNG")])
def test_format_follows_the_extension(tmp_path, name, magic):
    features = write(tmp_path / "f.npy", random_features())
    assert run(features, tmp_path / name, "--view", "all", *SMALL).exit_code == 0
    data = (tmp_path / name).read_bytes()
    assert data.startswith(magic)
    if name.endswith("svg"):
        assert b"<svg" in data


def test_picture_depends_on_the_features_and_the_hue(tmp_path):
    first = write(tmp_path / "a.npy", random_features(seed=1))
    second = write(tmp_path / "b.npy", random_features(seed=2))
    for features, out, hue in [(first, "a.png", 20), (second, "b.png", 20), (first, "c.png", 200)]:
        assert run(features, tmp_path / out, "--color", hue, "--title", "", *SMALL).exit_code == 0
    a, b, c = (pixels(tmp_path / name) for name in ("a.png", "b.png", "c.png"))
    assert (a != b).any(axis=2).mean() > 0.1
    assert (a != c).any(axis=2).mean() > 0.1


@pytest.mark.parametrize("scale", ["robust", "global", "dim"])
def test_constant_features_draw_a_flat_white_strip(tmp_path, scale):
    features = write(tmp_path / "f.npy", np.full((9, 40), 3.5, dtype=np.float32))
    fig = semcode(features, tmp_path / "p.png", scale=scale, width=400, dpi=50).figure
    strip = axes_pixels(fig, pixels(tmp_path / "p.png"), fig.axes[0])
    assert strip.size > 0
    assert (strip == 255).all()


def test_strip_colour_is_the_hue_saturated_by_activation():
    features = np.zeros((4, 3))
    features[2, 1] = 5.0
    for hue, colour in [(0, [1, 0, 0]), (120, [0, 1, 0]), (240, [0, 0, 1]), (360, [1, 0, 0])]:
        image = strip_image(features, hue=hue)
        assert image.shape == (3, 4, 3)
        np.testing.assert_allclose(image[1, 2], colour, atol=1e-12)
        np.testing.assert_allclose(np.delete(image.reshape(-1, 3), 1 * 4 + 2, axis=0), 1.0)


def test_dim_scaling_removes_per_dimension_offsets():
    time_ramp = np.arange(6.0)[:, None] + 100.0 * np.arange(5.0)[None, :]  # (6 clips, 5 dims)
    per_dim = strip_image(time_ramp, scale="dim")
    assert np.allclose(per_dim, per_dim[:1])          # every dimension draws the same ramp
    assert not np.allclose(per_dim[:, 0], per_dim[:, -1])
    overall = strip_image(time_ramp, scale="global")
    assert not np.allclose(overall, overall[:1])


def block_features(sizes=(5, 7, 4), dims=48, noise=0.05, seed=3):
    """Clips in blocks (scenes): each block is its own random direction plus a little noise."""
    rng = np.random.default_rng(seed)
    bases = rng.normal(size=(len(sizes), dims))
    rows = [bases[k] + noise * rng.normal(size=(size, dims)) for k, size in enumerate(sizes)]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.concatenate(rows).astype(np.float32), labels


def test_block_features_give_bright_similarity_blocks(tmp_path):
    features, labels = block_features()
    path = write(tmp_path / "f.npy", features)
    fig = semcode(path, tmp_path / "p.png", view="similarity", width=500, dpi=50).figure
    ax, image = fig.axes[0], pixels(tmp_path / "p.png").astype(float)
    brightness = image.mean(axis=2)
    clip_x, clip_y = np.meshgrid(np.arange(len(labels)), np.arange(len(labels)))
    display = ax.transData.transform(np.column_stack([clip_x.ravel(), clip_y.ravel()]))
    rows = np.round(image.shape[0] - display[:, 1]).astype(int)
    cols = np.round(display[:, 0]).astype(int)
    values = brightness[rows, cols].reshape(clip_x.shape)
    same = labels[:, None] == labels[None, :]
    assert values[same].min() > values[~same].max() + 50


def test_similarity_is_cosine_and_binned_blocks_average_it():
    features, _ = block_features()
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    full = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.testing.assert_allclose(self_similarity(summarise(features).unit_means), full, atol=1e-6)
    summary = summarise(features, max_bins=4, chunk_rows=3)
    edges = summary.edges
    expected = [[full[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].mean() for j in range(4)]
                for i in range(4)]
    np.testing.assert_allclose(self_similarity(summary.unit_means), expected, atol=1e-6)


def test_summarise_bins_in_chunks_from_a_memory_map(tmp_path):
    features = random_features(rows=103, dims=7, seed=5)
    np.save(tmp_path / "f.npy", features)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    summary = summarise(mapped, max_bins=10, chunk_rows=16)
    edges = bin_edges(103, 10)
    assert len(edges) == 11 and (np.diff(edges) >= 10).all() and edges[-1] == 103
    expected = [features[a:b].astype(np.float64).mean(axis=0) for a, b in zip(edges, edges[1:])]
    np.testing.assert_allclose(summary.means, expected, rtol=1e-6)
    np.testing.assert_array_equal(summary.spans, np.column_stack([edges[:-1], edges[1:] - 1]) + [-0.5, 0.5])


def test_principal_components_recover_a_known_basis():
    rng = np.random.default_rng(7)
    basis, _ = np.linalg.qr(rng.normal(size=(20, 2)))
    strong, weak = np.sin(np.linspace(0, 6, 30)) * 5, np.cos(np.linspace(0, 17, 30))
    strong, weak = strong - strong.mean(), weak - weak.mean()
    weak -= (weak @ strong) / (strong @ strong) * strong  # uncorrelated: PCA separates them exactly
    features = 3.0 + strong[:, None] * basis[:, 0] + weak[:, None] * basis[:, 1]
    scores, ratios = principal_components(features)
    assert scores.shape == (30, 3)
    np.testing.assert_allclose(scores[:, 2], 0, atol=1e-8)
    assert ratios[0] > ratios[1] > 0 and abs(ratios.sum() - 1) < 1e-9
    # sign convention: the largest-magnitude loading is positive
    for k, signal in enumerate([strong, weak]):
        peak = basis[np.abs(basis[:, k]).argmax(), k]
        np.testing.assert_allclose(scores[:, k], np.sign(peak) * signal, atol=1e-8)
    flipped, _ = principal_components(-features)
    np.testing.assert_allclose(flipped, -scores, atol=1e-8)


@pytest.mark.parametrize("shape", [(1, 512), (1, 1), (4, 1), (2, 2048), (3, 600)])
def test_any_dimension_and_a_single_clip(tmp_path, shape):
    features = write(tmp_path / "f.npy", random_features(*shape))
    result = run(features, tmp_path / "p.png", "--view", "all", *SMALL)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "p.png").size == (300, 465)
    scores, _ = principal_components(summarise(np.load(tmp_path / "f.npy")).means)
    assert scores.shape == (shape[0], 3) and np.isfinite(scores).all()


def test_time_axis_in_seconds_with_the_sidecar_else_clip_numbers(tmp_path):
    clips = [[0.5 * i, 0.5 * i + 1.0] for i in range(8)]
    timed = write(tmp_path / "t.npy", random_features(rows=8), clips=clips)
    bare = write(tmp_path / "b.npy", random_features(rows=8))
    for path, xlim, label in [(timed, (0.25, 4.25), "time (s)"), (bare, (-0.5, 7.5), "clip")]:
        fig = semcode(path, tmp_path / "p.png", view="all", width=300, dpi=50).figure
        strip, similarity = fig.axes[0], fig.axes[3]
        np.testing.assert_allclose(strip.get_xlim(), xlim)
        np.testing.assert_allclose(similarity.get_xlim(), xlim)
        assert strip.get_xlabel() == similarity.get_ylabel() == label


def test_long_feature_files_are_binned(tmp_path):
    features = write(tmp_path / "f.npy", random_features(rows=2500, dims=16))
    fig = semcode(features, tmp_path / "p.png", view="similarity", width=300, dpi=50).figure
    assert fig.axes[0].images[0].get_array().shape == (1000, 1000)


def test_same_input_gives_identical_bytes(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    features = write(tmp_path / "f.npy", random_features(), clips=[[i, i + 1.0] for i in range(12)])
    names = ["p.png", "p.svg", "p.pdf", "p.jpg"]
    first = {}
    for name in names:
        assert run(features, tmp_path / name, "--view", "all", *SMALL).exit_code == 0
        first[name] = (tmp_path / name).read_bytes()
    time.sleep(1.1)  # dates in metadata have one-second resolution
    for name in names:
        assert run(features, tmp_path / name, "--view", "all", *SMALL).exit_code == 0
        assert (tmp_path / name).read_bytes() == first[name], name


def _bad_inputs(tmp_path):
    """name -> (features path, extra arguments, output path) for every bad input of the issue."""
    good = write(tmp_path / "good.npy", random_features())
    (tmp_path / "text.npy").write_text("not an array\n")
    (tmp_path / "text.txt").write_text("1 2 3\n")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    arrays = {"one_d": np.ones(5, np.float32), "three_d": np.ones((2, 3, 4), np.float32),
              "empty_rows": np.zeros((0, 8), np.float32), "empty_dims": np.zeros((3, 0), np.float32),
              "complex": np.ones((3, 4), np.complex64)}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    nan, inf = random_features(), random_features()
    nan[3, 5], inf[11, 63] = np.nan, -np.inf
    write(tmp_path / "nan.npy", nan)
    write(tmp_path / "inf.npy", inf)
    write(tmp_path / "clips.npy", random_features())  # a sidecar that does not fit its features
    (tmp_path / "clips.json").write_text(json.dumps({"clips": [[0, 1]] * 5}))
    (tmp_path / "folder.png").mkdir()
    out = tmp_path / "out.png"
    return {
        "not npy": (tmp_path / "text.npy", [], out), "text file": (tmp_path / "text.txt", [], out),
        "missing": (tmp_path / "missing.npy", [], out), "pickle": (tmp_path / "objects.npy", [], out),
        **{name: (tmp_path / f"{name}.npy", [], out) for name in arrays},
        "nan": (tmp_path / "nan.npy", [], out), "inf": (tmp_path / "inf.npy", [], out),
        "sidecar clips": (tmp_path / "clips.npy", [], out),
        "view": (good, ["--view", "histogram"], out), "scale": (good, ["--scale", "log"], out),
        "hue": (good, ["--color", "nan"], out), "width": (good, ["--width", "5"], out),
        "dpi": (good, ["--dpi", "0"], out), "format": (good, [], tmp_path / "out.bmp"),
        "no folder": (good, [], tmp_path / "nowhere" / "out.png"),
        "output is a folder": (good, [], tmp_path / "folder.png"),
    }


BAD = ["not npy", "text file", "missing", "pickle", "one_d", "three_d", "empty_rows", "empty_dims",
       "complex", "nan", "inf", "sidecar clips", "view", "scale", "hue", "width", "dpi", "format",
       "no folder", "output is a folder"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    features, extra, out = _bad_inputs(tmp_path)[case]
    if out.parent.is_dir() and not out.is_dir():
        out.write_bytes(b"previous picture")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    result = run(features, out, *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    if out.is_file():
        assert out.read_bytes() == b"previous picture"


def test_a_failure_while_saving_leaves_nothing(tmp_path, monkeypatch):
    features = write(tmp_path / "f.npy", random_features())

    def broken_savefig(self, path, **kwargs):
        open(path, "wb").write(b"half a pic")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(Ig65mError, match="No space left"):
        semcode(features, tmp_path / "p.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy"]


def test_help_lists_the_views():
    result = CliRunner().invoke(main, ["semcode", "--help"])
    assert result.exit_code == 0
    assert "strip|similarity|pca|all" in result.output


def test_robust_scaling_keeps_contrast_despite_an_outlier_clip():
    steps = np.tile(np.repeat([0.0, 1.0], 50)[:, None], (1, 4))  # two scenes, 4 dims
    steps[3] = 1000.0  # one outlier clip in a hundred
    robust = strip_image(steps, scale="robust")[:, :, 1]  # green: 1 - saturation for hue 20
    minmax = strip_image(steps, scale="dim")[:, :, 1]
    assert abs(robust[:, 75] - robust[:, 25]).min() > 0.5  # the scenes differ clearly
    assert abs(minmax[:, 75] - minmax[:, 25]).max() < 0.01  # washed out by the outlier


def test_centred_similarity_spreads_what_raw_cosine_squeezes():
    features, labels = block_features(noise=0.05)
    features = features + 50.0  # a large offset every clip shares: raw cosines all near 1
    raw = self_similarity(summarise(features).unit_means)
    centred = self_similarity(summarise(features, centre=True).unit_means)
    assert raw.min() > 0.99
    same = labels[:, None] == labels[None, :]
    assert centred[same].min() > 0.9 and centred[~same].max() < 0.2
    assert "(all within 0.99" in similarity_title(raw, centred=False)
    assert "within" not in similarity_title(centred, centred=True)


def test_boundaries_are_found_marked_and_printed_as_json(tmp_path):
    features, labels = block_features(sizes=(6, 9, 5))
    clips = [[0.5 * i, 0.5 * i + 0.5] for i in range(len(labels))]
    path = write(tmp_path / "f.npy", features, clips=clips)
    result = run(path, tmp_path / "p.png", "--boundaries", "--view", "all", *SMALL)
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["boundaries"]
    assert [(b["clip"], b["time"]) for b in found] == [(6, 3.0), (15, 7.5)]
    drawn = semcode(path, tmp_path / "q.png", boundaries=True, width=300, dpi=50)
    assert [b["clip"] for b in drawn.boundaries] == [6, 15]
    dashed = [line for line in drawn.figure.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert sorted(line.get_xdata()[0] for line in dashed) == [3.0, 7.5]


def test_no_boundaries_in_a_video_without_cuts():
    rng = np.random.default_rng(4)
    drift = np.cumsum(rng.normal(scale=0.02, size=(40, 32)), axis=0) + rng.normal(size=32)
    assert scene_boundaries(summarise(drift, centre=True)) == []


@pytest.fixture(scope="module")
def scenes_video(tmp_path_factory):
    """3 s of the three-scene sample at 10 fps, lossless: scene k fills frames 10k to 10k+9."""
    path = tmp_path_factory.mktemp("scenes") / "scenes.mkv"
    write_sample_video(path, seconds=3, width=64, height=48, fps=10, scenes=True,
                       codec="libx264rgb", options={"crf": "0"})
    return path


def test_frames_at_are_the_frames_on_screen(scenes_video):
    frames = frames_at(scenes_video, [0.0, 1.05, 2.99], 48)
    expected = [scene_frame(i, 64, 48, i // 10) for i in (0, 10, 29)]
    for got, want in zip(frames, expected):
        assert got.shape == (48, 64, 3)
        assert np.abs(got.astype(int) - want).max() <= 2
    assert np.abs(expected[0].astype(int) - expected[1]).mean() > 40  # the scenes differ


def test_video_adds_a_row_of_its_frames_along_the_time_axis(tmp_path, scenes_video):
    clips = [[0.5 * i, 0.5 * i + 0.5] for i in range(6)]
    path = write(tmp_path / "f.npy", random_features(rows=6), clips=clips)
    result = run(path, tmp_path / "p.png", "--video", scenes_video, "--width", "400", "--dpi", "50")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "p.png").size == (400, round(400 * 0.4))
    fig = semcode(path, tmp_path / "q.png", video=scenes_video, width=400, dpi=50).figure
    frames_ax, strip_ax = fig.axes[:2]
    assert frames_ax.get_title() == "frames"
    np.testing.assert_allclose(frames_ax.get_xlim(), strip_ax.get_xlim())
    strip = frames_ax.images[0].get_array()
    left, right = strip[:, :strip.shape[1] // 4], strip[:, -strip.shape[1] // 4:]
    assert left[..., 2].mean() > left[..., 0].mean() + 50  # blue waves first
    assert right[..., 0].mean() > right[..., 2].mean()  # the dusk scene last
    bare = write(tmp_path / "bare.npy", random_features(rows=6))
    result = run(bare, tmp_path / "b.png", "--video", scenes_video)
    assert result.exit_code == 2 and "needs clip times" in result.stderr


def test_three_scene_picture_is_deterministic(tmp_path, scenes_video):
    features, _ = block_features(sizes=(4, 4, 4))
    path = write(tmp_path / "f.npy", features, clips=[[0.25 * i, 0.25 * i + 0.25] for i in range(12)])
    outputs = []
    for name in ("a.png", "b.png"):
        result = run(path, tmp_path / name, "--view", "all", "--video", scenes_video,
                     "--boundaries", *SMALL)
        assert result.exit_code == 0, result.output
        outputs.append((result.stdout, (tmp_path / name).read_bytes()))
    assert outputs[0] == outputs[1]
