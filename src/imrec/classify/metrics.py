"""Classification metrics from logits: accuracy, per-class scores, calibration, mistakes.

Everything here takes the raw ``(N, K)`` logits and ``(N,)`` integer labels that an
evaluation pass collects, and returns plain Python numbers and lists, so the results go
straight into ``report.json``. The work is a handful of vectorised numpy/torch operations on
the confusion matrix and the softmax confidences; no scikit-learn on this path.

Conventions (the same as scikit-learn with ``zero_division=0``):

* A class that is never predicted has precision 0 (0/0 counts as 0, without a warning).
* A class with no samples in ``labels`` has recall 0 and F1 0 in ``per_class``, but it is
  left out of the macro averages: a split that lacks a class cannot measure it, and the
  predictions wrongly given to it already lower the recall of the true classes. This
  equals scikit-learn's ``average="macro"`` with ``labels`` set to the classes present.
"""

from __future__ import annotations

import numpy as np
import torch

DIGITS = 6  # rounding of every float in the results: enough for any table, stable in JSON


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[str], *, ece_bins: int = 15
) -> dict:
    """Score a classifier's logits against the true labels.

    Args:
        logits: ``(N, K)`` float scores, one row per sample (softmax is applied here).
        labels: ``(N,)`` integer class indices in ``[0, K)``.
        classes: the ``K`` class names, in index order.
        ece_bins: number of equal-width confidence bins for the expected calibration error.

    Returns:
        A JSON-serialisable dict with ``n``, ``accuracy``, ``top5`` (top-``top_k`` accuracy,
        ``top_k = min(5, K)``), ``macro_f1``, ``macro_precision``, ``macro_recall``,
        ``weighted_f1``, ``ece`` (of the max softmax probability), ``nll`` (mean cross-entropy,
        nats), ``per_class`` (``{name: {precision, recall, f1, support, predicted}}``:
        ``predicted`` counts the images given the class) and ``confusion`` (``K x K`` counts,
        rows = true class, columns = predicted class; above ``DENSE_CONFUSION`` classes
        ``confused_pairs`` instead, the ``TOP_PAIRS`` most frequent ``[true, predicted,
        count]``). See the module
        docstring for how classes without predictions or without samples are counted.

    Raises:
        ValueError: on empty input, fewer than two classes, mismatched shapes, labels out of
            range, non-finite logits, or class names that are missing or repeated.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
        >>> m = classification_metrics(logits, torch.tensor([0, 1, 1]), ["cat", "dog"])
        >>> m["accuracy"], m["confusion"]
        (0.666667, [[1, 0], [1, 1]])
    """
    log_probs, labels = _log_softmax(logits, labels)
    n, k = log_probs.shape
    if len(classes) != k or len(set(classes)) != k:
        raise ValueError(f"need {k} distinct class names, got {len(classes)}: {classes!r}")

    confusion = _confusion(log_probs, labels)
    precision, recall, f1, support = _per_class_scores(confusion)
    predicted = confusion.sum(axis=0)
    present = support > 0  # macro averages run over the classes this split contains
    top_k = min(5, k)
    conf, correct = _confidence(log_probs, labels)
    nll = -log_probs.gather(1, labels[:, None]).double().mean()
    return {
        "n": n,
        "accuracy": _round(np.trace(confusion) / n),
        "top5": _round(_top_k_accuracy(log_probs, labels, top_k)),
        "top_k": top_k,
        "macro_f1": _round(f1[present].mean()),
        "macro_precision": _round(precision[present].mean()),
        "macro_recall": _round(recall[present].mean()),
        "weighted_f1": _round((f1 * support).sum() / n),
        "ece": _round(_ece(*_bin_stats(conf, correct, ece_bins), n)),
        "nll": _round(nll),
        "per_class": _per_class_report(classes, precision, recall, f1, support, predicted),
        **_confusion_entry(confusion),
    }


DENSE_CONFUSION = 100  # up to this many classes the report keeps the whole matrix
TOP_PAIRS = 200  # beyond it, the most frequent (true, predicted) mistakes


def _confusion_entry(confusion: np.ndarray) -> dict:
    """``{"confusion": K x K}`` for a readable number of classes, else ``{"confused_pairs":
    [[true, predicted, count], ...]}``: the most frequent mistakes (a 3,755-class matrix would
    be 14 M numbers no one reads).

    Example:
        >>> _confusion_entry(np.eye(101, dtype=int) + np.eye(101, k=1, dtype=int) * 3)["confused_pairs"][:2]
        [[0, 1, 3], [1, 2, 3]]
    """
    if len(confusion) <= DENSE_CONFUSION:
        return {"confusion": confusion.tolist()}
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    order = np.lexsort((p, t, -off[t, p]))[:TOP_PAIRS]
    return {"confused_pairs": [[int(t[i]), int(p[i]), int(off[t[i], p[i]])] for i in order]}


