import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.clips import clip_windows
from ig65m.extract import Extractor
from ig65m.sample import write_sample_video
from ig65m.transforms import ClipTransform
from ig65m.video import read_frames
from ig65m.weights import KINETICS_MEAN, KINETICS_STD
from tests.videos import ODD_RATE, audio_only, empty_video, lossless_video

MODEL = "r2plus1d_34_8_ig65m"
SMALL = ["--frame-size", "32", "--crop-size", "32"]
LAVFI = ["--format", "lavfi", "testsrc=size=64x48:rate=30"]


@pytest.fixture(scope="session")
def extractor(weights):
    return Extractor(MODEL, weights, progress=False)


def run(*args):
    result = CliRunner().invoke(main, ["extract", *map(str, args)])
    return result


def test_extract_writes_features_and_sidecar(tmp_path, weights):
    lossless_video(tmp_path / "v.mkv", frames=20)
    result = run(tmp_path / "v.mkv", tmp_path / "f.npy", "--weights", weights, "--model", MODEL,
                 *SMALL)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"source": str(tmp_path / "v.mkv"),
                                         "output": str(tmp_path / "f.npy"), "clips": 3,
                                         "interrupted": False}
    features = np.load(tmp_path / "f.npy", allow_pickle=False)
    assert features.shape == (3, 512) and features.dtype == np.float32
    meta = json.loads((tmp_path / "f.json").read_text())
    assert meta["model"] == MODEL and meta["clip_frames"] == 8 and meta["step"] == 8
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    np.testing.assert_allclose(meta["clips"], [[0, 8 / 30], [8 / 30, 16 / 30], [16 / 30, 20 / 30]],
                               atol=1e-3)
    assert sorted(os.listdir(tmp_path)) == ["f.json", "f.npy", "v.mkv"]


def test_features_equal_the_model_on_the_same_clips(tmp_path, extractor):
    lossless_video(tmp_path / "v.mkv", frames=21)
    one, meta = extractor.features(tmp_path / "v.mkv", frame_size=32, crop_size=32, batch_size=1)
    three, _ = extractor.features(tmp_path / "v.mkv", frame_size=32, crop_size=32, batch_size=3)
    np.testing.assert_allclose(one, three, rtol=1e-4, atol=1e-5)

    transform = ClipTransform(32, KINETICS_MEAN, KINETICS_STD)
    clips = list(clip_windows(read_frames(tmp_path / "v.mkv", frame_size=32), clip_frames=8))
    with torch.inference_mode():
        _, expected = extractor.embedder(torch.stack([transform(clip.frames) for clip in clips]))
    np.testing.assert_allclose(one, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert len(meta["clips"]) == 3


def test_pooling_options_change_features(tmp_path, weights, extractor):
    lossless_video(tmp_path / "v.mkv", frames=8)
    maxing = Extractor(MODEL, weights, pool_spatial="max", progress=False)
    maxed, meta = maxing.features(tmp_path / "v.mkv", frame_size=48, crop_size=48)
    mean, _ = extractor.features(tmp_path / "v.mkv", frame_size=48, crop_size=48)
    assert meta["pool_spatial"] == "max" and np.all(maxed >= mean - 1e-5)
    assert not np.allclose(maxed, mean)


def test_step_fps_and_odd_rates(tmp_path, extractor):
    lossless_video(tmp_path / "v.mp4", frames=40, fps=ODD_RATE)
    _, meta = extractor.features(tmp_path / "v.mp4", frame_size=32, crop_size=32, step=4)
    assert len(meta["clips"]) == 9  # starts 0, 4, ..., 32; the last ends with frame 39
    np.testing.assert_allclose(meta["clips"][1][0], 4 * 50 / 981, atol=1e-3)
    _, meta = extractor.features(tmp_path / "v.mp4", frame_size=32, crop_size=32, fps=5)
    assert meta["fps"] == 5 and len(meta["clips"]) == 2  # ~2 s at 5 fps = 10 frames
    np.testing.assert_allclose(meta["clips"][1][0], 8 / 5, atol=1e-6)


def test_shared_sample_timestamps(tmp_path, weights, shared_data):
    video = shared_data / "videos" / "v_GGSY1Qvo990.mp4"
    result = run(video, tmp_path / "f.npy", "--weights", weights, "--model", MODEL, *SMALL,
                 "--batch-size", "8")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "f.json").read_text())
    assert len(meta["clips"]) == 45  # 355 frames in 8-frame clips, the last one padded
    np.testing.assert_allclose([start for start, _ in meta["clips"]],
                               np.arange(45) * 8 * 50 / 981, atol=1e-3)


