"""Class names of the datasets the models were trained on, one per line, in the heads' order.

A model's `Weights.labels` names its list ("kinetics400", "kinetics600"); the lists ship inside the
package (`ig65m/data/labels/NAME.txt`: DeepMind kinetics-i3d's Kinetics-400 label map, the order
of every Kinetics-400 head here, and the TensorFlow MoViNet release's Kinetics-600 list), so no
network is needed. `--labels FILE` replaces it with any local file of one name per line.
"""

import logging
from pathlib import Path

from ig65m.errors import Ig65mError

log = logging.getLogger(__name__)
LABELS_DIR = Path(__file__).parent / "data" / "labels"


def read_labels(path):
    """Names from a text file, one per line (blank lines skipped) -> list of str. A UTF-8
    byte-order mark (Windows editors) is not part of the first name, as in dataset CSVs."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise Ig65mError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise Ig65mError(f"cannot read labels file {path}: {err}") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise Ig65mError(f"labels file {path} holds no names")
    return names


def dataset_labels(name, *, progress=True):
    """The shipped list `name` ("kinetics400", "kinetics600"). `progress` is unused (kept for
    callers): nothing is downloaded."""
    known = sorted(path.stem for path in LABELS_DIR.glob("*.txt"))
    if name not in known:
        raise Ig65mError(f"no label list named {name!r}; known: {', '.join(known)}")
    return read_labels(LABELS_DIR / f"{name}.txt")


def labels_for(weights, labels_file=None, *, progress=True):
    """Names for the `num_classes` outputs of a registry `Weights` row.

    `labels_file` overrides the row's list. Models without a published list (the IG-65M
    hashtag heads) get "class_<i>" names, with a note on stderr.
    """
    if labels_file is not None:
        names = read_labels(labels_file)
    elif weights.labels:
        names = dataset_labels(weights.labels, progress=progress)
    else:
        log.info("no label list is published for this model's %d classes; printing class "
                 "indices (pass --labels FILE to name them)", weights.num_classes)
        return [f"class_{i}" for i in range(weights.num_classes)]
    if len(names) != weights.num_classes:
        source = labels_file or weights.labels
        raise Ig65mError(f"{source} has {len(names)} labels, but the model has "
                         f"{weights.num_classes} classes")
    return names
