"""Fitting a registry model to new classes: head replacement, block freezing, weight loading.

Conventions a model family follows to be fine-tunable:

- `model.reset_classifier(num_classes)` replaces the classification head by a freshly initialised
  one with `num_classes` outputs (timm's name); `R2Plus1D` replaces `fc`. A family whose class
  lacks the method has a hook in `RESET_CLASSIFIER` here instead (MoViNet: the last 1x1x1 conv).
- `FEATURE_BLOCKS[family](model)` lists the feature blocks in forward order; `--freeze K` freezes
  the first K (their parameters stop learning and their BatchNorm statistics stay fixed). A new
  family adds one entry here; a model may instead define `feature_blocks()` itself.
"""

import functools

from ig65m.errors import Ig65mError
from ig65m.models.registry import load_weights
from ig65m.weights import download, load_state_dict, sha256_file


def _r2plus1d_blocks(model):
    """The stem, then every residual block of layer1..layer4 (9 for R(2+1)D-18, 17 for -34)."""
    return [model.stem] + [block for layer in (model.layer1, model.layer2, model.layer3,
                                               model.layer4) for block in layer]


def _movinet_blocks(model):
    """conv1, every bottleneck (b0_l0 ...), then conv7: 17 blocks for A0."""
    return [model.conv1, *model.blocks, model.conv7]


FEATURE_BLOCKS = {"r2plus1d": _r2plus1d_blocks, "movinet": _movinet_blocks}


def _movinet_reset(model, num_classes):
    """Replace the 1x1x1 conv of the classifier's last unit (hidden -> classes, with bias)."""
    unit = model.classifier[-1].conv_1
    old = unit[0]
    unit[0] = type(old)(old.in_channels, num_classes, old.kernel_size, bias=True)
    model.num_classes = num_classes


RESET_CLASSIFIER = {"movinet": _movinet_reset}


def feature_blocks(model, family):
    """The model's feature blocks in forward order (see the module docstring)."""
    if hasattr(model, "feature_blocks"):
        return list(model.feature_blocks())
    if family not in FEATURE_BLOCKS:
        raise Ig65mError(f"--freeze is not supported for the {family} family yet")
    return FEATURE_BLOCKS[family](model)


def reset_classifier(model, family, num_classes):
    """Replace the head by a new one with `num_classes` outputs -> state_dict keys of the old and
    the new head (whatever names the family uses: keys whose tensors changed identity)."""
    if hasattr(model, "reset_classifier"):
        reset = model.reset_classifier
    elif family in RESET_CLASSIFIER:
        reset = functools.partial(RESET_CLASSIFIER[family], model)
    else:
        raise Ig65mError(f"{type(model).__name__} cannot be fine-tuned: it has no "
                         f"reset_classifier(num_classes)")
    before = model.state_dict(keep_vars=True)
    reset(num_classes)
    after = model.state_dict(keep_vars=True)
    return {key for key in set(before) | set(after)
            if key not in before or key not in after or before[key] is not after[key]}


def freeze(model, family, count):
    """Freeze the first `count` feature blocks -> the frozen modules (keep them in eval mode with
    `hold_frozen` after every `model.train()`)."""
    if count == 0:
        return []
    blocks = feature_blocks(model, family)
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


def weights_path(spec, weights, *, progress=True):
    """--weights as a local path: None/"pretrained" downloads the spec's file; "random" -> None."""
    if weights == "random":
        return None
    if weights in (None, "pretrained"):
        return download(spec.weights.url, spec.weights.sha256_prefix, progress=progress)
    return weights


def load_for_finetune(spec, weights, num_classes, *, progress=True):
    """Build `spec`'s model with `weights` (whatever head they carry) and a new `num_classes`
    head -> (model, weights sha256 or None). Everything but the head must fit exactly."""
    model = spec.builder(num_classes=spec.weights.num_classes)
    head = reset_classifier(model, spec.family, num_classes)
    path = weights_path(spec, weights, progress=progress)
    if path is None:
        return model, None
    state = {key: value for key, value in load_state_dict(path).items() if key not in head}
    own = model.state_dict()
    state.update({key: own[key] for key in head if key in own})
    load_weights(model, state, source=path)
    return model, sha256_file(path)


def load_for_eval(spec, weights, num_classes, *, progress=True):
    """Build `spec`'s model with a `num_classes` head and load `weights` strictly (a checkpoint
    of another model or another class count is refused) -> (model in eval mode, sha256 or None)."""
    model = spec.builder(num_classes=spec.weights.num_classes)
    if num_classes != spec.weights.num_classes:
        reset_classifier(model, spec.family, num_classes)
    path = weights_path(spec, weights, progress=progress)
    if path is None:
        return model.eval(), None
    load_weights(model, load_state_dict(path), source=path)
    return model.eval(), sha256_file(path)


def match_head(model, family, state_dict, num_classes):
    """Give `model` (built with `num_classes` outputs) the head size of `state_dict`, e.g. a
    finetune best.pth, so it loads strictly -> the class count of `state_dict`'s head."""
    head = sorted(reset_classifier(model, family, num_classes))  # names the head's keys
    weights = [key for key in head if key in state_dict and state_dict[key].ndim >= 2]
    if not weights:
        return num_classes
    rows = int(state_dict[weights[0]].shape[0])
    if rows != num_classes:
        reset_classifier(model, family, rows)
    return rows


def state_dict_cpu(model):
    """A plain state_dict on the CPU, as `ig65m.weights.load_state_dict` reads it."""
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


def trainable_parameters(model):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise Ig65mError("every parameter is frozen: lower --freeze")
    return params