def test_many_videos_skip_existing_and_report_failures(tmp_path, weights):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    lossless_video(videos / "a.mkv", frames=8)
    lossless_video(videos / "sub" / "b.mkv", frames=16)
    (videos / "broken.mp4").write_text("not a video")
    out = tmp_path / "out"
    args = [videos, "--output-dir", out, "--weights", weights, "--model", MODEL, *SMALL]
    result = run(*args)
    assert result.exit_code == 2
    assert "broken.mp4" in result.stderr and "1 of 3 videos failed" in result.stderr
    assert np.load(out / "a.npy").shape == (1, 512)
    assert np.load(out / "sub" / "b.npy").shape == (2, 512)
    assert not (out / "broken.npy").exists()
    stamp = (out / "a.npy").stat().st_mtime_ns
    (videos / "broken.mp4").unlink()
    result = run(*args)
    assert result.exit_code == 0 and result.stderr.count("skipping") == 2
    assert (out / "a.npy").stat().st_mtime_ns == stamp
    # the job manifest: each video's last state, its settings and the weights sha256
    records = {r["output"]: r for r in map(json.loads, (out / "ig65m-job.jsonl").open())}
    assert records["broken.npy"]["state"] == "failed" and records["broken.npy"]["error"]
    assert records["a.npy"]["state"] == "done" and records["a.npy"]["settings"]["max_clips"] is None
    # another setting (here --max-clips) redoes done videos instead of keeping their old outputs
    result = run(*args, "--max-clips", "1")
    assert result.exit_code == 0 and result.stderr.count("settings changed: max_clips") == 2
    assert np.load(out / "sub" / "b.npy").shape == (1, 512)
    (tmp_path / "list.txt").write_text(f"{videos / 'a.mkv'}\n")
    result = run("--from-list", tmp_path / "list.txt", "--output-dir", out, "--overwrite",
                 "--weights", weights, "--model", MODEL, *SMALL, "--max-clips", "1")
    assert result.exit_code == 0 and (out / "a.npy").stat().st_mtime_ns != stamp


def test_live_source_until_max_clips_or_duration(tmp_path, weights):
    result = run(*LAVFI, tmp_path / "f.npy", "--weights", weights, "--model", MODEL, *SMALL,
                 "--max-clips", "3")
    assert result.exit_code == 0, result.output
    assert "extract --format is now --input-format" in result.stderr
    assert np.load(tmp_path / "f.npy").shape == (3, 512)
    result = run("--input-format", *LAVFI[1:], tmp_path / "g.npy", "--weights", weights,
                 "--model", MODEL, *SMALL, "--duration", "1")
    meta = json.loads((tmp_path / "g.json").read_text())
    assert result.exit_code == 0 and len(meta["clips"]) == 4  # 30 frames: 8 + 8 + 8 + 6 padded


