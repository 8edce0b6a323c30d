"""Detection metrics: COCO mAP through pycocotools, and a plain count of hits and misses.

``coco_evaluate`` hands the ground truth and the predictions to the reference implementation
(pycocotools' ``COCOeval``) rather than re-deriving COCO's matching and 101-point
interpolation, so the numbers are the ones papers and leaderboards report. The ground truth is
built in memory, never written to a JSON file, and pycocotools' printing is swallowed.

Conventions:

* Boxes are ``xyxy`` pixels with the pixel-edge convention of ``imrec.data.boxes``; COCO's
  ``xywh`` width is then ``x2 - x1``, which is also what pycocotools' IoU uses.
* Category ids are ``label + 1``, image ids are positions in the ``DetectionSet``, annotation
  ids start at 1 (pycocotools reads an id of 0 as "not matched").
* Every AP that pycocotools reports as -1 (nothing to measure: no ground truth of that class or
  size) becomes ``None``; a class with ground truth and no correct detection has AP 0.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torchvision.ops import box_iou

from imrec.data.boxes import DetectionSet

DIGITS = 6  # rounding of every float in the results, as in engine.metrics

# Keys of the summary, in the order of pycocotools' ``COCOeval.stats`` (its first 9 entries).
STATS_KEYS = (
    "map",
    "map50",
    "map75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
)


# ---- COCO mAP -------------------------------------------------------------------------


def coco_evaluate(gt: DetectionSet, predictions: list[dict], classes: list[str]) -> dict:
    """Score detections against ground truth with pycocotools' COCO box metrics.

    Args:
        gt: the images and their true boxes.
        predictions: one dict per image of ``gt``, in the same order, with ``boxes``
            (``(n, 4)`` xyxy pixels), ``scores`` (``(n,)``) and ``labels`` (``(n,)``, 0-based);
            tensors or arrays.
        classes: the class names; label ``k`` is ``classes[k]``.

    Returns:
        A JSON-serialisable dict: ``map`` (AP at IoU .50:.95), ``map50``, ``map75``,
        ``map_small``, ``map_medium``, ``map_large``, ``mar_1``, ``mar_10``, ``mar_100``
        (None where there is nothing to measure); ``per_class``
        (``{name: {ap, ap50, ap75, gt, detections}}``, AP None for a class without ground
        truth); ``pr`` (``recall``: the 101 recall points, ``precision50``: per class with
        ground truth its precision at IoU .5 at each point, ``all50`` and ``all75``: the mean
        over those classes at IoU .5 and .75); and the counts ``images``, ``gt_boxes``,
        ``pred_boxes``.

    Raises:
        ValueError: no images or classes, one prediction dict too many or too few, or a
            prediction with a bad shape, a non-finite value or a label outside the classes.

    Example:
        >>> from pathlib import Path
        >>> gt = DetectionSet([Path("a.png")], [[[0, 0, 10, 10]]], [[0]], [(20, 20)], [1])
        >>> pred = [{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}]
        >>> coco_evaluate(gt, pred, ["cat"])["map"]
        1.0
    """
    preds = _check_predictions(gt, predictions, classes)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        coco_gt = _coco_ground_truth(gt, classes)
        coco_dt = _coco_detections(coco_gt, preds, classes)
        ev = _cocoeval(coco_gt, coco_dt)
    result = {key: _round(v) for key, v in zip(STATS_KEYS, ev.stats, strict=False)}
    result["per_class"] = _per_class(ev, gt, preds, classes)
    result["pr"] = _pr_curves(ev, classes)
    result["images"] = len(gt)
    result["gt_boxes"] = gt.num_boxes()
    result["pred_boxes"] = sum(len(p["scores"]) for p in preds)
    return result


def _check_predictions(gt: DetectionSet, predictions: list[dict], classes: list[str]) -> list:
    """Predictions as numpy arrays, ``{"boxes": (n, 4), "scores": (n,), "labels": (n,)}``."""
    if len(gt) == 0 or not classes:
        raise ValueError(f"need at least one image and one class, got {len(gt)} and {classes!r}")
    if len(predictions) != len(gt):
        raise ValueError(f"{len(predictions)} prediction dicts for {len(gt)} images")
    preds = [_prediction_arrays(p, i) for i, p in enumerate(predictions)]
    for i, p in enumerate(preds):
        bad = (p["labels"] < 0) | (p["labels"] >= len(classes))
        if bad.any():
            raise ValueError(
                f"predictions[{i}]: label {int(p['labels'][bad][0])} is not one of the "
                f"{len(classes)} classes"
            )
    return preds


def _prediction_arrays(pred: dict, i: int) -> dict:
    """One prediction dict as float64/int64 numpy arrays, checked for shape and finiteness."""
    missing = {"boxes", "scores", "labels"} - set(pred)
    if missing:
        raise ValueError(f"predictions[{i}] lacks {sorted(missing)}")
    boxes = _numpy(pred["boxes"], np.float64).reshape(-1, 4)  # (n, 4)
    scores = _numpy(pred["scores"], np.float64).reshape(-1)  # (n,)
    labels = _numpy(pred["labels"], np.int64).reshape(-1)  # (n,)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"predictions[{i}]: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
        )
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"predictions[{i}]: boxes and scores must be finite numbers")
    return {"boxes": boxes, "scores": scores, "labels": labels}


def _numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    """(n, 4) xyxy -> COCO's [x, y, width, height] as plain floats."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()


