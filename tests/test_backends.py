"""Backends (ig65m.backends): each one against torch fp32, the accuracy gate, `auto` and its cache,
the sidecar's record of what produced the features. A tiny registered model keeps conversion and
quantization to seconds; one real family (R(2+1)D-18) runs through the command line."""

import json

import numpy as np
import pytest
import torch.nn as nn
from click.testing import CliRunner

from ig65m import extract
from ig65m.backends import cache, clipset, gate, select
from ig65m.backends.openvino import has_bf16
from ig65m.backends.ort import providers
from ig65m.cli import main
from ig65m.convert.onnx import export_onnx
from ig65m.errors import Ig65mError
from ig65m.extract import Extractor
from ig65m.fileio import sidecar_path
from ig65m.sample import write_video
from ig65m.stream import stream_backend
from ig65m.weights import sha256_file
from tests.finetune_helpers import registered
from tests.videos import lossless_video

TINY = "tiny_backend_test"
CLIPS = dict(clip_frames=8, crop_size=32, frame_size=40, batch_size=4)
needs_bf16 = pytest.mark.skipif(not has_bf16(), reason="this CPU has no native bf16")


class Tiny(nn.Module):
    """Two 3D convolutions and a linear head: (N, 3, T, H, W) -> 48-d features, 10 classes."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(3, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
                                  nn.Conv3d(16, 48, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(48, num_classes)

    def forward_features(self, clips):
        return self.body(clips)

    def forward_head(self, feature_map):
        return self.fc(feature_map.mean((2, 3, 4)))

    def forward(self, clips):
        return self.forward_head(self.forward_features(clips))


@pytest.fixture(scope="module", autouse=True)
def tiny():
    with registered(TINY, Tiny, num_classes=10, family="test") as spec:
        yield spec


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("backends_home")


@pytest.fixture(autouse=True)
def _isolated_cache(home, monkeypatch):
    """One cache for this module (conversions are shared between its tests), few calibration
    clips and a short auto measurement."""
    monkeypatch.setenv("IG65M_HOME", str(home))
    monkeypatch.setattr(clipset, "CALIBRATION_CLIPS", 8)
    monkeypatch.setattr(select, "AUTO_SECONDS", 0.05)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "pattern.mkv"
    lossless_video(path, frames=64, width=64, height=48)
    return path


@pytest.fixture(scope="module")
def reference(video, one_thread):
    return Extractor(TINY, "random:0", backend="torch", progress=False).features(video, **CLIPS)


def _cosine(a, b):
    return gate.cosines(a, b).min()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_backends_equal_torch(backend, video, reference):
    features, meta = Extractor(TINY, "random:0", backend=backend, progress=False).features(
        video, **CLIPS)
    assert features.shape == reference[0].shape == (8, 48)
    assert np.abs(features - reference[0]).max() <= 1e-4
    assert (meta["backend"], meta["precision"]) == (backend, "fp32")


@pytest.mark.parametrize("backend", [pytest.param("openvino-bf16", marks=needs_bf16),
                                     "openvino-int8", "onnxruntime-int8", "torch-bf16"])
def test_reduced_precision_backends_keep_cosine(backend, video, reference, capsys):
    extractor = Extractor(TINY, "random:0", backend=backend, progress=False)
    features, meta = extractor.features(video, **CLIPS)
    assert meta["backend"] == backend, capsys.readouterr().err  # the gate let it through
    assert meta["precision"] == backend.split("-")[1]
    assert _cosine(features, reference[0]) >= 0.99
    assert not np.array_equal(features, reference[0])  # really computed another way


@pytest.mark.parametrize("backend, fallbacks", [("openvino-int8", ("openvino-bf16", "openvino")),
                                                ("onnxruntime-int8", ("onnxruntime",))])
def test_gate_refuses_int8_calibrated_on_blank_frames_and_falls_back(backend, fallbacks, tmp_path,
                                                                     video, reference, capsys):
    """Blank frames of the normalisation mean's grey are all zeros to the model: the input range
    INT8 learns from them is empty, and every real clip is clipped to it. (Black frames are not
    broken enough: symmetric ranges from -mean/std cover most real inputs.)"""
    blank = tmp_path / "blank"
    blank.mkdir()
    grey = np.full((48, 64, 3), (128, 128, 128), np.uint8)  # the tiny model's mean is 0.5
    write_video(blank / "grey.mkv", [grey] * 64, fps=30, codec="libx264rgb", options={"crf": "0"})
    extractor = Extractor(TINY, "random:0", backend=backend, calibration=[blank], progress=False)
    features, meta = extractor.features(video, **CLIPS)
    err = capsys.readouterr().err
    assert f"{backend} fails the accuracy gate" in err and "falling back" in err
    assert meta["backend"] in fallbacks and meta["precision"] != "int8"
    assert _cosine(features, reference[0]) >= 0.99


@pytest.mark.parametrize("backend", ["openvino-int8", "onnxruntime-int8"])
def test_int8_model_is_quantized_once_and_cached(backend, video, monkeypatch, capsys):
    """The quantized model is keyed by model, weights, clip shape, runtime versions and the
    calibration set: a second run loads it; other weights quantize again."""
    def run(weights):
        Extractor(TINY, weights, backend=backend, progress=False).features(video, max_clips=4,
                                                                           **CLIPS)
        return capsys.readouterr().err.count("quantizing")

    run("random:7")  # quantized here, or by an earlier test: either way cached now
    files = sorted(cache.backends_dir().glob("*int8*"))
    assert run("random:7") == 0 and sorted(cache.backends_dir().glob("*int8*")) == files
    assert run("random:8") == 1


def test_gate_thresholds():
    logits = np.eye(4, 10)
    features = np.ones((4, 48))
    assert gate.check((logits, features), (logits, features)).passed
    tilted = features.copy()
    tilted[0, :24] = 0  # cosine 0.707 on one clip
    assert not gate.check((logits, features), (logits, tilted)).passed
    tiny = features * 1e-4  # a network whose features all but vanish, as random I3D Inception's
    assert not gate.check((logits, tiny), (logits, np.zeros_like(tiny))).passed  # INT8 lost them
    assert gate.check((logits, np.zeros_like(tiny)), (logits, np.zeros_like(tiny))).passed
    swapped = logits[[1, 0, 2, 3]]  # top-1 agrees on half the clips
    result = gate.check((logits, features), (swapped, features))
    assert not result.passed and result.top1_agreement == 0.5


def test_auto_picks_caches_and_is_invalidated(video, monkeypatch, capsys):
    monkeypatch.setattr(select, "AUTO_CANDIDATES", ("torch", "onnxruntime", "openvino",
                                                    "openvino-bf16"))
    measured = []
    real_measure = select._measure
    monkeypatch.setattr(select, "_measure",
                        lambda *args: measured.append(1) or real_measure(*args))

    def run(weights="random:0"):
        return Extractor(TINY, weights, backend="auto", progress=False).features(
            video, max_clips=4, **CLIPS)[1]

    meta = run()
    choice = next(iter(cache.read_choices().values()))
    assert meta["backend"] == choice["backend"] and len(measured) == 1
    assert {row["backend"] for row in choice["table"]} == set(select.AUTO_CANDIDATES)
    assert all(row.get("clips_per_s") or row.get("refused") for row in choice["table"])
    assert "auto chose" in capsys.readouterr().err
    run()
    assert len(measured) == 1  # cached: not measured again
    run("random:1")
    assert len(measured) == 2  # other weights: measured again
    versions = dict(cache.runtime_versions(), openvino="0.0.0")
    monkeypatch.setattr(cache, "runtime_versions", lambda: versions)
    run()
    assert len(measured) == 3  # another OpenVINO: measured again
    table = CliRunner().invoke(main, ["models", "--backends"])
    assert table.exit_code == 0 and TINY in table.output and "*" in table.output


def test_a_known_weights_sha256_runs_auto_cached_conversion_without_the_torch_model(
        video, monkeypatch):
    """What a Ray model actor does with its driver's weights sha256: auto's cached choice, a
    converted model, runs without building the torch model; a backend that needs torch builds it
    then, and weights that are not those of the sha256 are refused."""
    monkeypatch.setattr(select, "AUTO_CANDIDATES", ("openvino",))
    first = Extractor(TINY, "random:3", backend="auto", progress=False)
    expected, _ = first.features(video, max_clips=4, **CLIPS)
    built, real = [], extract.get_model
    monkeypatch.setattr(extract, "get_model", lambda *a, **k: built.append(a) or real(*a, **k))

    def run(weights, backend):
        return Extractor(TINY, weights, backend=backend, weights_sha256=first.weights_sha256,
                         progress=False).features(video, max_clips=4, **CLIPS)

    features, meta = run("random:3", "auto")
    assert not built and np.array_equal(features, expected)
    assert (meta["backend"], meta["weights_sha256"]) == ("openvino", first.weights_sha256)
    features, _ = run("random:3", "torch")
    assert len(built) == 1
    assert np.array_equal(features, Extractor(TINY, "random:3", backend="torch", progress=False)
                          .features(video, max_clips=4, **CLIPS)[0])
    with pytest.raises(Ig65mError, match="every node must see the same weights"):
        run("random:4", "torch")


def test_auto_key_tells_cpus_with_the_same_name_but_other_kernels_apart(tmp_path):
    """A cloud VM's "Intel(R) Xeon(R) Processor" may or may not have AMX: INT8 speed differs
    several times, so auto measures again."""
    def info(flags):
        path = tmp_path / f"cpuinfo-{len(flags)}"
        path.write_text(f"model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu {flags}\n")
        return cache.cpu_name(path)

    plain, amx = info("avx2 avx512f avx512_vnni"), info("avx2 avx512f avx512_vnni amx_int8")
    assert plain == "Intel(R) Xeon(R) Processor [avx2 avx512_vnni avx512f]" and amx != plain
    assert cache.cpu_name(tmp_path / "missing")  # no /proc: the platform's name


def test_refusals_are_one_line(video, monkeypatch):
    with pytest.raises(Ig65mError, match="torch-fp16 runs on CUDA only"):
        Extractor(TINY, "random:0", backend="torch-fp16", progress=False).features(video, **CLIPS)
    monkeypatch.setattr("ig65m.backends.openvino.has_bf16", lambda: False)
    with pytest.raises(Ig65mError, match="needs a CPU with native bf16"):
        Extractor(TINY, "random:0", backend="openvino-bf16", progress=False).features(video,
                                                                                      **CLIPS)
    with pytest.raises(Ig65mError, match="stream models run with"):
        stream_backend("openvino")
    assert providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu") == [
        "CPUExecutionProvider"]


def test_extract_with_an_onnx_file_records_it_and_loads_no_weights(tmp_path, video, reference):
    model = Extractor(TINY, "random:0", backend="torch", progress=False).embedder
    onnx = export_onnx(model, tmp_path / "tiny.onnx", clip_frames=8, crop_size=32)
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / f"{backend}.npy"
        # no --weights: the default would download the release (a file:///nonexistent URL here)
        result = CliRunner().invoke(main, ["extract", str(video), str(out), "--model", TINY,
                                           "--backend", backend, "--onnx", str(onnx),
                                           *_options(CLIPS)])
        assert result.exit_code == 0, result.output
        meta = json.loads(sidecar_path(out).read_text())
        assert meta["onnx"] == {"path": str(onnx.resolve()), "sha256": sha256_file(onnx)}
        assert meta.get("weights_sha256") is None and meta["backend"] == backend
        assert np.abs(np.load(out) - reference[0]).max() <= 1e-4


def _options(settings):
    return [item for key, value in settings.items()
            for item in (f"--{key.replace('_', '-')}", str(value))]


def test_a_real_family_runs_in_openvino_from_the_command_line(tmp_path, video, one_thread):
    common = [str(video), "--model", "r2plus1d_18_16_kinetics", "--weights", "random:0",
              "--max-clips", "2", *_options(CLIPS)]
    outputs = {}
    for backend in ("torch", "openvino"):
        outputs[backend] = tmp_path / f"{backend}.npy"
        result = CliRunner().invoke(main, ["extract", common[0], str(outputs[backend]),
                                           *common[1:], "--backend", backend])
        assert result.exit_code == 0, result.output
    meta = json.loads(sidecar_path(outputs["openvino"]).read_text())
    assert (meta["backend"], meta["precision"]) == ("openvino", "fp32")
    assert np.abs(np.load(outputs["openvino"]) - np.load(outputs["torch"])).max() <= 1e-4


def test_hardware_decode_falls_back_to_the_cpu(video):
    """No GPU here (or an NVDEC-less build): asking for CUDA decoding still decodes, on the CPU."""
    from ig65m.video import read_frames

    plain = [frame.image for frame in read_frames(video, frame_size=40)]
    hardware = [frame.image for frame in read_frames(video, frame_size=40, hwaccel="cuda")]
    assert len(plain) == 64 and all(np.array_equal(a, b) for a, b in zip(plain, hardware))


@needs_bf16
def test_a_backend_openvino_cannot_compile_is_an_error_line_or_skipped_by_auto(tmp_path,
                                                                              monkeypatch):
    """MoViNet-A0 at a 32-pixel crop has an average pool OpenVINO's CPU plugin has no bf16 kernel
    for (this OpenVINO): asked for by name it is one error line, not a RuntimeError traceback,
    and `auto` refuses it and goes on with the others."""
    lossless_video(tmp_path / "v.mkv", frames=8)
    argv = ["extract", str(tmp_path / "v.mkv"), str(tmp_path / "f.npy"), "--weights",
            "random:0", "--model", "movinet_a0_base", "--frame-size", "32", "--crop-size", "32"]
    result = CliRunner().invoke(main, argv + ["--backend", "openvino-bf16"])
    if result.exit_code == 0:
        pytest.skip("this OpenVINO compiles the layer in bf16")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.output, result.exception)
    assert lines[-1].startswith("error: OpenVINO cannot compile"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mkv"]
    monkeypatch.setattr(select, "AUTO_CANDIDATES", ("torch", "openvino-bf16"))
    monkeypatch.setattr(select, "AUTO_SECONDS", 0.1)
    result = CliRunner().invoke(main, argv + ["--backend", "auto"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((tmp_path / "f.json").read_text())["backend"] == "torch"
    choice = next(choice for choice in cache.read_choices().values()
                  if choice["model"] == "movinet_a0_base")
    assert choice["table"][1]["refused"].startswith("OpenVINO cannot compile")


def test_auto_with_a_cache_it_cannot_write_still_extracts(tmp_path, monkeypatch):
    """An unwritable $IG65M_HOME refuses the backends that need a converted file and leaves the
    choice uncached (one note on stderr), rather than an OSError traceback."""
    (tmp_path / "file").write_text("not a folder\n")
    monkeypatch.setenv("IG65M_HOME", str(tmp_path / "file" / "home"))
    monkeypatch.setattr(select, "AUTO_CANDIDATES", ("torch", "onnxruntime"))
    monkeypatch.setattr(select, "AUTO_SECONDS", 0.1)
    lossless_video(tmp_path / "v.mkv", frames=8)
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mkv"), str(tmp_path / "f.npy"),
                                       "--weights", "random:0", "--model", "movinet_a0_base",
                                       "--frame-size", "32", "--crop-size", "32", "--backend",
                                       "auto"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((tmp_path / "f.json").read_text())["backend"] == "torch"
    assert "the choice is not cached: cannot create the cache folder" in result.stderr
