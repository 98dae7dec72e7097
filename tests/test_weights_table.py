"""Weights as data: every entry's pin is checked on download, the package imports without cycles,
converters know no model module, typed preprocessing (I3D ResNet-50's frame stride 2)."""

import ast
import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ig65m
from ig65m.clips import clip_windows
from ig65m.errors import Ig65mError
from ig65m.models import get_model, get_spec, list_models, registry
from ig65m.models.registry import ModelSpec
from ig65m.preprocess import resolve
from ig65m.train import sampling
from ig65m.video import read_frames
from ig65m.weights import Pin, cache_dir, fetch, file_digests
from tests.videos import lossless_video

PACKAGE = Path(ig65m.__file__).parent


def _modules():
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":  # runs the CLI when imported
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_alone_without_a_cycle():
    """Each module imported first, with every ig65m module forgotten before it (third-party ones
    such as torch stay loaded, so this takes seconds): a cycle fails as a partial import."""
    code = ("import importlib, sys\n"
            "failed = []\n"
            f"for name in {_modules()!r}:\n"
            "    for loaded in [m for m in sys.modules if m == 'ig65m' or m.startswith('ig65m.')]:\n"
            "        del sys.modules[loaded]\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as err:\n"
            "        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
            "print('\\n'.join(failed))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def _imports(path, *, top_level_only):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "ig65m"}


def test_module_level_imports_form_no_cycle_and_converters_know_no_model():
    """The layer order of ig65m/__init__.py holds: module-level imports are a DAG, and nothing in
    ig65m.convert (functions included) imports a model module."""
    modules = set(_modules())
    graph = {}
    for name in modules:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if not path.is_file():
            path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
        graph[name] = {m for m in _imports(path, top_level_only=True) if m in modules and m != name}
        if name.startswith("ig65m.convert") and name != "ig65m.convert.release":
            # release.py is the `convert` command's pipeline (registry model in, files out)
            every = _imports(path, top_level_only=False)
            assert not {m for m in every if m.startswith("ig65m.models")}, name
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for child in sorted(graph[node]):
            visit(child, trail + [node])
        state[node] = "done"

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("name", ["r2plus1d_18_16_kinetics", "i3d_r50_32_kinetics",
                                  "i3d_inception_flow_kinetics", "movinet_a0_stream"])
def test_table_parameter_counts_match_the_builders(name):
    """One model per family (building all 17, even on the meta device, takes half a minute)."""
    from ig65m.models.loading import count_parameters

    assert get_spec(name).parameters == count_parameters(get_spec(name))


def test_every_entry_pins_an_immutable_url():
    for spec in list_models():
        url, pin = spec.weights.url, spec.weights.integrity
        assert "/master/" not in url and "/main/" not in url, spec.name
        if "github.com" in url and "/raw/" in url:
            commit = url.split("/raw/")[1].split("/")[0]
            assert len(commit) == 40 and int(commit, 16) >= 0, spec.name
            assert pin.kind == "git_blob_sha1" and len(pin.value) == 40, spec.name
        elif spec.name != "i3d_r50_32_kinetics":
            assert pin.kind == "sha256" and len(pin.value) >= 8, spec.name
    assert get_spec("i3d_r50_32_kinetics").weights.integrity is None  # no published hash


def _published_copy(folder, spec, payload):
    """`payload` published under the entry's own file name (with the payload's sha256 prefix
    where the real name carries one) and a row of the same pin kind -> (row, path)."""
    row, name = spec.weights, spec.weights.url.rsplit("/", 1)[1]
    folder.mkdir(parents=True, exist_ok=True)
    if row.sha256_prefix:
        name = name.replace(row.sha256_prefix, hashlib.sha256(payload).hexdigest()[:8])
    path = folder / name
    path.write_bytes(payload)
    pin = row.pin
    if pin is not None and pin.kind == "git_blob_sha1":
        pin = Pin("git_blob_sha1", file_digests(path).git_blob_sha1)
    return dataclasses.replace(row, url=path.as_uri(), pin=pin), path


@pytest.mark.parametrize("name", [spec.name for spec in list_models()])
def test_each_entry_download_checks_its_pin(tmp_path, name):
    """Each entry's check, with a file of its own pin kind: the right bytes are cached, one byte
    changed is refused with nothing cached (the unpinned I3D ResNet-50 pickle is not checked)."""
    spec = get_spec(name)
    payload = bytes(range(256)) * 8
    row, path = _published_copy(tmp_path / "good", spec, payload)
    assert (row.integrity is None) == (spec.weights.integrity is None)
    cached, digests = fetch(row.url, row.integrity, progress=False)
    assert cached.read_bytes() == payload and digests.sha256 == hashlib.sha256(payload).hexdigest()
    cached.unlink()
    changed = bytearray(payload)
    changed[1000] ^= 1
    path.write_bytes(bytes(changed))
    if row.integrity is None:
        assert fetch(row.url, None, progress=False)[0].read_bytes() == bytes(changed)
        return
    with pytest.raises(Ig65mError, match=row.integrity.kind):
        fetch(row.url, row.integrity, progress=False)
    assert not any((cache_dir() / "weights").iterdir())


def test_git_blob_pin_is_git_hash_object(tmp_path):
    path = tmp_path / "w"
    path.write_bytes(b"hello\n")
    assert file_digests(path).git_blob_sha1 == "ce013625030ba8dba906f756967f9e9ca394464a"


@pytest.mark.parametrize("name", ["movinet_a0_stream", "i3d_inception_rgb_kinetics"])
def test_git_pinned_release_loads_through_the_download(tmp_path, monkeypatch, name):
    """The whole pretrained path for a git-blob-pinned entry: download, check, filter, load."""
    source, _ = get_model(name, "random:3")
    buffer = tmp_path / "buffer.pth"
    torch.save(source.state_dict(), buffer)
    spec = get_spec(name)
    row, path = _published_copy(tmp_path / "release", spec, buffer.read_bytes())
    monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(spec, weights=row))
    model, sha = get_model(name, progress=False)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    (cache_dir() / "weights" / path.name).unlink()
    with pytest.raises(Ig65mError, match="git_blob_sha1"):
        get_model(name, progress=False)


