"""classify: label lists, top-k per clip and per video, live stream classification, the CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ig65m.classify import classify_clips, classify_stream, softmax, top_k
from ig65m.cli import main
from ig65m.clips import resample_fps
from ig65m.errors import Ig65mError
from ig65m.extract import Extractor
from ig65m.labels import dataset_labels, labels_for, read_labels
from ig65m.models import get_model, get_spec, list_models
from ig65m.sample import write_sample_video
from ig65m.transforms import transform_for
from ig65m.video import read_frames
from ig65m.weights import Weights

SIZE = 64
LAVFI = "testsrc=size=320x240:rate=30"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    write_sample_video(folder / "video.mp4", seconds=2.0, width=96, height=72, fps=10)
    (folder / "labels.txt").write_text("".join(f"action {i}\n" for i in range(600)))
    for name, stream in (("base", False), ("stream", True)):
        model, _ = get_model(f"movinet_a0_{name}", "random")
        with torch.no_grad():  # audible residual branches: the default alpha is 0
            for block in model.blocks:
                block.alpha.fill_(0.5)
        torch.save(model.state_dict(), folder / f"a0_{name}.pth")
    return folder


def test_read_labels_and_overrides(tmp_path, workdir):
    (tmp_path / "few.txt").write_text("walking\n\nrunning  \n")
    assert read_labels(tmp_path / "few.txt") == ["walking", "running"]
    row = Weights(url="file:///none", num_classes=2, clip_frames=4, labels="kinetics600")
    assert labels_for(row, tmp_path / "few.txt") == ["walking", "running"]
    assert len(labels_for(get_spec("movinet_a0_base").weights, workdir / "labels.txt")) == 600
    with pytest.raises(Ig65mError, match="has 2 labels, but the model has 600"):
        labels_for(get_spec("movinet_a0_base").weights, tmp_path / "few.txt")
    with pytest.raises(Ig65mError, match="not found"):
        read_labels(tmp_path / "missing.txt")
    assert labels_for(get_spec("r2plus1d_34_8_ig65m").weights)[358] == "class_358"


def test_dataset_labels_ship_with_the_package(shared_data):
    """The Kinetics lists are package data, equal to the shared copies; nothing is downloaded."""
    for name, count in (("kinetics400", 400), ("kinetics600", 600)):
        names = dataset_labels(name)
        assert len(names) == count and names == read_labels(shared_data / "labels" / f"{name}.txt")
    assert dataset_labels("kinetics600")[0] == "abseiling"
    with pytest.raises(Ig65mError, match="no label list named"):
        dataset_labels("kinetics700")


def test_top_k_orders_by_probability():
    probabilities = softmax(np.array([[0.0, 3.0, 1.0, 2.0]]))[0]
    assert abs(probabilities.sum() - 1) < 1e-12
    top = top_k(probabilities, ["a", "b", "c", "d"], 3)
    assert [entry["label"] for entry in top] == ["b", "d", "c"]
    assert top[0]["score"] == round(float(np.exp(3) / np.exp([0, 3, 1, 2]).sum()), 6)


def test_clips_and_whole_video_from_extractor_logits(workdir):
    labels = read_labels(workdir / "labels.txt")
    extractor = Extractor("movinet_a0_base", str(workdir / "a0_base.pth"), progress=False)
    options = dict(frame_size=SIZE, crop_size=SIZE, clip_frames=4, max_clips=3)
    records = list(classify_clips(extractor, workdir / "video.mp4", labels, top=5, **options))
    logits = np.concatenate([b.logits for b in extractor.batches(workdir / "video.mp4", **options)])
    assert [r["clip"] for r in records[:-1]] == [0, 1, 2]
    for record, row in zip(records, logits):
        assert record["top"][0]["index"] == int(np.argmax(row))
        assert len(record["top"]) == 5 and record["start"] < record["end"]
    mean = softmax(logits).mean(0)
    video = records[-1]
    assert video["clips"] == 3 and video["top"] == top_k(mean, labels, 5)


def _whole_clip(model, video, fps):
    row = get_spec("movinet_a0_stream").weights
    frames = resample_fps(read_frames(video, frame_size=SIZE), fps)
    clip = transform_for(row, SIZE)(np.stack([f.image for f in frames]))
    with torch.no_grad():
        return model(clip[None])[0].numpy(), clip.shape[1]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_stream_classification_equals_the_causal_model_on_all_frames(workdir, backend, tmp_path):
    labels = read_labels(workdir / "labels.txt")
    spec = get_spec("movinet_a0_stream")
    model, _ = get_model(spec.name, str(workdir / "a0_stream.pth"))
    records = list(classify_stream(spec, model, workdir / "video.mp4", labels, every=3, top=5,
                                   backend=backend, onnx=tmp_path / "s.onnx", frame_size=SIZE,
                                   crop_size=SIZE))
    logits, frames = _whole_clip(model, workdir / "video.mp4", fps=5)
    assert frames == 10  # 2 s resampled to the model's 5 fps
    assert [r["frame"] for r in records[:-1]] == [3, 6, 9]
    assert all(r["latency_ms"] > 0 and r["latency_max_ms"] >= r["latency_ms"] for r in records)
    video = records[-1]
    assert video["frames"] == frames
    expected = top_k(softmax(logits), labels, 5)
    assert [e["index"] for e in video["top"]] == [e["index"] for e in expected]
    assert np.allclose([e["score"] for e in video["top"]], [e["score"] for e in expected],
                       atol=1e-5)


def test_stream_classification_refuses_clip_models():
    from ig65m.classify import load_stream_model
    with pytest.raises(Ig65mError, match="not a stream model"):
        load_stream_model(get_spec("movinet_a0_base"), "random")


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_models_lists_every_registered_model():
    result = _cli("models", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["name"] for r in rows] == [spec.name for spec in list_models()]
    a0 = next(r for r in rows if r["name"] == "movinet_a0_base")
    assert (a0["family"], a0["classes"], a0["input"]) == ("movinet", 600, "50x172x172")
    assert 3.0e6 < a0["parameters"] < 3.2e6 and a0["weights"].endswith("modelA0_statedict_v3")
    table = _cli("models").output
    assert "movinet_a2_stream" in table and "parameters" in table.splitlines()[0]


def test_cli_classify_clip_model_json_and_table(workdir):
    common = ["classify", workdir / "video.mp4", "--model", "movinet_a0_base", "--weights",
              workdir / "a0_base.pth", "--labels", workdir / "labels.txt", "--frame-size", SIZE,
              "--crop-size", SIZE, "--clip-frames", 4, "--max-clips", 2, "--top", 3]
    result = _cli(*common)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3 and records[-1]["clips"] == 2
    assert all(len(r["top"]) == 3 and r["top"][0]["label"].startswith("action ") for r in records)
    table = _cli(*common, "--format", "table")
    assert table.exit_code == 0 and table.stdout.splitlines()[-1].startswith("video (2 clips)")


def test_cli_classify_live_lavfi_stream(workdir):
    result = _cli("classify", LAVFI, "--input-format", "lavfi", "--model", "movinet_a0_stream",
                  "--weights", workdir / "a0_stream.pth", "--labels", workdir / "labels.txt",
                  "--frame-size", SIZE, "--crop-size", SIZE, "--duration", 1.0, "--every", 2,
                  "--fps", 6, "--threads", 1, "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in records[:-1]] == [2, 4, 6] and records[-1]["frames"] == 6
    assert all(r["rss_mb"] is None or r["rss_mb"] > 0 for r in records)


@pytest.mark.parametrize("args, message", [
    (["missing.mp4"], "not found"),
    (["{video}", "--labels", "{few}"], "has 2 labels"),
    (["{video}", "--top", "0"], "not in the range"),
    (["{video}", "--every", "-1"], "not in the range"),
    (["{video}", "--threads", "0"], "not in the range"),
    (["{video}", "--model", "nope"], "unknown model"),
])
def test_cli_classify_user_errors_are_one_line(workdir, tmp_path, args, message):
    (tmp_path / "few.txt").write_text("a\nb\n")
    args = [a.format(video=workdir / "video.mp4", few=tmp_path / "few.txt") for a in args]
    model = [] if "--model" in args else ["--model", "movinet_a0_base"]
    labels = [] if "--labels" in args else ["--labels", workdir / "labels.txt"]  # no download
    result = _cli("classify", *args, *model, *labels, "--weights", "random")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