def _coco_ground_truth(gt: DetectionSet, classes: list[str]):
    """A pycocotools ``COCO`` holding ``gt``, built in memory."""
    images = [{"id": i, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(gt.sizes)]
    annotations = []
    for i, (boxes, labels) in enumerate(zip(gt.boxes, gt.labels, strict=True)):
        for box, label in zip(_xywh(boxes.double().numpy()), labels.tolist(), strict=True):
            annotations.append({
                "id": len(annotations) + 1,  # 0 would read as "unmatched" in COCOeval
                "image_id": i,
                "category_id": label + 1,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            })  # fmt: skip
    return _coco(images, annotations, classes)


def _coco(images: list[dict], annotations: list[dict], classes: list[str]):
    from pycocotools.coco import COCO

    coco = COCO()
    categories = [{"id": k + 1, "name": str(name)} for k, name in enumerate(classes)]
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    coco.createIndex()
    return coco


def _coco_detections(coco_gt, preds: list[dict], classes: list[str]):
    """The predictions as a pycocotools results ``COCO`` over the images of ``coco_gt``."""
    results = [
        {"image_id": i, "category_id": int(label) + 1, "bbox": box, "score": float(score)}
        for i, p in enumerate(preds)
        for box, score, label in zip(_xywh(p["boxes"]), p["scores"], p["labels"], strict=True)
    ]
    if results:
        return coco_gt.loadRes(results)
    # loadRes cannot take an empty list (it looks at results[0]): build the empty one directly,
    # so that every class with ground truth scores AP 0 by the usual path.
    return _coco(coco_gt.dataset["images"], [], classes)


def _cocoeval(coco_gt, coco_dt):
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _round(value) -> float | None:
    """pycocotools' -1 ("nothing to measure") -> None; other values rounded to DIGITS."""
    value = float(value)
    return None if value < 0 else round(value, DIGITS)


def _precision(ev, iou: float | None = None) -> np.ndarray:
    """Precision ``(T or 1, 101, K)`` at area "all" and the largest maxDets (100)."""
    p = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    if iou is None:
        return p
    t = int(np.argmin(np.abs(ev.params.iouThrs - iou)))
    return p[t : t + 1]


def _mean_valid(p: np.ndarray) -> float | None:
    """Mean over the entries > -1 (pycocotools' "undefined"), None when there is none."""
    valid = p[p > -1]
    return round(float(valid.mean()), DIGITS) if valid.size else None


def _per_class(ev, gt: DetectionSet, preds: list[dict], classes: list[str]) -> dict:
    k = len(classes)
    n_gt = np.bincount(torch.cat(gt.labels).numpy(), minlength=k)  # (K,)
    n_dt = np.bincount(np.concatenate([p["labels"] for p in preds]), minlength=k)  # (K,)
    all_iou, at50, at75 = _precision(ev), _precision(ev, 0.5), _precision(ev, 0.75)
    return {
        str(name): {
            "ap": _mean_valid(all_iou[:, :, c]),
            "ap50": _mean_valid(at50[:, :, c]),
            "ap75": _mean_valid(at75[:, :, c]),
            "gt": int(n_gt[c]),
            "detections": int(n_dt[c]),
        }
        for c, name in enumerate(classes)
    }


def _pr_curves(ev, classes: list[str]) -> dict:
    """Precision at each of the 101 recall points, per class (IoU .5) and overall (.5, .75)."""
    at50, at75 = _precision(ev, 0.5)[0], _precision(ev, 0.75)[0]  # (R, K) each
    measured = [c for c in range(len(classes)) if (at50[:, c] > -1).all()]  # classes with GT

    def curve(p: np.ndarray) -> list[float]:
        return [round(float(v), DIGITS) for v in p]

    return {
        "recall": curve(ev.params.recThrs),
        "precision50": {str(classes[c]): curve(at50[:, c]) for c in measured},
        "all50": curve(at50[:, measured].mean(axis=1)) if measured else [],
        "all75": curve(at75[:, measured].mean(axis=1)) if measured else [],
    }


# ---- hits and misses ------------------------------------------------------------------


def match_summary(
    gt: DetectionSet, predictions: list[dict], iou: float = 0.5, score_thresh: float = 0.5
) -> dict:
    """Count correct, wrong and missing boxes at one IoU and one confidence threshold.

    Predictions scoring at least ``score_thresh`` are matched image by image, highest score
    first, each to the still-unmatched true box of the same class that it overlaps most, if
    that IoU is at least ``iou``. A matched prediction is a true positive; an unmatched one
    (wrong place, wrong class, or a duplicate) a false positive; an unmatched true box missed.

    Args:
        gt: the images and their true boxes.
        predictions: one dict per image with ``boxes``, ``scores``, ``labels``, as for
            ``coco_evaluate``.
        iou: the least IoU for a match.
        score_thresh: predictions below this score are ignored.

    Returns:
        ``{"true_positives", "false_positives", "missed", "gt_boxes", "detections", "precision",
        "recall", "iou", "score_thresh"}``; ``detections`` counts the kept predictions,
        precision is None without any and recall None without true boxes.

    Example:
        >>> from pathlib import Path
        >>> gt = DetectionSet([Path("a.png")], [[[0, 0, 10, 10]]], [[0]], [(20, 20)], [1])
        >>> boxes = [[0, 0, 10, 9], [5, 5, 9, 9]]  # IoU 0.9 and 0.16 with the true box
        >>> s = match_summary(gt, [{"boxes": boxes, "scores": [0.9, 0.8], "labels": [0, 0]}])
        >>> s["true_positives"], s["false_positives"], s["missed"]
        (1, 1, 0)
    """
    if len(predictions) != len(gt):
        raise ValueError(f"{len(predictions)} prediction dicts for {len(gt)} images")
    tp = fp = 0
    for i, pred in enumerate(predictions):
        p = _prediction_arrays(pred, i)
        p = {key: v[p["scores"] >= score_thresh] for key, v in p.items()}
        hits = _match_image(gt.boxes[i], gt.labels[i], p, iou)
        tp, fp = tp + hits, fp + len(p["scores"]) - hits
    kept = tp + fp
    n_gt = gt.num_boxes()
    return {
        "true_positives": tp,
        "false_positives": fp,
        "missed": n_gt - tp,
        "gt_boxes": n_gt,
        "detections": kept,
        "precision": round(tp / kept, DIGITS) if kept else None,
        "recall": round(tp / n_gt, DIGITS) if n_gt else None,
        "iou": iou,
        "score_thresh": score_thresh,
    }


def _match_image(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, pred: dict, iou: float) -> int:
    """Number of predictions of one image matched greedily (by score) to distinct true boxes."""
    if len(pred["boxes"]) == 0 or len(gt_boxes) == 0:
        return 0
    overlap = box_iou(torch.as_tensor(pred["boxes"]), gt_boxes.double())  # (n, g)
    same_class = torch.as_tensor(pred["labels"])[:, None] == gt_labels[None, :]  # (n, g)
    overlap = torch.where(same_class, overlap, torch.full_like(overlap, -1.0))
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    hits = 0
    for d in np.argsort(-pred["scores"], kind="stable"):  # ties keep the given order, as in COCO
        row = overlap[d].masked_fill(taken, -1.0)
        g = int(row.argmax())
        if row[g] >= iou:
            taken[g] = True
            hits += 1
    return hits
