"""finetune: learning a toy action dataset, exact resume, freezing, head replacement, bad input."""

import json

import pytest
import torch
from click.testing import CliRunner
from tests.finetune_helpers import ColourProbe, TinyVideoNet, registered

from ig65m.cli import main
from ig65m.errors import Ig65mError
from ig65m.models import get_spec
from ig65m.train import adapt
from ig65m.train.finetune import FinetuneConfig, Run, finetune
from ig65m.train.synthetic import write_toy_dataset
from ig65m.weights import load_state_dict

TINY = "tiny_finetune_test"
CLIP = ["--clip-frames", "8", "--frame-size", "40", "--crop-size", "32"]


@pytest.fixture(scope="module")
def tiny():
    """A small (2+1)D network in the registry, and its 5-class 'pretrained' weights on disk."""
    with registered(TINY, lambda *, num_classes: TinyVideoNet(num_classes), num_classes=5,
                    family="tiny") as spec:
        yield spec


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(TinyVideoNet(5).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """train/ 10 and val/ 4 videos per class (up, down, blink), plus one unreadable video."""
    root = write_toy_dataset(tmp_path_factory.mktemp("toy"), splits={"train": 10, "val": 4},
                             num_frames=12)
    (root / "train" / "up" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom not a video")
    return root


def _cli(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_finetune_learns_the_toy_actions(tiny, tiny_weights, toy, tmp_path):
    out = tmp_path / "run"
    result = _cli("finetune", toy, out, "--model", TINY, "--weights", tiny_weights,
                  "--epochs", 12, "--batch-size", 4, "--lr", 5e-3, "--quiet", *CLIP)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "skipped 1 of 31 training videos (unreadable)" in result.stderr
    assert summary["classes"] == ["blink", "down", "up"]
    assert summary["train_videos"] == 30 and summary["val_videos"] == 12
    assert summary["best_val_top1"] >= 0.9  # chance is 1/3

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, 13))
    assert max(row["val_top1"] for row in rows) == summary["best_val_top1"]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "labels.txt").read_text() == "blink\ndown\nup\n"
    best = load_state_dict(out / "best.pth")  # a plain state_dict, as --weights reads it
    assert set(best) == set(TinyVideoNet(3).state_dict()) and best["fc.weight"].shape == (3, 48)

    # evaluate's clip mode on the val/ split is the protocol of finetune's validation
    result = _cli("evaluate", toy, "--model", TINY, "--weights", out / "best.pth", "--mode",
                  "clip", "--quiet", *CLIP)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["videos"] == 12 and report["views_per_video"] == 1
    assert report["top1"] == summary["best_val_top1"]
    result = _cli("evaluate", toy / "val", "--model", TINY, "--weights", out / "best.pth",
                  "--mode", "video", "--num-clips", 4, "--quiet", "--out", tmp_path / "eval",
                  *CLIP)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["views_per_video"] == 12 and report["top1"] >= 0.75
    assert (tmp_path / "eval" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["top1"] == report["top1"] and len(saved["predictions"]) == 12


def _states(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_reproduces_the_uninterrupted_run(tiny, tiny_weights, toy, tmp_path):
    config = FinetuneConfig(model=TINY, weights=str(tiny_weights), epochs=3, batch_size=4,
                            optimizer="sgd", lr=0.02, freeze=1, clip_frames=8, frame_size=40,
                            crop_size=32, seed=7)
    finetune(toy, tmp_path / "whole", config, progress=False)

    def interrupt(run, row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(toy, tmp_path / "parts", config, progress=False, on_epoch_end=interrupt)
    assert _states(tmp_path / "parts" / "last.pth")["epoch"] == 1
    finetune(toy, tmp_path / "parts", config, resume=True, progress=False)

    whole, parts = _states(tmp_path / "whole" / "last.pth"), _states(tmp_path / "parts" / "last.pth")
    assert whole["epoch"] == parts["epoch"] == 3
    for key, value in whole["model"].items():
        assert torch.equal(value, parts["model"][key]), key
    assert torch.equal(whole["rng_cpu"], parts["rng_cpu"])
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in whole["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in parts["history"]]
    for key, value in load_state_dict(tmp_path / "whole" / "best.pth").items():
        assert torch.equal(value, load_state_dict(tmp_path / "parts" / "best.pth")[key])

    # --freeze 1: the stem (weights and BatchNorm statistics) is exactly the starting one
    start = load_state_dict(tiny_weights)
    stem = [key for key in start if key.startswith("stem.")]
    assert stem and all(torch.equal(whole["model"][key], start[key]) for key in stem)
    assert not torch.equal(whole["model"]["block1.0.weight"], start["block1.0.weight"])
    assert not torch.equal(whole["model"]["block1.1.running_mean"], start["block1.1.running_mean"])


def test_bad_input_is_one_line_and_exit_2(tiny, tiny_weights, toy, tmp_path):
    base = ["--model", TINY, "--weights", tiny_weights, "--quiet", *CLIP]
    single = tmp_path / "single"
    (single / "up").mkdir(parents=True)
    (single / "up" / "a.mp4").write_bytes((toy / "train" / "up" / "up_000.mp4").read_bytes())
    (tmp_path / "empty").mkdir()
    probe = tmp_path / "probe.pth"
    torch.save(ColourProbe().state_dict(), probe)
    cases = [
        ((single, tmp_path / "o1", *base), "only one class"),
        ((tmp_path / "empty", tmp_path / "o2", *base), "is empty"),
        ((tmp_path / "missing", tmp_path / "o3", *base), "dataset not found"),
        ((toy, tmp_path / "o4", *base, "--resume"), "nothing to resume"),
        ((toy, tmp_path / "o5", *base, "--freeze", 4), "--freeze 4: the model has 3 feature"),
        ((toy, tmp_path / "o6", "--model", TINY, "--weights", probe, *CLIP), "do not fit"),
    ]
    for args, message in cases:
        result = _cli("finetune", *args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not args[1].exists()  # nothing written


def test_resume_refuses_other_options_and_a_used_folder(tiny, tiny_weights, toy, tmp_path):
    args = ["finetune", toy, tmp_path / "run", "--model", TINY, "--weights", tiny_weights,
            "--epochs", 1, "--quiet", *CLIP]
    assert _cli(*args).exit_code == 0
    result = _cli(*args)
    assert result.exit_code == 2 and "already holds a run" in result.stderr
    result = _cli(*args, "--resume", "--lr", 0.5)
    assert result.exit_code == 2 and "--lr None (now 0.5)" in result.stderr


def test_r2plus1d_head_and_blocks(tmp_path):
    spec = get_spec("r2plus1d_18_16_kinetics")
    torch.manual_seed(0)
    source = spec.builder(num_classes=400)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model, sha256 = adapt.load_for_finetune(spec, tmp_path / "r18.pth", 4, progress=False)
    assert sha256 and model.fc.weight.shape == (4, 512)
    assert torch.equal(model.layer4[1].conv2[0][3].weight, source.layer4[1].conv2[0][3].weight)
    blocks = adapt.feature_blocks(model)
    assert len(blocks) == 9 and blocks[0] is model.stem and blocks[-1] is model.layer4[1]
    adapt.freeze(model, 9)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"fc.weight",
                                                                                 "fc.bias"}
    with pytest.raises(Ig65mError, match="has 9 feature blocks"):
        adapt.freeze(model, 10)


def test_movinet_head_and_blocks():
    spec = get_spec("movinet_a0_base")
    model = spec.builder(num_classes=600)
    head = adapt.reset_classifier(model, 3)
    assert head == {"classifier.3.conv_1.conv3d.weight", "classifier.3.conv_1.conv3d.bias"}
    assert model.eval()(torch.zeros(1, 3, 2, 32, 32)).shape == (1, 3)
    blocks = adapt.feature_blocks(model)
    assert blocks[0] is model.conv1 and blocks[-1] is model.conv7 and len(blocks) == 17


def test_stream_model_trains_through_its_buffer_in_chunks(tmp_path):
    """movinet_a0_stream with --chunk-frames 2: a 4-frame clip goes in as 2 chunks, each with its
    own backward pass, the stream buffer cleaned before and after (seed 004's loop)."""
    root = write_toy_dataset(tmp_path / "toy", splits={"train": 1, "val": 1}, size=40,
                             num_frames=6)
    config = FinetuneConfig(model="movinet_a0_stream", weights="random", epochs=1, batch_size=3,
                            clip_frames=4, frame_size=40, crop_size=32, chunk_frames=2)
    run = Run(root, tmp_path / "out", config, progress=False)
    seen = []
    run.model.register_forward_pre_hook(lambda module, args: seen.append(
        (args[0].shape[2], module._state is None)))
    clips, targets = next(iter(run.train_loader))
    loss, logits = run._forward_backward(clips, targets)
    assert seen == [(2, True), (2, False)]  # the second chunk continues the first one's stream
    assert run.model._state is None and not run.model.streaming
    assert logits.shape == (3, 3) and torch.isfinite(loss)
    assert all(p.grad is not None for p in run.model.classifier.parameters())
    with pytest.raises(Ig65mError, match="needs a stream model"):
        Run(root, tmp_path / "out2", FinetuneConfig(model="movinet_a0_base", weights="random",
                                                     chunk_frames=2), progress=False)


def test_match_head_loads_a_finetuned_checkpoint_into_a_registry_model():
    """What `extract --weights OUT_DIR/best.pth` needs: a 400-class build takes a 3-class head."""
    spec = get_spec("r2plus1d_18_16_kinetics")
    tuned = spec.builder(num_classes=400)
    adapt.reset_classifier(tuned, 3)
    model = spec.builder(num_classes=400)
    assert adapt.match_head(model, tuned.state_dict(), 400) == 3
    model.load_state_dict(tuned.state_dict())
    assert model.fc.out_features == 3