def reliability(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict:
    """Per-bin confidence and accuracy of the max softmax probability, for a reliability diagram.

    Bin ``i`` holds the samples whose confidence lies in ``(edges[i], edges[i + 1]]``; the
    first bin also takes a confidence of exactly 0. An empty bin reports confidence and
    accuracy 0.0 with count 0 (plain numbers keep the lists plottable; mask by ``count``).

    Args:
        logits: ``(N, K)`` float scores.
        labels: ``(N,)`` integer class indices.
        bins: number of equal-width bins on ``[0, 1]``.

    Returns:
        ``{"bins", "edges", "confidence", "accuracy", "count", "ece"}``; the lists have one
        entry per bin (``edges`` has ``bins + 1``), and ``ece`` is the count-weighted mean gap.

    Example:
        >>> r = reliability(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0]), bins=2)
        >>> r["count"], r["accuracy"]
        ([0, 2], [0.0, 0.5])
    """
    log_probs, labels = _log_softmax(logits, labels)
    count, conf_sum, correct_sum = _bin_stats(*_confidence(log_probs, labels), bins)
    seen = np.maximum(count, 1)  # empty bins divide 0 by 1 and report 0.0
    return {
        "bins": bins,
        "edges": [_round(e) for e in np.linspace(0.0, 1.0, bins + 1)],
        "confidence": [_round(c) for c in conf_sum / seen],
        "accuracy": [_round(a) for a in correct_sum / seen],
        "count": count.tolist(),
        "ece": _round(_ece(count, conf_sum, correct_sum, len(labels))),
    }


def worst_mistakes(logits: torch.Tensor, labels: torch.Tensor, n: int = 32) -> list[int]:
    """Indices of the misclassified samples the model was surest about, most confident first.

    These are the samples most worth looking at: wrong labels in the data, ambiguous
    images, or systematic confusions. Ties keep the original sample order.

    Args:
        logits: ``(N, K)`` float scores.
        labels: ``(N,)`` integer class indices.
        n: at most this many indices are returned.

    Returns:
        Sample indices (plain ints), ordered by the predicted class's probability, highest first.

    Example:
        >>> logits = torch.tensor([[0.0, 1.0], [0.0, 4.0], [2.0, 0.0]])
        >>> worst_mistakes(logits, torch.tensor([0, 0, 0]))
        [1, 0]
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    log_probs, labels = _log_softmax(logits, labels)
    conf, correct = _confidence(log_probs, labels)
    wrong = np.flatnonzero(~correct)
    order = np.argsort(-conf[wrong], kind="stable")  # stable: ties stay in sample order
    return wrong[order[:n]].tolist()


def _log_softmax(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and values, and return float32 CPU log-probabilities and int64 labels."""
    logits = torch.as_tensor(logits).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu()
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise ValueError(
            f"expected logits (N, K) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    n, k = logits.shape
    if n == 0:
        raise ValueError("no samples to score (empty logits)")
    if k < 2:
        raise ValueError(f"need at least 2 classes, got K={k}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}), got range [{labels.min()}, {labels.max()}]")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf (did training diverge?)")
    # float32 is enough for log-softmax and avoids doubling memory on large evaluations
    return torch.log_softmax(logits.float(), dim=1), labels


def _confidence(log_probs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Max softmax probability and whether the argmax is right, per sample."""
    best, preds = log_probs.max(dim=1)
    return best.double().exp().numpy(), (preds == labels).numpy()


def _bin_stats(
    conf: np.ndarray, correct: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, confidence sum and correct count per equal-width bin; bins are (lo, hi]."""
    if bins < 1:
        raise ValueError(f"need at least 1 bin, got {bins}")
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    correct_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=bins)
    return count, conf_sum, correct_sum


def _ece(count: np.ndarray, conf_sum: np.ndarray, correct_sum: np.ndarray, n: int) -> float:
    # sum_b (n_b / N) * |acc_b - conf_b| == sum_b |correct_b - conf_sum_b| / N
    return float(np.abs(correct_sum - conf_sum).sum() / n)


def _confusion(log_probs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``(K, K)`` counts of the argmax predictions, rows = true class, columns = predicted."""
    k = log_probs.shape[1]
    preds = log_probs.argmax(dim=1).numpy()
    return np.bincount(labels.numpy() * k + preds, minlength=k * k).reshape(k, k)


def _top_k_accuracy(log_probs: torch.Tensor, labels: torch.Tensor, top_k: int) -> torch.Tensor:
    """Fraction of samples whose true class is among the ``top_k`` most probable."""
    top = log_probs.topk(top_k, dim=1).indices  # (N, top_k)
    return (top == labels[:, None]).any(dim=1).double().mean()


def _per_class_report(classes: list[str], precision, recall, f1, support, predicted) -> dict:
    """``{name: {precision, recall, f1, support, predicted}}`` in class order, rounded for JSON
    (``predicted``: how many images were given the class)."""
    return {
        name: {
            "precision": _round(precision[i]),
            "recall": _round(recall[i]),
            "f1": _round(f1[i]),
            "support": int(support[i]),
            "predicted": int(predicted[i]),
        }
        for i, name in enumerate(classes)
    }


def _per_class_scores(confusion: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall, F1 and support per class from a (true x predicted) count matrix."""
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall, and 0 when TP is 0
    f1 = _safe_div(2 * tp, predicted + support)
    return precision, recall, f1, support


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, with 0 where den is 0 (the zero_division=0 convention, silently)."""
    out = np.zeros(len(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _round(x) -> float:
    return round(float(x), DIGITS)
