"""Fitting a registry model to new classes: head replacement, block freezing, weight loading.

Conventions every model family follows to be fine-tunable (see ig65m.models.heads):

- `model.reset_classifier(num_classes)` replaces the classification head by a freshly initialised
  one with `num_classes` outputs (timm's name); `R2Plus1D` replaces `fc`.
- `model.feature_blocks()` lists the feature blocks in forward order; `--freeze K` freezes the
  first K (their parameters stop learning and their BatchNorm statistics stay fixed).
"""

from ig65m.errors import Ig65mError
from ig65m.models.heads import match_head, reset_classifier  # noqa: F401  (re-exported)
from ig65m.models.loading import load_weights, read_state_dict, weights_file


def feature_blocks(model):
    """The model's feature blocks in forward order (its `feature_blocks()`)."""
    if not hasattr(model, "feature_blocks"):
        raise Ig65mError(f"--freeze is not supported for {type(model).__name__}")
    return list(model.feature_blocks())


def freeze(model, count):
    """Freeze the first `count` feature blocks -> the frozen modules (keep them in eval mode with
    `hold_frozen` after every `model.train()`)."""
    if count == 0:
        return []
    blocks = feature_blocks(model)
    if not 0 < count <= len(blocks):
        raise Ig65mError(f"--freeze {count}: the model has {len(blocks)} feature blocks")
    for block in blocks[:count]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    return blocks[:count]


def hold_frozen(frozen):
    """Put frozen blocks back in eval mode, so BatchNorm keeps its running statistics."""
    for block in frozen:
        block.eval()


def load_for_finetune(spec, weights, num_classes, *, progress=True):
    """Build `spec`'s model with `weights` (whatever head they carry) and a new `num_classes`
    head -> (model, weights sha256 or None). Everything but the head must fit exactly."""
    model = spec.builder(num_classes=spec.weights.num_classes)
    head = reset_classifier(model, num_classes)
    local = weights_file(spec, weights, progress=progress)
    if local is None:
        return model, None
    state = {key: value for key, value in read_state_dict(spec, local).items() if key not in head}
    own = model.state_dict()
    state.update({key: own[key] for key in head if key in own})
    load_weights(model, state, source=local.path)
    return model, local.sha256


def load_for_eval(spec, weights, num_classes, *, progress=True):
    """Build `spec`'s model with a `num_classes` head and load `weights` strictly (a checkpoint
    of another model or another class count is refused) -> (model in eval mode, sha256 or None)."""
    model = spec.builder(num_classes=spec.weights.num_classes)
    if num_classes != spec.weights.num_classes:
        reset_classifier(model, num_classes)
    local = weights_file(spec, weights, progress=progress)
    if local is None:
        return model.eval(), None
    load_weights(model, read_state_dict(spec, local), source=local.path)
    return model.eval(), local.sha256


def state_dict_cpu(model):
    """A plain state_dict on the CPU, as `ig65m.weights.load_state_dict` reads it."""
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


def trainable_parameters(model):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise Ig65mError("every parameter is frozen: lower --freeze")
    return params