def _one_line_error(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("name, make, message", [
    ("missing.mp4", None, "not found"),
    ("text.mp4", lambda p: p.write_text("hello " * 100), "cannot open"),
    ("empty.mkv", empty_video, "cannot open"),
    ("audio.m4a", audio_only, "no video stream"),
    ("cut.mkv", "truncated", "truncated"),
])
def test_bad_videos(tmp_path, weights, name, make, message):
    source = tmp_path / name
    if make == "truncated":
        write_sample_video(tmp_path / "full.mkv", seconds=4, width=64, height=48)
        data = (tmp_path / "full.mkv").read_bytes()
        source.write_bytes(data[: len(data) // 2])
    elif make:
        make(source)
    before = set(os.listdir(tmp_path))
    result = run(source, tmp_path / "f.npy", "--weights", weights, "--model", MODEL, *SMALL)
    assert message in _one_line_error(result)
    assert set(os.listdir(tmp_path)) == before


def test_bad_options(tmp_path, weights):
    lossless_video(tmp_path / "v.mkv", frames=8)
    cases = [
        ([tmp_path / "v.mkv", tmp_path / "missing" / "f.npy"], "does not exist"),
        ([tmp_path / "v.mkv", tmp_path / "f.txt"], "must be a .npy"),
        ([tmp_path / "v.mkv", tmp_path / "f.npy", "--model", "nope"], "unknown model"),
        ([tmp_path / "v.mkv", tmp_path / "f.npy", "--frame-size", "16"], "smaller than"),
        (["/dev/video97", tmp_path / "f.npy"], "/dev/video97"),
        ([tmp_path / "v.mkv", tmp_path / "f.npy", "--weights", tmp_path / "nope.pth"], "not found"),
    ]
    for args, message in cases:
        result = run(*args, *(["--weights", weights] if "--weights" not in args else []))
        assert message in _one_line_error(result), args
    assert sorted(os.listdir(tmp_path)) == ["v.mkv"]


def _start(args, cwd):
    command = [sys.executable, "-m", "ig65m", "extract", *map(str, args)]
    # Ctrl-C's default action in the child even when this run was started with SIGINT ignored
    # (a background job of a non-interactive shell is): Python then installs no KeyboardInterrupt
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = threading.Event()
    log = []

    def watch():
        for chunk in iter(lambda: process.stderr.read(1), ""):
            log.append(chunk)
            if re.search(r"\b[1-9]\d*(clip|/\d+ )", "".join(log[-200:])):  # "5clip" or "5/225 [..."
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    assert seen.wait(120), "".join(log)
    return process


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_file_leaves_no_output(tmp_path, weights, sig):
    write_sample_video(tmp_path / "long.mp4", seconds=60, width=64, height=48)
    process = _start([tmp_path / "long.mp4", tmp_path / "f.npy", "--weights", weights,
                      "--model", MODEL, *SMALL, "--batch-size", "1"], tmp_path)
    process.send_signal(sig)
    assert process.wait(60) != 0
    assert not (tmp_path / "f.npy").exists() and not (tmp_path / "f.json").exists()
    if sig == signal.SIGINT:  # a clean stop also removes its temporary file
        assert sorted(os.listdir(tmp_path)) == ["long.mp4"]


def test_ctrl_c_on_a_live_source_keeps_what_was_extracted(tmp_path, weights):
    process = _start([*LAVFI, tmp_path / "f.npy", "--weights", weights, "--model", MODEL,
                      *SMALL, "--batch-size", "1"], tmp_path)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0, stdout
    features = np.load(tmp_path / "f.npy")
    meta = json.loads((tmp_path / "f.json").read_text())
    assert features.shape[0] >= 1 and len(meta["clips"]) == features.shape[0]
    assert meta["interrupted"] is True and json.loads(stdout)["interrupted"] is True


def test_flow_models_extract_from_optical_flow(tmp_path):
    pytest.importorskip("cv2")
    lossless_video(tmp_path / "v.mkv", frames=18)
    extractor = Extractor("i3d_inception_flow_kinetics", "random", progress=False)
    features, meta = extractor.features(tmp_path / "v.mkv", frame_size=32, crop_size=32,
                                        clip_frames=8)
    assert features.shape == (3, 1024)  # 17 flow frames (one per pair): 8 + 8 + 1 padded
    np.testing.assert_allclose(meta["clips"][1][0], 8 / 30, atol=1e-3)


def test_flow_models_run_through_onnx_runtime(tmp_path):
    pytest.importorskip("cv2")
    lossless_video(tmp_path / "v.mkv", frames=9)
    options = dict(frame_size=32, crop_size=32, clip_frames=8)
    torch_run = Extractor("i3d_inception_flow_kinetics", "random", progress=False)
    expected, _ = torch_run.features(tmp_path / "v.mkv", **options)
    onnx_run = Extractor("i3d_inception_flow_kinetics", "random", progress=False,
                         backend="onnxruntime")
    onnx_run.embedder.load_state_dict(torch_run.embedder.state_dict())
    features, _ = onnx_run.features(tmp_path / "v.mkv", **options)
    assert features.shape == (1, 1024)
    np.testing.assert_allclose(features, expected, atol=1e-4)


def test_labels_print_top5_per_clip_and_for_the_video(tmp_path, weights):
    lossless_video(tmp_path / "v.mkv", frames=16)
    names = [f"hashtag_{i}" for i in range(359)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    result = run(tmp_path / "v.mkv", tmp_path / "f.npy", "--weights", weights, "--model", MODEL,
                 *SMALL, "--labels", tmp_path / "labels.txt")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert len(record["clip_top"]) == 2 and all(len(top) == 5 for top in record["clip_top"])
    scores = [entry["score"] for entry in record["top"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    assert all(entry["label"] == names[entry["index"]] for entry in record["top"])
    # the video's scores are the mean of the clips' softmax: recompute them from the logits
    extractor = Extractor(MODEL, weights, progress=False)
    batch = next(extractor.batches(tmp_path / "v.mkv", frame_size=32, crop_size=32))
    probabilities = np.exp(batch.logits - batch.logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    best = probabilities.mean(0).argmax()
    assert record["top"][0]["index"] == best
    assert np.load(tmp_path / "f.npy").shape == (2, 512)
    (tmp_path / "short.txt").write_text("a\nb\n")
    result = run(tmp_path / "v.mkv", tmp_path / "g.npy", "--weights", weights, "--model", MODEL,
                 *SMALL, "--labels", tmp_path / "short.txt")
    assert result.exit_code == 2 and not (tmp_path / "g.npy").exists()


def test_a_list_saved_by_a_windows_editor_reads_like_any_other(tmp_path):
    """A UTF-8 byte-order mark used to stay on the first path ('1 of 2 videos failed:
    \\ufeff/videos/a.mkv', the mark invisible in the message); an indented # line was a path."""
    from ig65m.jobs import read_list

    listed = tmp_path / "list.txt"
    listed.write_bytes("\ufeff/videos/a.mkv\r\n\r\n  # a comment\r\n/videos/b c.mkv\r\n"
                       .encode("utf-8"))
    assert read_list(listed) == ["/videos/a.mkv", "/videos/b c.mkv"]


def test_two_videos_for_one_output_are_named(tmp_path):
    from ig65m.errors import Ig65mError
    from ig65m.jobs import plan_jobs

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        lossless_video(tmp_path / name / "x.mkv", frames=2)
    with pytest.raises(Ig65mError, match=r"a/x.mkv and .*b/x.mkv would both write .*/out/x.npy;"):
        plan_jobs([str(tmp_path / "a" / "x.mkv"), str(tmp_path / "b" / "x.mkv")], tmp_path / "out",
                  None)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a' / 'x.mkv'}\n" * 2)
    with pytest.raises(Ig65mError, match=r"would both write .*x.npy \(listed twice\)"):
        plan_jobs([], tmp_path / "out", tmp_path / "list.txt")
