"""ONNX export of the clip embedder and the ONNX Runtime backend, alone and inside `extract`."""

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.convert.onnx import OnnxBackend, export_onnx
from ig65m.embedder import ClipEmbedder, run_torch
from ig65m.errors import Ig65mError
from ig65m.models import get_model
from ig65m.weights import cache_dir
from tests.videos import lossless_video

MODEL = "r2plus1d_34_8_ig65m"
FRAMES, CROP = 8, 32


@pytest.fixture(scope="module")
def embedder(weights):
    model, _ = get_model(MODEL, weights)
    return ClipEmbedder(model)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, embedder):
    path = tmp_path_factory.mktemp("onnx") / "embedder.onnx"
    assert export_onnx(embedder, path, clip_frames=FRAMES, crop_size=CROP) == path
    return path


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_export_has_named_io_dynamic_batch_and_passes_the_checker(exported):
    onnx.checker.check_model(str(exported), full_check=True)
    graph = onnx.load(str(exported)).graph
    assert [(i.name, _dims(i)) for i in graph.input] == [("clips", ["batch", 3, FRAMES, CROP, CROP])]
    assert [(o.name, _dims(o)) for o in graph.output] == [("logits", ["batch", 359]),
                                                          ("features", ["batch", 512])]


@pytest.mark.parametrize("batch", [1, 3])
def test_backend_matches_run_torch(exported, embedder, batch):
    clips = torch.randn(batch, 3, FRAMES, CROP, CROP, generator=torch.Generator().manual_seed(batch))
    expected_logits, expected_features = run_torch(embedder, clips, "cpu")
    backend = OnnxBackend(exported)
    assert (backend.clip_frames, backend.crop_size) == (FRAMES, CROP)
    for given in (clips, clips.numpy().astype(np.float64)):  # torch, or numpy of any float type
        logits, features = backend(given)
        assert logits.dtype == features.dtype == np.float32
        assert logits.shape == (batch, 359) and features.shape == (batch, 512)
        assert np.abs(features - expected_features).max() <= 1e-4
        assert np.abs(logits - expected_logits).max() <= 1e-4
    one_thread = OnnxBackend(exported, threads=1)(clips)
    np.testing.assert_allclose(one_thread[1], expected_features, atol=1e-4, rtol=0)


def test_max_pooling_is_exported_too(tmp_path):
    torch.manual_seed(1)
    model, _ = get_model("r2plus1d_18_16_kinetics", "random")
    embedder = ClipEmbedder(model, pool_spatial="max", pool_temporal="max")
    export_onnx(embedder, tmp_path / "max.onnx", clip_frames=FRAMES, crop_size=CROP)
    clips = torch.randn(2, 3, FRAMES, CROP, CROP)
    expected = run_torch(embedder, clips, "cpu")
    got = OnnxBackend(tmp_path / "max.onnx")(clips)
    mean_features = run_torch(ClipEmbedder(model), clips, "cpu")[1]
    assert not np.allclose(got[1], mean_features)  # really the max, not a mean
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, atol=1e-4, rtol=1e-5)


def test_wrong_clip_shape_is_a_user_error(exported):
    backend = OnnxBackend(exported)
    for shape in [(1, 3, 16, CROP, CROP), (1, 3, FRAMES, 112, 112), (3, FRAMES, CROP, CROP)]:
        with pytest.raises(Ig65mError, match=r"takes clips of shape \(N, 3, 8, 32, 32\)"):
            backend(np.zeros(shape, np.float32))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, on purpose
def test_bad_model_files(tmp_path):
    with pytest.raises(Ig65mError, match="ONNX model not found"):
        OnnxBackend(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(Ig65mError, match="cannot load ONNX model .*junk.onnx"):
        OnnxBackend(tmp_path / "junk.onnx")
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(tmp_path / "other.onnx"),
                      dynamo=False, input_names=["x"], output_names=["y"])
    with pytest.raises(Ig65mError, match="is not an ig65m clip embedder"):
        OnnxBackend(tmp_path / "other.onnx")


def test_export_to_an_unwritable_place_leaves_nothing(tmp_path, embedder):
    with pytest.raises(Ig65mError, match="does not exist"):
        export_onnx(embedder, tmp_path / "no" / "e.onnx", clip_frames=FRAMES, crop_size=CROP)
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(Ig65mError, match="is a folder"):
        export_onnx(embedder, tmp_path / "dir.onnx", clip_frames=FRAMES, crop_size=CROP)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx"]


# --- extract --backend onnxruntime ---------------------------------------------------------------

def extract(*args):
    return CliRunner().invoke(main, ["extract", *map(str, args)])


def _features(result, path):
    assert result.exit_code == 0, result.output
    return np.load(path, allow_pickle=False)


def test_extract_with_an_onnx_file_equals_torch(tmp_path, weights, exported):
    lossless_video(tmp_path / "v.mkv", frames=24, width=64, height=48)
    common = [tmp_path / "v.mkv", "--model", MODEL, "--weights", weights, "--frame-size", CROP,
              "--crop-size", CROP, "--batch-size", 2]
    torch_features = _features(extract(*common[:1], tmp_path / "t.npy", *common[1:]),
                               tmp_path / "t.npy")
    result = extract(*common[:1], tmp_path / "o.npy", *common[1:], "--backend", "onnxruntime",
                     "--onnx", exported)
    onnx_features = _features(result, tmp_path / "o.npy")
    assert torch_features.shape == onnx_features.shape == (3, 512)
    assert np.abs(onnx_features - torch_features).max() <= 1e-4


def test_extract_exports_into_the_cache_when_no_file_is_given(tmp_path, weights):
    lossless_video(tmp_path / "v.mkv", frames=16, width=64, height=48)
    common = ["--model", MODEL, "--weights", weights, "--max-clips", 2, "--batch-size", 2]
    for crop in (32, 48):  # one export per clip shape, named by it
        sizes = ["--frame-size", crop, "--crop-size", crop]
        torch_features = _features(extract(tmp_path / "v.mkv", tmp_path / "t.npy", *common,
                                           *sizes, "--overwrite"), tmp_path / "t.npy")
        result = extract(tmp_path / "v.mkv", tmp_path / "o.npy", *common, *sizes, "--overwrite",
                         "--backend", "onnxruntime")
        onnx_features = _features(result, tmp_path / "o.npy")
        cached = list((cache_dir() / "backends").glob(f"{MODEL}-3x8x{crop}x{crop}-*.onnx"))
        assert len(cached) == 1 and OnnxBackend(cached[0]).crop_size == crop
        assert torch_features.shape == (2, 512)
        assert np.abs(onnx_features - torch_features).max() <= 1e-4
    assert len(list((cache_dir() / "backends").glob("*.onnx"))) == 2


def test_extract_with_a_mismatched_onnx_file_fails_cleanly(tmp_path, weights, exported):
    lossless_video(tmp_path / "v.mkv", frames=8, width=64, height=48)
    result = extract(tmp_path / "v.mkv", tmp_path / "o.npy", "--model", MODEL, "--weights",
                     weights, "--frame-size", 48, "--crop-size", 48, "--backend", "onnxruntime",
                     "--onnx", exported)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "takes clips of shape" in result.stderr
    assert not (tmp_path / "o.npy").exists()
