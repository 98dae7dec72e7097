import hashlib

import pytest
import torch

from ig65m.errors import Ig65mError
from ig65m.models import get_model, get_spec, list_models
from ig65m.models import registry
from ig65m.models.registry import ModelSpec
from ig65m.weights import Weights, cache_dir, download, load_state_dict


def _release(tmp_path, payload=b"weights-bytes"):
    """A local 'release' file named like the real ones: name-<sha256 prefix>.pth."""
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    path = tmp_path / "release" / f"model-{prefix}.pth"
    path.parent.mkdir()
    path.write_bytes(payload)
    return path, prefix


def test_download_verifies_and_caches(tmp_path):
    path, prefix = _release(tmp_path)
    cached = download(path.as_uri(), prefix, progress=False)
    assert cached == cache_dir() / "weights" / path.name
    assert cached.read_bytes() == b"weights-bytes"
    path.unlink()  # now served from the cache alone
    assert download(path.as_uri(), prefix, progress=False) == cached


def test_corrupt_cache_is_downloaded_again(tmp_path):
    path, prefix = _release(tmp_path)
    cached = download(path.as_uri(), prefix, progress=False)
    cached.write_bytes(b"corrupted")
    assert download(path.as_uri(), prefix, progress=False).read_bytes() == b"weights-bytes"


def test_hash_mismatch_caches_nothing(tmp_path):
    path, _ = _release(tmp_path)
    with pytest.raises(Ig65mError, match="sha256"):
        download(path.as_uri(), "deadbeef", progress=False)
    assert list((cache_dir() / "weights").iterdir()) == []


def test_offline_error_names_url_cache_and_weights_option(tmp_path):
    url = (tmp_path / "nowhere" / "model-12345678.pth").as_uri()
    with pytest.raises(Ig65mError) as info:
        download(url, "12345678", progress=False)
    message = str(info.value)
    assert url in message and str(cache_dir()) in message and "--weights" in message


def test_release_table_follows_the_naming_convention():
    specs = list_models()
    assert {"r2plus1d_34_8_ig65m", "r2plus1d_34_32_ig65m", "r2plus1d_34_8_kinetics",
            "r2plus1d_34_32_kinetics"} <= {spec.name for spec in specs}
    classes = {spec.name: spec.weights.num_classes for spec in specs}
    assert classes["r2plus1d_34_8_ig65m"] == 359 and classes["r2plus1d_34_32_ig65m"] == 487
    assert get_spec("r2plus1d_34_32_kinetics").weights.sha256_prefix == "ade133f1"
    assert Weights(url="x/a.pth", num_classes=1, clip_frames=1).sha256_prefix is None


def test_pretrained_path_goes_through_the_download(tmp_path, monkeypatch):
    """A random model published at a file:// URL loads like the real release would."""
    source = get_model("r2plus1d_18_16_kinetics", "random")[0]
    release = tmp_path / "r2plus1d_18.pth"
    torch.save(source.state_dict(), release)
    digest = hashlib.sha256(release.read_bytes()).hexdigest()
    named = release.rename(tmp_path / f"r2plus1d_18-{digest[:8]}.pth")
    spec = get_spec("r2plus1d_18_16_kinetics")
    patched = ModelSpec(spec.name, spec.family, spec.builder,
                        Weights(url=named.as_uri(), num_classes=400, clip_frames=16),
                        spec.feature_dim)
    monkeypatch.setitem(registry._MODELS, spec.name, patched)
    model, sha = get_model(spec.name, progress=False)
    assert sha == digest
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_local_weights_errors(tmp_path):
    with pytest.raises(Ig65mError, match="not found"):
        get_model("r2plus1d_18_16_kinetics", tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("not torch")
    with pytest.raises(Ig65mError, match="cannot load"):
        load_state_dict(tmp_path / "text.pth")
    small = torch.nn.Linear(2, 2).state_dict()
    torch.save(small, tmp_path / "other.pth")
    with pytest.raises(Ig65mError, match="do not fit"):
        get_model("r2plus1d_18_16_kinetics", tmp_path / "other.pth")
    with pytest.raises(Ig65mError, match="unknown model"):
        get_model("no_such_model", "random")


def test_a_finetuned_checkpoint_loads_with_its_own_head(tmp_path):
    """extract/classify --weights OUT_DIR/best.pth: the head size comes from the checkpoint."""
    tuned = get_spec("r2plus1d_18_16_kinetics").builder(num_classes=400)
    tuned.reset_classifier(3)
    torch.save(tuned.state_dict(), tmp_path / "best.pth")
    model, _ = get_model("r2plus1d_18_16_kinetics", tmp_path / "best.pth")
    assert model.fc.out_features == 3
    assert torch.equal(model.fc.weight, tuned.fc.weight)


def test_random_seed_gives_the_same_weights_in_every_process(tmp_path):
    """`--weights random:SEED`: identical weights (and content sha256) across processes; another
    seed differs; a malformed seed is one clear error."""
    import subprocess
    import sys

    code = ("from ig65m.models import get_model; "
            "print(get_model('r2plus1d_18_16_kinetics', 'random:7')[1])")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    model, sha = get_model("r2plus1d_18_16_kinetics", "random:7")
    assert other.stdout.strip() == sha and len(sha) == 64
    assert get_model("r2plus1d_18_16_kinetics", "random:8")[1] != sha
    with pytest.raises(Ig65mError, match="random:SEED"):
        get_model("r2plus1d_18_16_kinetics", "random:-1")
