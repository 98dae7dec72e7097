"""Pictures of training and evaluation: loss/accuracy curves and a confusion matrix (PNG).

Drawn with matplotlib's object API on an Agg canvas (no display, no global pyplot state) and
written atomically.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ig65m.fileio import atomic_path


def _save(figure, path):
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def plot_history(history, path):
    """history: the metrics rows of `finetune` -> loss (train, val) and accuracy curves by epoch."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), layout="tight")
    loss, accuracy = figure.subplots(1, 2)
    loss.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    loss.plot(epochs, [row["val_loss"] for row in history], "o-", label="val")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    accuracy.plot(epochs, [row["train_top1"] for row in history], "o-", label="train top-1")
    accuracy.plot(epochs, [row["val_top1"] for row in history], "o-", label="val top-1")
    accuracy.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for axes in (loss, accuracy):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend()
        axes.grid(alpha=0.3)
    _save(figure, path)


def plot_confusion(matrix, labels, path, *, title="confusion matrix"):
    """(C, C) counts, rows true, columns predicted -> a row-normalised heat map with counts
    written in the cells while they stay legible (up to 30 classes)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.4 * len(labels), 30)
    figure = Figure(figsize=(size, size), layout="tight")
    axes = figure.subplots()
    image = axes.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    if len(labels) <= 30:
        axes.set_xticks(range(len(labels)), labels, rotation=90)
        axes.set_yticks(range(len(labels)), labels)
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                axes.text(col, row, int(count), ha="center", va="center",
                          color="white" if count / rows[row, 0] > 0.5 else "black")
    axes.set(xlabel="predicted", ylabel="true", title=title)
    _save(figure, path)
