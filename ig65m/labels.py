"""Class names of the datasets the models were trained on, one per line, in the heads' order.

A model's `Weights.labels` names its list ("kinetics400", "kinetics600"); the list is downloaded
once into the cache beside the weights (`$IG65M_HOME/labels/NAME/`) with the same code, and
`--labels FILE` replaces it with any local file of one name per line.
"""

import sys
from pathlib import Path

from ig65m.errors import Ig65mError
from ig65m.weights import cache_dir, download

# The files the original projects ship: DeepMind kinetics-i3d's label map (Kinetics-400, the
# order of every Kinetics-400 head here) and the TensorFlow MoViNet release's Kinetics-600 list.
LABEL_URLS = {
    "kinetics400": "https://raw.githubusercontent.com/deepmind/kinetics-i3d/master/data/"
                   "label_map.txt",
    "kinetics600": "https://raw.githubusercontent.com/tensorflow/models/master/official/projects/"
                   "movinet/files/kinetics_600_labels.txt",
}


def read_labels(path):
    """Names from a text file, one per line (blank lines skipped) -> list of str."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise Ig65mError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise Ig65mError(f"cannot read labels file {path}: {err}") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise Ig65mError(f"labels file {path} holds no names")
    return names


def dataset_labels(name, *, progress=True):
    """The list `name` ("kinetics400", "kinetics600"), downloaded into the cache once."""
    if name not in LABEL_URLS:
        raise Ig65mError(f"no label list named {name!r}; known: {', '.join(sorted(LABEL_URLS))}")
    url = LABEL_URLS[name]
    try:
        path = download(url, None, progress=progress, folder=cache_dir() / "labels" / name)
    except Ig65mError:
        raise Ig65mError(f"cannot download the {name} labels from {url}; pass --labels FILE "
                         f"(one class name per line)") from None
    return read_labels(path)


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
        print(f"note: no label list is published for this model's {weights.num_classes} classes; "
              f"printing class indices (pass --labels FILE to name them)", file=sys.stderr)
        return [f"class_{i}" for i in range(weights.num_classes)]
    if len(names) != weights.num_classes:
        source = labels_file or weights.labels
        raise Ig65mError(f"{source} has {len(names)} labels, but the model has "
                         f"{weights.num_classes} classes")
    return names
