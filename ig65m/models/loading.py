"""Build a registered model and load its weights: `get_model`, and the pieces finetune reuses.

`--weights` is None/"pretrained" (the row's release, downloaded and checked against its pin),
"random", "random:SEED", or a local file in any format a checkpoint filter of the row reads.
"""

import hashlib
import itertools
import logging
from pathlib import Path
from typing import NamedTuple

import torch

from ig65m.convert.formats import FORMAT_NAMES, FORMAT_TITLES, read_checkpoint
from ig65m.errors import Ig65mError
from ig65m.models.heads import match_head
from ig65m.models.registry import FAMILY_NAMES, get_spec, list_models
from ig65m.weights import fetch, file_digests

log = logging.getLogger(__name__)


class WeightsFile(NamedTuple):
    """A local weights file, its sha256 (read once) and its format (None: from the suffix)."""

    path: Path
    sha256: str
    file_format: str | None = None


def get_model(name, weights=None, *, progress=True):
    """Build model `name` and load its weights -> (model in eval mode, weights sha256 or None).

    `weights`: None or "pretrained" downloads the spec's release file into the cache (checked
    against its pin); a path loads that local file (`.pth`, or a released Caffe2 / TensorFlow
    format its row has a checkpoint filter for); "random" keeps the random initialisation (for
    pipeline checks only: a warning says the features mean nothing); "random:SEED" draws that
    initialisation from SEED, so every process and every run gets the same weights, and reports
    the sha256 of their content.
    """
    spec = get_spec(name)
    seed = random_seed(weights)
    if seed is not None or weights == "random":
        log.warning("%s has random weights; its features mean nothing", name)
        return _random_model(spec, seed)
    local = weights_file(spec, weights, progress=progress)
    state_dict = read_state_dict(spec, local)
    with torch.device("meta"):  # no time spent on a random initialisation about to be replaced
        model = _build_for(spec, state_dict)
    load_weights(model, state_dict, source=local.path)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = _build_for(spec, state_dict)  # the model has non-persistent buffers
        load_weights(model, state_dict, source=local.path)
    return model.eval(), local.sha256


def random_seed(weights):
    """The SEED of `--weights random:SEED`, None for anything else."""
    if not isinstance(weights, str) or not weights.startswith("random:"):
        return None
    text = weights.split(":", 1)[1]
    if not text.isdigit() or int(text) >= 2**63:
        raise Ig65mError(f"--weights random:SEED needs a whole number 0 <= SEED < 2**63, got {text!r}")
    return int(text)


def _random_model(spec, seed):
    """(model in eval mode, None), or with a seed (same weights everywhere, their content sha256)."""
    if seed is None:
        return spec.builder(num_classes=spec.weights.num_classes).eval(), None
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays untouched
        torch.manual_seed(seed)
        model = spec.builder(num_classes=spec.weights.num_classes).eval()
    return model, state_dict_sha256(model.state_dict())


def state_dict_sha256(state_dict):
    """sha256 over a state_dict's names, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def weights_file(spec, weights, *, progress=True):
    """`--weights` as a WeightsFile: None/"pretrained" -> the release, downloaded into the cache
    and checked against its pin; "random"/"random:SEED" -> None; anything else is a path."""
    if weights == "random" or random_seed(weights) is not None:
        return None
    if weights in (None, "pretrained"):
        row = spec.weights
        path, digests = fetch(row.url, row.integrity, progress=progress)
        return WeightsFile(path, digests.sha256, row.file_format)
    path = Path(weights)
    if path.is_dir():
        raise Ig65mError(f"--weights {path} is a folder: give the weights file in it")
    if not path.is_file():
        raise Ig65mError(f"weights file not found: {path}")
    return WeightsFile(path, file_digests(path).sha256)


def read_state_dict(spec, local):
    """A WeightsFile -> state_dict for `spec`, through the row's checkpoint filter for its format."""
    file_format, checkpoint = read_checkpoint(local.path, local.file_format)
    row = spec.weights
    checkpoint_filter = row.filter_for(file_format)
    if checkpoint_filter is not None:
        return checkpoint_filter(checkpoint, row.num_classes, build=spec.builder)
    if file_format != "pth":
        raise Ig65mError(_no_release(spec, local.path, file_format))
    return checkpoint


def _no_release(spec, path, file_format):
    families = sorted({FAMILY_NAMES.get(s.family, s.family) for s in list_models()
                       if s.weights.filter_for(file_format)})
    readers = " and ".join(families) or "no model"
    verb = "reads" if len(families) == 1 else "read"
    return (f"{path} is {FORMAT_NAMES[file_format]}; {spec.name} has no {FORMAT_TITLES[file_format]} "
            f"release (give a .pth): only {readers} {verb} those")


def count_parameters(spec):
    """Parameters of a registered model, built on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        model = spec.builder(num_classes=spec.weights.num_classes)
    return sum(parameter.numel() for parameter in model.parameters())


def meta_builder(name):
    """The builder of registered model `name` (what checkpoint filters are given as `build`)."""
    return get_spec(name).builder


def _build_for(spec, state_dict):
    """The model with the head size `state_dict` has (a fine-tuned checkpoint has its own)."""
    model = spec.builder(num_classes=spec.weights.num_classes)
    match_head(model, state_dict, spec.weights.num_classes)
    return model


def load_weights(model, state_dict, *, source):
    """Load `state_dict` strictly (assigning its tensors to a model built on the meta device),
    turning key or shape mismatches into one clear error: the one completeness check.

    BatchNorm `num_batches_tracked` counters are reconciled first: PyTorch ports of Caffe2 and
    TensorFlow models save them or not, and they only matter for momentum=None, used nowhere here.
    """
    own = model.state_dict()
    state_dict = _reconcile_counters(state_dict, own)
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [f"{key} {tuple(state_dict[key].shape)} vs model {tuple(own[key].shape)}"
             for key in own if key in state_dict and state_dict[key].shape != own[key].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}" + (" ..." if len(keys) > 3 else ""))
        raise Ig65mError(f"weights in {source} do not fit this model ({'; '.join(parts)})")
    state_dict = _match_dtypes(state_dict, own, source)
    model.load_state_dict(state_dict, assign=any(p.is_meta for p in model.parameters()))


def _match_dtypes(state_dict, own, source):
    """The tensors in the model's own dtypes: a state_dict saved in float64 or half precision is
    loaded as float32. (`assign=True` would otherwise install its tensors as they are, and the
    first clip would fail deep in the model with "expected scalar type Float but found Double".)
    A float where the model keeps integers, or the reverse, is not a cast but a wrong file, and
    NaN or infinite values are refused."""
    matched = {}
    for key, value in state_dict.items():
        want = own[key].dtype
        if value.dtype != want:
            if value.is_floating_point() != want.is_floating_point:
                raise Ig65mError(f"weights in {source} do not fit this model ({key} is "
                                 f"{value.dtype}, the model's is {want})")
            value = value.to(want)
        if value.is_floating_point() and not torch.isfinite(value).all():
            # a damaged or diverged checkpoint: every feature it gives would be NaN
            raise Ig65mError(f"weights in {source} hold NaN or infinite values ({key})")
        matched[key] = value
    return matched


_COUNTER = "num_batches_tracked"


def _reconcile_counters(state_dict, own):
    """Drop counters the model lacks; give the model's counters the file lacks a 0."""
    state = {key: value for key, value in state_dict.items()
             if not key.endswith(_COUNTER) or key in own}
    for key in own:
        if key.endswith(_COUNTER) and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    return state
