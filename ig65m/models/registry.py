"""Model registry: `register_model`, `list_models`, `get_spec`, `get_model` (timm style).

Every registered builder returns an `nn.Module` with this interface, whatever its family:

- `forward_features(clips)`: clips (N, C, T, H, W) float32 -> feature map (N, D, T', H', W')
- `forward_head(feature_map)`: that map -> logits (N, num_classes), pooling as the family's head does
- `forward(clips)`: `forward_head(forward_features(clips))`

Pretrained settings (URL, classes, clip frames, crop, mean/std, labels) are data in the spec's
`Weights` row, not code paths.
"""

import hashlib
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ig65m.errors import Ig65mError
from ig65m.models.heads import match_head
from ig65m.weights import Weights, download, sha256_file

_MODELS = {}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder, pretrained weights row and feature dimension."""

    name: str
    family: str
    builder: Callable
    weights: Weights
    feature_dim: int
    description: str = ""


def register_model(name, *, family, weights, feature_dim, description=""):
    """Decorator registering `builder(*, num_classes)` under `name`."""

    def decorate(builder):
        if name in _MODELS:
            raise ValueError(f"model {name} registered twice")
        _MODELS[name] = ModelSpec(name, family, builder, weights, feature_dim,
                                  description or (builder.__doc__ or "").strip().split("\n")[0])
        return builder

    return decorate


def list_models():
    """Every registered spec, sorted by name."""
    return [_MODELS[name] for name in sorted(_MODELS)]


def get_spec(name):
    if name not in _MODELS:
        raise Ig65mError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def get_model(name, weights=None, *, progress=True):
    """Build model `name` and load its weights -> (model in eval mode, weights sha256 or None).

    `weights`: None or "pretrained" downloads the spec's release file into the cache (checked
    against its sha256 prefix); a path loads that local file (`.pth`, or a released Caffe2 /
    TensorFlow format, see ig65m.convert.foreign); "random" keeps the random initialisation (for
    pipeline checks only: a warning says the features mean nothing); "random:SEED" draws that
    initialisation from SEED, so every process and every run gets the same weights, and reports
    the sha256 of their content.
    """
    spec = get_spec(name)
    seed = random_seed(weights)
    if seed is not None or weights == "random":
        print(f"warning: {name} has random weights; its features mean nothing", file=sys.stderr)
        return _random_model(spec, seed)
    path = weights_file(spec, weights, progress=progress)
    state_dict = read_state_dict(spec, path)
    with torch.device("meta"):  # no time spent on a random initialisation about to be replaced
        model = _build_for(spec, state_dict)
    load_weights(model, state_dict, source=path)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = _build_for(spec, state_dict)  # the model has non-persistent buffers
        load_weights(model, state_dict, source=path)
    return model.eval(), sha256_file(path)


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
    """`--weights` as a local file: None/"pretrained" -> the release, downloaded into the cache;
    "random" -> None; anything else is a path."""
    if weights == "random" or random_seed(weights) is not None:
        return None
    if weights in (None, "pretrained"):
        return download(spec.weights.url, spec.weights.sha256_prefix, progress=progress)
    return Path(weights)


def read_state_dict(spec, path):
    """The weights file at `path` -> state_dict for `spec`, whatever released format it is in."""
    from ig65m.convert.foreign import read_weights  # converters import the model modules

    return read_weights(spec, path)


def _build_for(spec, state_dict):
    """The model with the head size `state_dict` has (a fine-tuned checkpoint has its own)."""
    model = spec.builder(num_classes=spec.weights.num_classes)
    match_head(model, state_dict, spec.weights.num_classes)
    return model


def load_weights(model, state_dict, *, source):
    """Load `state_dict` strictly (assigning its tensors to a model built on the meta device),
    turning key or shape mismatches into one clear error."""
    own = model.state_dict()
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
    model.load_state_dict(state_dict, assign=any(p.is_meta for p in model.parameters()))