def test_model_spec_keeps_its_positional_fields():
    spec = get_spec("r2plus1d_18_16_kinetics")
    again = ModelSpec(spec.name, spec.family, spec.builder, spec.weights, spec.feature_dim)
    assert again.weights is spec.weights


# --- typed preprocessing -------------------------------------------------------------------------

def test_i3d_resnet_clips_take_every_second_frame(tmp_path):
    """I3D ResNet-50 was trained on 32 frames sampled every 2nd frame: its row says so, the one
    resolver passes it on, extraction windows and training/evaluation indices use it."""
    settings = resolve(get_spec("i3d_r50_32_kinetics").weights)
    assert (settings.clip_frames, settings.frame_stride, settings.span) == (32, 2, 63)
    assert resolve(get_spec("r2plus1d_34_8_ig65m").weights).frame_stride == 1
    assert sampling.clip_indices(100, 32, 10, 2) == list(range(10, 74, 2))
    assert sampling.centre_start(100, settings.span) == (100 - 63) // 2

    images = lossless_video(tmp_path / "v.mkv", frames=20, fps=10)
    frames = read_frames(tmp_path / "v.mkv", frame_size=None)
    clips = list(clip_windows(frames, clip_frames=4, frame_stride=2))
    assert len(clips) == 3  # frames 0-6, 8-14, 16-18 (+ padding)
    np.testing.assert_array_equal(clips[1].frames, np.stack(images[8:15:2]))
    assert clips[1].start == pytest.approx(0.8) and clips[1].end == pytest.approx(1.6)


def test_extraction_uses_the_rows_frame_stride(tmp_path):
    """An Extractor of a model whose row has frame_stride 2 windows every 2nd frame, and says so
    in the sidecar."""
    from ig65m.extract import Extractor
    from tests.finetune_helpers import ColourProbe, registered

    lossless_video(tmp_path / "v.mkv", frames=24, fps=12)
    with registered("strided_probe", ColourProbe, num_classes=3, family="test") as spec:
        strided = dataclasses.replace(spec.weights, frame_stride=2)
        registry._MODELS[spec.name] = dataclasses.replace(spec, weights=strided)
        extractor = Extractor(spec.name, "random", progress=False)
        features, meta = extractor.features(tmp_path / "v.mkv")
    assert meta["frame_stride"] == 2 and meta["clip_frames"] == 8
    assert len(meta["clips"]) == 2 and meta["clips"][0] == pytest.approx([0.0, 16 / 12], abs=2e-3)
    assert features.shape == (2, 3)


# --- progress totals -------------------------------------------------------------------------------

def test_expected_clips_counts_what_the_windows_make():
    from ig65m.clips import expected_clips
    from ig65m.video import Frame

    for frames in (0, 1, 5, 8, 9, 16, 17, 40, 63, 64, 65):
        for clip_frames, step, stride in ((8, 8, 1), (8, 4, 1), (4, 8, 1), (32, 32, 2), (4, 3, 3)):
            for tail in ("pad", "drop"):
                stream = (Frame(np.zeros((1, 1, 3), np.uint8), i / 10) for i in range(frames))
                made = sum(1 for _ in clip_windows(stream, clip_frames=clip_frames, step=step,
                                                   tail=tail, frame_stride=stride))
                assert expected_clips(frames, clip_frames=clip_frames, step=step, tail=tail,
                                      frame_stride=stride) == made, (frames, clip_frames, step,
                                                                     stride, tail)


def test_extract_bar_total_comes_from_the_stated_duration(tmp_path):
    from ig65m.extract import Extractor
    from tests.finetune_helpers import ColourProbe, registered

    lossless_video(tmp_path / "v.mkv", frames=30, fps=10)
    with registered("counted_probe", ColourProbe, num_classes=3, family="test") as spec:
        extractor = Extractor(spec.name, "random", progress=False)
        assert extractor.expected_clips(tmp_path / "v.mkv", {}) == 4  # 8 + 8 + 8 + 6 padded
        assert extractor.expected_clips(tmp_path / "v.mkv", {"step": 4, "max_clips": 5}) == 5
        assert extractor.expected_clips(tmp_path / "v.mkv", {"duration": 1.0}) == 2
        features, _ = extractor.features(tmp_path / "v.mkv")
    assert len(features) == 4
