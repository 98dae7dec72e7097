"""Classification heads of registry models: replace one, or size it from a checkpoint.

Every family's model has `reset_classifier(num_classes)` (timm's name), which swaps the head for a
freshly initialised one, and `feature_blocks()`, its feature blocks in forward order.
"""

from ig65m.errors import Ig65mError


def reset_classifier(model, num_classes):
    """Replace the head by a new one with `num_classes` outputs -> state_dict keys of the old and
    the new head (whatever names the family uses: keys whose tensors changed identity)."""
    if not hasattr(model, "reset_classifier"):
        raise Ig65mError(f"{type(model).__name__} has no reset_classifier(num_classes)")
    before = model.state_dict(keep_vars=True)
    model.reset_classifier(num_classes)
    after = model.state_dict(keep_vars=True)
    return {key for key in set(before) | set(after)
            if key not in before or key not in after or before[key] is not after[key]}


def match_head(model, state_dict, num_classes):
    """Give `model` (built with `num_classes` outputs) the head size of `state_dict`, e.g. a
    finetune best.pth, so it loads strictly -> the class count of `state_dict`'s head."""
    head = sorted(reset_classifier(model, num_classes))  # names the head's keys
    weights = [key for key in head if key in state_dict and state_dict[key].ndim >= 2]
    if not weights:
        return num_classes
    rows = int(state_dict[weights[0]].shape[0])
    if rows != num_classes:
        reset_classifier(model, rows)
    return rows
