"""Classification metrics from per-video scores: top-k, mean per-class accuracy, confusion matrix.

`scores` is (N, K) (probabilities or logits: only their order matters), `targets` (N,) class
indices. Ties in the scores rank the lower class index first, so results are reproducible.
"""

import numpy as np


def ranked(scores):
    """(N, K) scores -> (N, K) class indices, best first (stable: ties keep the lower index)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")


def topk_accuracy(scores, targets, k):
    """Fraction of rows whose target is among the k best classes (k capped at K)."""
    top = ranked(scores)[:, :k]
    return float(np.mean(np.any(top == np.asarray(targets)[:, None], axis=1)))


def confusion_matrix(predictions, targets, num_classes):
    """int64 (K, K): row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets), np.asarray(predictions)), 1)
    return matrix


def per_class_accuracy(matrix):
    """(K,) recall of each class; NaN for classes without examples."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def mean_class_accuracy(matrix):
    """The mean of the per-class accuracies over the classes that have examples."""
    return float(np.nanmean(per_class_accuracy(matrix)))


def summarize(scores, targets, labels):
    """Every figure of a report -> dict: top1, top5 (k capped at K), mean_class_accuracy, videos,
    per_class [{label, videos, correct, accuracy}] and the confusion matrix restricted to the
    classes that occur as targets or predictions (`confusion_labels`, rows true, columns predicted).
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    predictions = ranked(scores)[:, 0]
    matrix = confusion_matrix(predictions, targets, len(labels))
    accuracy = per_class_accuracy(matrix)
    present = sorted(set(targets.tolist()) | set(predictions.tolist()))
    return {
        "videos": int(len(targets)),
        "top1": topk_accuracy(scores, targets, 1),
        "top5": topk_accuracy(scores, targets, 5),
        "mean_class_accuracy": mean_class_accuracy(matrix),
        "per_class": [{"label": labels[c], "videos": int(matrix[c].sum()),
                       "correct": int(matrix[c, c]), "accuracy": float(accuracy[c])}
                      for c in sorted(set(targets.tolist()))],
        "confusion_labels": [labels[c] for c in present],
        "confusion_matrix": matrix[np.ix_(present, present)].tolist(),
    }
