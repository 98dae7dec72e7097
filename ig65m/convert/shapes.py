"""What converters share: a model's names and shapes (built on the meta device from the builder
they are handed: converters never import a model module), and the one completeness check of a
foreign checkpoint against them.
"""

import numpy as np


def on_meta(build, num_classes):
    """`build(num_classes=...)` on the meta device: names and shapes, no memory, no init time."""
    import torch

    with torch.device("meta"):
        return build(num_classes=num_classes)


def fit_problems(found, names, expected, *, kind, layout=None, ignore=None, note=""):
    """One line per missing, wrongly shaped, non-float or extra entry of a foreign checkpoint.

    `found` {name: array} (Caffe2 blobs, TF variables); `names` {state_dict key: name in found};
    `expected` {key: tensor with the model's shape}; `kind` "blob" or "variable"; `layout(key,
    array)` maps an entry to torch's layout before shapes are compared (TF kernels); `ignore(name)`
    sets entries aside (training state); `note` follows a shape mismatch.
    """
    problems = []
    for key, name in names.items():
        want = tuple(expected[key].shape)
        if name not in found:
            problems.append(f"missing {kind} {name} (for {key}, shape {want})")
            continue
        value = found[name]
        got = tuple(np.shape(layout(key, np.empty(np.shape(value), np.float32)) if layout else value))
        if got != want:
            problems.append(f"{kind} {name} has shape {tuple(np.shape(value))}, {key} needs "
                            f"{want}{note}")
        elif np.asarray(value).dtype.kind != "f":
            problems.append(f"{kind} {name} is {np.asarray(value).dtype}, {key} needs floats")
    used = set(names.values())
    problems += [f"extra {kind} {name} (shape {tuple(np.shape(found[name]))}) fits no tensor"
                 for name in sorted(found) if name not in used and not (ignore and ignore(name))]
    return problems
