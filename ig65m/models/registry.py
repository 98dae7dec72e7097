"""Model registry: `register_model`, `list_models`, `get_spec` (timm style). Torch-free: the
registered models are data (`ig65m.models.table`); a builder's module is imported when it is
first called. Loading weights into a model is `ig65m.models.loading.get_model`.

Every registered builder returns an `nn.Module` with this interface, whatever its family:

- `forward_features(clips)`: clips (N, C, T, H, W) float32 -> feature map (N, D, T', H', W')
- `forward_head(feature_map)`: that map -> logits (N, num_classes), pooling as the family's head does
- `forward(clips)`: `forward_head(forward_features(clips))`

Pretrained settings (URL and pin, file format and checkpoint filters, classes, preprocessing,
labels) are data in the spec's `Weights` row, not code paths.
"""

from dataclasses import dataclass
from typing import Callable

from ig65m.errors import Ig65mError
from ig65m.models.table import ENTRIES
from ig65m.weights import Weights


FAMILY_NAMES = {"r2plus1d": "R(2+1)D", "i3d_resnet": "I3D ResNet-50",
                "i3d_inception": "I3D Inception", "movinet": "MoViNet"}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder, pretrained weights row and feature dimension.

    `parameters`: the parameter count with the released head (data, so listing needs no torch);
    None for models registered at run time."""

    name: str
    family: str
    builder: Callable
    weights: Weights
    feature_dim: int
    description: str = ""
    parameters: int | None = None


_MODELS = {entry.name: ModelSpec(entry.name, entry.family, entry.builder, entry.weights,
                                 entry.feature_dim, entry.description, entry.parameters)
           for entry in ENTRIES}


def register_model(name, *, family, weights, feature_dim, description=""):
    """Decorator registering `builder(*, num_classes)` under `name` (models beyond the table)."""

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


def has_foreign_release(spec):
    """Whether `spec`'s authors published weights in a format `convert` reads (a checkpoint
    filter for something other than our own .pth)."""
    return any(file_format != "pth" for file_format in spec.weights.filters)


def pin_text(weights):
    """How the download of `weights` is checked, in words for `ig65m models`."""
    pin = weights.integrity
    if pin is None:
        return "none (no published hash: not content-checked)"
    if not pin.checks_content:
        return f"size {pin.value} only (no published hash: not content-checked)"
    return pin.describe()


def model_rows():
    """One dict per registered model, sorted by name (the columns of `ig65m models`)."""
    rows = []
    for spec in list_models():
        row = spec.weights
        rows.append({"name": spec.name, "family": spec.family, "classes": row.num_classes,
                     "clip_frames": row.clip_frames, "frame_stride": row.frame_stride,
                     "input": f"{row.clip_frames}x{row.crop_size}x{row.crop_size}",
                     "parameters": spec.parameters,
                     "feature_dim": spec.feature_dim, "labels": row.labels, "weights": row.url,
                     "pin": pin_text(row), "format": row.file_format,
                     "description": spec.description})
    return rows

