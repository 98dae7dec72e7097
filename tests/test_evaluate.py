"""evaluate: metrics against hand computations, both modes' views, reports, bad input."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.sample import write_video
from ig65m.train import metrics
from tests.finetune_helpers import ColourProbe, TinyVideoNet, registered

PROBE = "colour_probe_test"
LABELS = ["red", "green", "blue"]
FRAMES, HEIGHT, WIDTH = 24, 40, 48


def test_metrics_equal_a_hand_computation():
    targets = [0, 0, 1, 2, 2, 2]
    scores = [[0.50, 0.10, 0.05, 0.20, 0.10, 0.05],  # true 0: top-1 right
              [0.01, 0.10, 0.20, 0.40, 0.15, 0.14],  # true 0: ranked last, top-5 wrong too
              [0.10, 0.60, 0.10, 0.05, 0.05, 0.10],  # true 1: right (ties below rank 1)
              [0.05, 0.05, 0.70, 0.10, 0.05, 0.05],  # true 2: right
              [0.40, 0.10, 0.30, 0.08, 0.07, 0.05],  # true 2: second
              [0.10, 0.30, 0.11, 0.25, 0.20, 0.13]]  # true 2: fifth
    names = list("abcdef")
    report = metrics.summarize(np.array(scores), np.array(targets), names)
    assert report["videos"] == 6
    assert report["top1"] == pytest.approx(3 / 6)
    assert report["top5"] == pytest.approx(5 / 6)
    assert report["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 / 1 + 1 / 3) / 3)
    assert report["per_class"] == [
        {"label": "a", "videos": 2, "correct": 1, "accuracy": 0.5},
        {"label": "b", "videos": 1, "correct": 1, "accuracy": 1.0},
        {"label": "c", "videos": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)}]
    assert report["confusion_labels"] == ["a", "b", "c", "d"]
    assert report["confusion_matrix"] == [[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert metrics.topk_accuracy(np.array(scores), np.array(targets), 2) == pytest.approx(4 / 6)


def _frames(red, green, blue):
    """RGB frames (FRAMES, HEIGHT, WIDTH, 3) from functions of (t, x) -> channel values."""
    t = np.arange(FRAMES)[:, None, None]
    x = np.arange(WIDTH)[None, None, :]
    channels = [np.broadcast_to(f(t, x), (FRAMES, HEIGHT, WIDTH)) for f in (red, green, blue)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


VIDEOS = {  # name: (class, frames): channels ramp in time and across columns, so views differ
    "red/a.mp4": ("red", _frames(lambda t, x: 60 + 6 * t, lambda t, x: 2 * x + 40,
                                 lambda t, x: 90 + 0 * t)),
    "green/b.mp4": ("green", _frames(lambda t, x: 200 - 7 * t, lambda t, x: 4 * x,
                                     lambda t, x: 100 + 0 * t)),
    "blue/c.mp4": ("blue", _frames(lambda t, x: 100 + 0 * t, lambda t, x: 150 - 2 * x,
                                   lambda t, x: 110 + 0 * t)),
    "blue/d.mp4": ("blue", _frames(lambda t, x: 30 + 5 * t, lambda t, x: 60 + 0 * x,
                                   lambda t, x: 120 + 0 * t)),
}
ORDERED = [VIDEOS[name] for name in sorted(VIDEOS)]  # the order evaluate lists them in


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """ColourProbe in the registry, its weights file with labels.txt beside, and the videos."""
    root = tmp_path_factory.mktemp("eval")
    for name, (_, frames) in VIDEOS.items():
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / "data" / name, frames, codec="libx264rgb", options={"crf": "0"})
    (root / "run").mkdir()
    torch.save(ColourProbe().state_dict(), root / "run" / "best.pth")
    (root / "run" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    with registered(PROBE, lambda *, num_classes: ColourProbe(num_classes), num_classes=3,
                    family="probe"):
        yield root


def _expected(views):
    """Hand computation: logits = 10 x the normalised channel means of each (start, left) view,
    softmax, averaged per video -> (probabilities per video, predicted class per video)."""
    results = []
    for _, frames in ORDERED:
        probabilities = []
        for start, left in views:
            crop = frames[start:start + 8, 4:36, left:left + 32] / 255.0
            logits = 10 * ((crop - 0.5) / 0.25).mean(axis=(0, 1, 2))
            probabilities.append(np.exp(logits) / np.exp(logits).sum())
        results.append(np.mean(probabilities, axis=0))
    return np.array(results)


def _run(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.mark.parametrize("mode, views", [
    ("clip", [(8, 8)]),  # centred clip of 24 frames, centre crop of a 48-wide frame
    ("video", [(start, left) for start in (0, 8, 16) for left in (0, 8, 16)]),
])
def test_both_modes_score_the_views_they_claim(probe, tmp_path, mode, views):
    result = _run("evaluate", probe / "data", "--model", PROBE, "--weights",
                  probe / "run" / "best.pth", "--mode", mode, "--num-clips", 3, "--quiet",
                  "--clip-frames", 8, "--frame-size", HEIGHT, "--crop-size", 32,
                  "--batch-size", 4, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    expected = _expected(views)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for row, prediction in zip(expected, report["predictions"]):
        best = np.argsort(-row)
        assert [name for name, _ in prediction["top5"]] == [LABELS[c] for c in best]
        assert [p for _, p in prediction["top5"]] == pytest.approx(row[best].tolist(), abs=1e-6)
    targets = np.array([LABELS.index(label) for label, _ in ORDERED])
    correct = expected.argmax(axis=1) == targets
    printed = json.loads(result.stdout)
    assert printed["top1"] == pytest.approx(correct.mean())
    assert printed["views_per_video"] == len(views) and printed["videos"] == 4
    per_class = [correct[targets == c].mean() for c in range(3)]
    assert printed["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    assert printed["top5"] == 1.0  # 3 classes: every target is in the top 5
    assert (tmp_path / "out" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_modes_differ_on_these_videos():
    """The two protocols really see different views here (else the test above proves less)."""
    clip, video = _expected([(8, 8)]), _expected([(s, c) for s in (0, 8, 16) for c in (0, 8, 16)])
    assert np.abs(clip - video).max() > 0.05


def test_unreadable_videos_are_skipped_with_a_count(probe, tmp_path):
    data = tmp_path / "data"
    for name, (_, frames) in list(VIDEOS.items())[:2]:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes((probe / "data" / name).read_bytes())
    (data / "red" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom broken")
    result = _run("evaluate", data, "--model", PROBE, "--weights", probe / "run" / "best.pth",
                  "--mode", "clip", "--quiet", "--clip-frames", 8, "--frame-size", HEIGHT,
                  "--crop-size", 32)
    assert result.exit_code == 0, result.output
    assert "skipped 1 of 3 videos (unreadable)" in result.stderr
    assert json.loads(result.stdout)["skipped"] == 1 and json.loads(result.stdout)["videos"] == 2


def test_bad_input_is_one_line_and_exit_2(probe, tmp_path):
    tiny = tmp_path / "tiny.pth"
    torch.save(TinyVideoNet(3).state_dict(), tiny)
    (tmp_path / "list.csv").write_text(f"{probe / 'data/red/a.mp4'},red\n"
                                       f"{probe / 'data/green/b.mp4'},purple\n")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    weights = ["--weights", probe / "run" / "best.pth"]
    cases = [
        ((tmp_path / "list.csv", *weights), "not in the label list"),
        ((probe / "data", "--weights", tiny, "--labels", tmp_path / "labels.txt"), "do not fit"),
        ((probe / "data", "--weights", "random"), "give --labels FILE"),
        ((tmp_path / "nothing", *weights), "dataset not found"),
        ((probe / "data", *weights, "--frame-size", 16, "--crop-size", 32), "larger than"),
    ]
    for args, message in cases:
        result = _run("evaluate", *args, "--model", PROBE, "--quiet", "--out", tmp_path / "o")
        assert result.exit_code == 2, (args, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert result.stderr.strip().endswith(errors[0])  # notes first, then the one error line
        assert not (tmp_path / "o").exists()


def test_a_label_list_saved_with_a_byte_order_mark_names_its_first_class(tmp_path):
    """'1 label(s) of the dataset are not in the label list: 'jump'' when the list file began
    with a UTF-8 BOM (the mark stuck to 'jump'); dataset CSVs already read it as utf-8-sig."""
    from ig65m.labels import read_labels

    (tmp_path / "labels.txt").write_bytes("\ufeffjump\r\nrun\r\n".encode("utf-8"))
    assert read_labels(tmp_path / "labels.txt") == ["jump", "run"]
