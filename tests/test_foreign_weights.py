"""Released formats load through `--weights` and the pretrained path, not only our .pth."""

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from ig65m.convert.caffe2 import save_caffe2_blobs
from ig65m.errors import Ig65mError
from ig65m.models import get_model, get_spec, registry
from ig65m.models.registry import ModelSpec
from tests.test_i3d_resnet import published_blobs


def test_caffe2_pickle_as_weights_for_i3d_resnet(tmp_path):
    blobs = published_blobs(np.random.default_rng(0))
    pkl = save_caffe2_blobs(tmp_path / "i3d_baseline_32x2_IN_pretrain_400k.pkl", blobs)
    model, sha = get_model("i3d_r50_32_kinetics", pkl)
    assert sha == hashlib.sha256(pkl.read_bytes()).hexdigest()
    np.testing.assert_array_equal(model.fc.bias.detach().numpy(), blobs["pred_b"])
    np.testing.assert_array_equal(model.layer2[1].conv1.weight.detach().numpy(),
                                  blobs["res3_1_branch2a_w"])


def test_release_download_of_a_caffe2_pickle(tmp_path, monkeypatch):
    """The pretrained path (download into the cache, then convert) with a file:// release."""
    blobs = published_blobs(np.random.default_rng(1))
    pkl = save_caffe2_blobs(tmp_path / "release.pkl", blobs)
    prefix = hashlib.sha256(pkl.read_bytes()).hexdigest()[:8]
    named = pkl.rename(tmp_path / f"i3d_baseline-{prefix}.pkl")
    spec = get_spec("i3d_r50_32_kinetics")
    row = dataclasses.replace(spec.weights, url=named.as_uri())
    monkeypatch.setitem(registry._MODELS, spec.name,
                        ModelSpec(spec.name, spec.family, spec.builder, row, spec.feature_dim))
    model, _ = get_model(spec.name, progress=False)
    np.testing.assert_array_equal(model.fc.weight.detach().numpy(), blobs["pred_w"])


def test_pickles_for_models_without_a_caffe2_release(tmp_path):
    pkl = save_caffe2_blobs(tmp_path / "w.pkl", {"x_w": np.zeros((2, 2), np.float32)})
    with pytest.raises(Ig65mError, match="no Caffe2 release"):
        get_model("r2plus1d_18_16_kinetics", pkl)
    with pytest.raises(Ig65mError, match="do not fit I3D ResNet-50"):
        get_model("i3d_r50_32_kinetics", pkl)
    np.savez(tmp_path / "vars.npz", x=np.zeros(2))
    with pytest.raises(Ig65mError, match="only I3D Inception"):
        get_model("r2plus1d_18_16_kinetics", tmp_path / "vars.npz")


def test_hostile_pickle_as_weights_runs_nothing(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"blobs": {"a": Hostile()}}))
    with pytest.raises(Ig65mError):
        get_model("i3d_r50_32_kinetics", tmp_path / "evil.pkl")
    torch.save({"a": Hostile()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True)
    with pytest.raises(Ig65mError):
        get_model("r2plus1d_18_16_kinetics", tmp_path / "evil.pth")
    assert not marker.exists()


def test_convert_reads_the_i3d_resnet_caffe2_release(tmp_path):
    from ig65m.convert.release import convert_release
    from ig65m.convert.onnx import OnnxBackend
    from ig65m.weights import load_state_dict

    blobs = published_blobs(np.random.default_rng(2))
    pkl = save_caffe2_blobs(tmp_path / "i3d_baseline_32x2_IN_pretrain_400k.pkl", blobs)
    result = convert_release(pkl, tmp_path / "i3d_r50", get_spec("i3d_r50_32_kinetics"),
                             check_batch=1, log=lambda message: None)
    assert result.max_abs_diff <= 1e-4
    state = load_state_dict(result.pth)
    np.testing.assert_array_equal(state["fc.weight"].numpy(), blobs["pred_w"])
    assert OnnxBackend(result.onnx).input_shape[1:] == (3, 32, 224, 224)
    assert result.pth_sha256 == hashlib.sha256(result.pth.read_bytes()).hexdigest()


def test_finetuning_starts_from_a_released_caffe2_pickle(tmp_path):
    from ig65m.train.adapt import load_for_finetune

    blobs = published_blobs(np.random.default_rng(3))
    pkl = save_caffe2_blobs(tmp_path / "i3d_baseline_32x2_IN_pretrain_400k.pkl", blobs)
    model, sha = load_for_finetune(get_spec("i3d_r50_32_kinetics"), pkl, 5, progress=False)
    assert model.fc.out_features == 5 and sha
    np.testing.assert_array_equal(model.layer1[0].conv1.weight.detach().numpy(),
                                  blobs["res2_0_branch2a_w"])
