"""Detection metrics on hand-computed cases and against a direct pycocotools run; detection plots."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imrec.data.boxes import DetectionSet
from imrec.detect.metrics import STATS_KEYS, coco_evaluate, match_summary
from imrec.detect.viz import (
    class_colour,
    draw_boxes,
    save_detection_curves,
    save_detection_grid,
    save_pr_curves,
)


def _set(boxes: list, labels: list, size=(100, 100)) -> DetectionSet:
    n = len(boxes)
    return DetectionSet(
        [Path(f"{i}.png") for i in range(n)], boxes, labels, [size] * n, list(range(n))
    )


def _pred(boxes, scores, labels) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}  # fmt: skip


def _none() -> dict:
    return _pred([], [], [])


# ---- coco_evaluate: hand-made cases ---------------------------------------------------


def test_perfect_predictions_score_one_and_images_without_boxes_are_fine():
    gt = _set([[[10, 10, 50, 50], [60, 20, 90, 80]], [], [[0, 0, 100, 100]]], [[0, 1], [], [1]])
    preds = [
        _pred(b.tolist(), [0.9] * len(b), lab.tolist())
        for b, lab in zip(gt.boxes, gt.labels, strict=True)
    ]
    r = coco_evaluate(gt, preds, ["cat", "dog"])
    assert r["map"] == r["map50"] == r["map75"] == 1.0
    assert r["mar_100"] == 1.0
    assert r["per_class"]["cat"] == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0, "gt": 1, "detections": 1}
    assert r["per_class"]["dog"]["gt"] == 2
    assert (r["images"], r["gt_boxes"], r["pred_boxes"]) == (3, 3, 3)
    assert r["pr"]["all50"] == [1.0] * 101
    assert json.loads(json.dumps(r)) == r  # plain JSON types only


def test_one_box_at_iou_062_counts_at_three_of_ten_thresholds():
    # GT 100x100 = 10000 px; the prediction is its top 62 rows: intersection 6200, union 10000,
    # IoU 0.62. Of the thresholds .50 .55 ... .95 only .50, .55 and .60 are <= 0.62: AP = 3/10.
    gt = _set([[[0, 0, 100, 100]]], [[0]])
    r = coco_evaluate(gt, [_pred([[0, 0, 100, 62]], [0.8], [0])], ["cat"])
    assert (r["map50"], r["map75"], r["map"]) == (1.0, 0.0, 0.3)
    # 100x100 = 10000 > 96^2 px: a "large" object; no small or medium ground truth -> None.
    assert (r["map_small"], r["map_medium"], r["map_large"]) == (None, None, 0.3)
    assert r["per_class"]["cat"]["ap"] == 0.3


def test_false_positive_above_the_true_positive_halves_ap():
    # Sorted by score: FP (0.9), TP (0.8). Recall 0 then 1, precision 0 then 1/2; the
    # interpolated precision (max to the right) is 1/2 at every one of the 101 recall points.
    gt = _set([[[10, 10, 50, 50]]], [[0]])
    pred = _pred([[60, 60, 90, 90], [10, 10, 50, 50]], [0.9, 0.8], [0, 0])
    r = coco_evaluate(gt, [pred], ["cat"])
    assert r["map50"] == 0.5
    assert r["map"] == 0.5  # the true positive is exact, so the same at every IoU
    assert r["pr"]["precision50"]["cat"] == [0.5] * 101


def test_interpolated_precision_on_two_boxes():
    # Sorted: TP (0.9), FP (0.8), TP (0.7); recall .5 .5 1, precision 1 .5 .667. Interpolated
    # (max to the right): 1 for the 51 recall points 0.00..0.50, 2/3 for the 50 points above.
    # AP50 = (51 * 1 + 50 * 2/3) / 101 = 0.834983.
    gt = _set([[[0, 0, 20, 20], [50, 50, 70, 70]]], [[0, 0]])
    pred = _pred([[0, 0, 20, 20], [30, 0, 40, 10], [50, 50, 70, 70]], [0.9, 0.8, 0.7], [0, 0, 0])
    r = coco_evaluate(gt, [pred], ["cat"])
    assert r["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)
    curve = r["pr"]["precision50"]["cat"]
    assert curve[:51] == [1.0] * 51 and curve[51:] == [round(2 / 3, 6)] * 50


def test_missed_class_scores_zero():
    gt = _set([[[10, 10, 50, 50]], [[20, 20, 60, 60]]], [[0], [1]])
    preds = [_pred([[10, 10, 50, 50]], [0.9], [0]), _none()]
    r = coco_evaluate(gt, preds, ["cat", "dog"])
    assert r["per_class"]["cat"]["ap"] == 1.0
    assert r["per_class"]["dog"] == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "gt": 1, "detections": 0}
    assert r["map"] == 0.5 and r["map50"] == 0.5
    assert r["pr"]["precision50"]["dog"] == [0.0] * 101


def test_zero_predictions_score_zero_without_crashing():
    gt = _set([[[10, 10, 50, 50]], []], [[0], []])
    r = coco_evaluate(gt, [_none(), _none()], ["cat", "dog"])
    assert r["map"] == r["map50"] == r["mar_100"] == 0.0
    assert r["pred_boxes"] == 0
    assert r["per_class"]["cat"]["ap"] == 0.0 and r["per_class"]["dog"]["ap"] is None
    # Nothing true and nothing predicted: nothing to measure, still no crash.
    empty = coco_evaluate(_set([[]], [[]]), [_none()], ["cat"])
    assert all(empty[key] is None for key in STATS_KEYS)
    assert empty["pr"]["all50"] == [] and empty["pr"]["precision50"] == {}


def test_class_without_ground_truth_is_none_and_does_not_lower_map():
    gt = _set([[[10, 10, 50, 50]]], [[0]])
    pred = _pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.95], [0, 2])  # a stray "bird"
    r = coco_evaluate(gt, [pred], ["cat", "dog", "bird"])
    assert r["map"] == 1.0
    assert r["per_class"]["bird"] == {
        "ap": None, "ap50": None, "ap75": None, "gt": 0, "detections": 1,
    }  # fmt: skip
    assert r["per_class"]["dog"]["ap"] is None
    assert list(r["pr"]["precision50"]) == ["cat"]


def test_numpy_predictions_and_bad_input():
    gt = _set([[[10, 10, 50, 50]]], [[0]])
    pred = {"boxes": np.array([[10.0, 10, 50, 50]]), "scores": np.array([0.5]), "labels": [0]}
    assert coco_evaluate(gt, [pred], ["cat"])["map"] == 1.0
    with pytest.raises(ValueError, match="2 prediction dicts for 1 images"):
        coco_evaluate(gt, [pred, pred], ["cat"])
    with pytest.raises(ValueError, match="label 3 is not one of the 1 classes"):
        coco_evaluate(gt, [_pred([[0, 0, 5, 5]], [0.5], [3])], ["cat"])
    with pytest.raises(ValueError, match="lacks"):
        coco_evaluate(gt, [{"boxes": [[0, 0, 5, 5]]}], ["cat"])
    with pytest.raises(ValueError, match="finite"):
        coco_evaluate(gt, [_pred([[0, 0, float("nan"), 5]], [0.5], [0])], ["cat"])


# ---- coco_evaluate against pycocotools, run directly from JSON files ------------------


def _random_case(seed: int = 7, n: int = 10, k: int = 3):
    """GT of mixed sizes (small/medium/large), jittered predictions, misses and false alarms."""
    rng = np.random.default_rng(seed)
    boxes, labels, preds = [], [], []
    for i in range(n):
        m = int(rng.integers(0, 5)) if i else 0  # image 0 has no ground truth
        xy = rng.uniform(0, 200, (m, 2))
        wh = rng.choice([12.0, 50.0, 150.0], (m, 1)) * rng.uniform(0.6, 1.4, (m, 2))
        b = np.concatenate([xy, xy + wh], 1)  # (m, 4)
        lab = rng.integers(0, k - 1, m)  # the last class never has ground truth
        keep = rng.uniform(size=m) > 0.2  # some boxes are missed
        extra = int(rng.integers(0, 3))  # and some false alarms, any class
        fxy = rng.uniform(0, 300, (extra, 2))
        p = np.concatenate([b[keep] + rng.normal(0, 4, (int(keep.sum()), 4)),
                            np.concatenate([fxy, fxy + 30], 1)])  # fmt: skip
        plab = np.concatenate([lab[keep], rng.integers(0, k, extra)])
        boxes.append(b)
        labels.append(lab)
        preds.append({"boxes": p, "scores": rng.uniform(0.05, 1, len(p)), "labels": plab})
    gt = DetectionSet([Path(f"{i}.jpg") for i in range(n)], boxes, labels, [(400, 400)] * n,
                      [1000 + i for i in range(n)])  # fmt: skip
    return gt, preds, [f"c{c}" for c in range(k)]


def _direct_pycocotools(gt: DetectionSet, preds: list[dict], classes: list[str], folder: Path):
    """COCOeval on a ground-truth JSON file, with other image and category ids than imrec's."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat_id = [10 * (c + 1) for c in range(len(classes))]
    data = {"images": [], "annotations": [], "categories": []}
    data["categories"] = [{"id": cat_id[c], "name": n} for c, n in enumerate(classes)]
    results = []
    for img_id, b, lab, p in zip(gt.ids, gt.boxes, gt.labels, preds, strict=True):
        data["images"].append({"id": img_id, "width": 400, "height": 400})
        for (x1, y1, x2, y2), c in zip(b.tolist(), lab.tolist(), strict=True):
            data["annotations"].append({
                "id": 500 + len(data["annotations"]), "image_id": img_id,
                "category_id": cat_id[c], "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })  # fmt: skip
        for (x1, y1, x2, y2), s, c in zip(
            p["boxes"].tolist(), p["scores"], p["labels"], strict=True
        ):
            results.append({"image_id": img_id, "category_id": cat_id[int(c)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})  # fmt: skip
    (folder / "gt.json").write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(folder / "gt.json"))
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_same_numbers_as_pycocotools_run_directly(tmp_path):
    gt, preds, classes = _random_case()
    ours = coco_evaluate(gt, preds, classes)
    ev = _direct_pycocotools(gt, preds, classes, tmp_path)
    for key, value in zip(STATS_KEYS, ev.stats[:9], strict=True):
        expected = None if value == -1 else pytest.approx(float(value), abs=1e-6)
        assert ours[key] == expected, key
    assert ours["map_small"] is not None and ours["map_large"] is not None  # sizes are mixed
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K) at area all, 100 detections
    for c, name in enumerate(classes):
        p = precision[:, :, c]
        if (p > -1).any():
            assert ours["per_class"][name]["ap"] == pytest.approx(p[p > -1].mean(), abs=1e-6)
        else:
            assert ours["per_class"][name]["ap"] is None
    assert ours["per_class"]["c2"]["ap"] is None and ours["per_class"]["c2"]["detections"] > 0
    # The mean over recall points of the overall curves is the mAP50 / mAP75 itself.
    assert np.mean(ours["pr"]["all50"]) == pytest.approx(ours["map50"], abs=1e-5)
    assert np.mean(ours["pr"]["all75"]) == pytest.approx(ours["map75"], abs=1e-5)
    assert ours["pr"]["recall"] == [round(r / 100, 6) for r in range(101)]


# ---- match_summary --------------------------------------------------------------------


def _match_case():
    # Image 0: a cat at A and a dog at B. Image 1: nothing.
    a, b = [0, 0, 10, 10], [20, 20, 40, 40]
    gt = _set([[a, b], []], [[0, 1], []])
    preds = [
        _pred([a, a, a, b], [0.9, 0.8, 0.7, 0.3], [0, 0, 1, 1]),  # hit, duplicate, wrong class, low
        _pred([[50, 50, 60, 60]], [0.6], [0]),  # a false alarm where there is nothing
    ]
    return gt, preds


def test_match_summary_counts_hits_duplicates_wrong_classes_and_misses():
    gt, preds = _match_case()
    s = match_summary(gt, preds)
    # TP: cat at A (0.9). FP: duplicate cat at A, dog at A, the alarm on image 1. Below 0.5:
    # the dog at B, so that dog is missed.
    assert (s["true_positives"], s["false_positives"], s["missed"]) == (1, 3, 1)
    assert (s["gt_boxes"], s["detections"]) == (2, 4)
    assert (s["precision"], s["recall"]) == (0.25, 0.5)
    low = match_summary(gt, preds, score_thresh=0.2)  # now the dog at B counts
    assert (low["true_positives"], low["false_positives"], low["missed"]) == (2, 3, 0)


def test_match_summary_iou_threshold_and_greedy_order():
    gt = _set([[[0, 0, 10, 10]]], [[0]])
    loose = [_pred([[0, 0, 10, 6]], [0.9], [0])]  # IoU 60/100 = 0.6
    assert match_summary(gt, loose, iou=0.5)["true_positives"] == 1
    strict = match_summary(gt, loose, iou=0.7)
    assert (strict["true_positives"], strict["false_positives"], strict["missed"]) == (0, 1, 1)
    # The higher-scored box takes the only true box even though the other overlaps it better.
    both = [_pred([[0, 0, 10, 6], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    s = match_summary(gt, both)
    assert (s["true_positives"], s["false_positives"]) == (1, 1)
    nothing = match_summary(gt, [_none()])
    assert (nothing["missed"], nothing["precision"], nothing["recall"]) == (1, None, 0.0)


# ---- plots ----------------------------------------------------------------------------


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _not_blank(path) -> None:
    assert _pixels(path).var() > 0


def test_draw_boxes_colours_the_box_edges_only():
    img = torch.zeros(3, 128, 128, dtype=torch.uint8)
    out = np.asarray(draw_boxes(img, [[10, 30, 50, 70]], [1], ["cat", "dog"], [0.93]))
    colour = class_colour(1)
    assert out.shape == (128, 128, 3)
    # Pixel-edge convention: x1=10, x2=50 covers columns 10..49, so both are on the outline.
    assert tuple(out[50, 10]) == colour and tuple(out[50, 49]) == colour
    assert tuple(out[50, 50]) == (0, 0, 0)  # just outside the box
    assert tuple(out[50, 30]) == (0, 0, 0)  # inside, away from the outline
    assert tuple(out[110, 110]) == (0, 0, 0)  # far away
    caption = out[18:30, 10:60]  # the caption sits on a filled band right above the box
    assert (caption == colour).all(-1).mean() > 0.3
    assert (caption != colour).any(-1).any()  # with text written on it


def test_draw_boxes_grey_and_hwc_input_and_clipping():
    grey = torch.full((1, 64, 80), 200, dtype=torch.uint8)
    out = draw_boxes(grey, [[-30, 20, 500, 40]], [0], ["cat"])  # reaches out on both sides
    assert out.mode == "RGB" and out.size == (80, 64)
    arr = np.asarray(out)
    assert tuple(arr[30, 0]) == class_colour(0) and tuple(arr[30, 79]) == class_colour(0)
    hwc = np.full((64, 80, 3), 200, dtype=np.uint8)
    assert np.array_equal(np.asarray(draw_boxes(hwc, [[-30, 20, 500, 40]], [0], ["cat"])), arr)
    untouched = np.asarray(draw_boxes(hwc, np.zeros((0, 4)), [], ["cat"]))
    assert (untouched == 200).all()
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(np.zeros((8, 8, 3), dtype=np.float32), [], [], ["cat"])


def test_detection_grid_of_mixed_sizes(tmp_path):
    g = torch.Generator().manual_seed(0)
    sizes = [(128, 128), (300, 500), (28, 28)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    targets = [{"boxes": [[2, 2, w - 2, h - 2]], "labels": [i], "scores": [0.7]}
               for i, (h, w) in enumerate(sizes)]  # fmt: skip
    path = save_detection_grid(images, targets, ["a", "b", "c"], tmp_path / "grid.png", cols=2,
                               title="three")  # fmt: skip
    px = _pixels(path)
    # Cells of 320 px (the largest side, capped), 1 px lines between: 2 x 321 + 1 = 643 px,
    # plus a 40 px band for the title.
    assert px.shape[:2] == (683, 643)
    for c in range(3):  # every box is drawn in its class colour
        assert (px == class_colour(c)).all(-1).sum() > 100
    _not_blank(save_detection_grid([], [], ["a"], tmp_path / "none.png"))
    with pytest.raises(ValueError, match="1 images but 2 targets"):
        save_detection_grid(images[:1], targets[:2], ["a"], tmp_path / "bad.png")


@pytest.fixture
def drawn(monkeypatch) -> list[list[dict]]:
    """What every figure saved during a test drew, read just before it was written.

    One entry per saved figure: per axes (in order) its title, x limits, free texts and lines
    (label -> x, y and RGB colour). The plotting functions clear their figure once saved, so
    this spies on matplotlib's own ``Figure.savefig``; the PNG is still written.
    """
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    figures: list[list[dict]] = []
    real = Figure.savefig

    def spy(fig, *args, **kwargs):
        axes = []
        for ax in fig.axes:
            legend = ax.get_legend()
            axes.append({
                "title": ax.get_title(),
                "xlim": tuple(ax.get_xlim()),
                "texts": [t.get_text() for t in ax.texts],
                "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
                "lines": {
                    line.get_label(): (
                        np.asarray(line.get_xdata(), dtype=float),
                        np.asarray(line.get_ydata(), dtype=float),
                        to_rgb(line.get_color()),
                    )
                    for line in ax.get_lines()
                },
            })  # fmt: skip
        figures.append(axes or [{"texts": [t.get_text() for t in fig.texts]}])
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figures


def _pr_case(dog_first: bool):
    """Two cats and a dog on one image; the cats found exactly, the dog found with a false
    alarm scored above (``dog_first``) or below its true box, and a stray bird with no truth.

    Cat: AP 1 at every IoU, its interpolated precision 1 at all 101 recall points. Dog with
    the false alarm first: precision 1/2 at every recall point (AP .5); else 1 (AP 1).
    """
    cats, dog, alarm = [[0, 0, 20, 20], [30, 0, 50, 20]], [0, 50, 20, 70], [60, 60, 90, 90]
    gt = _set([[*cats, dog]], [[0, 0, 1]])
    scores = [0.9, 0.8, 0.6, 0.7 if dog_first else 0.5, 0.95]
    pred = _pred([*cats, dog, alarm, alarm], scores, [0, 0, 1, 1, 2])
    return coco_evaluate(gt, [pred], ["cat", "dog", "bird"])


def test_pr_curves_draw_each_class_curve_with_its_ap_and_colour(tmp_path, drawn):
    poor = _pr_case(dog_first=True)
    assert (poor["per_class"]["dog"]["ap50"], poor["map50"]) == (0.5, 0.75)  # the known case
    path = save_pr_curves(poor, tmp_path / "pr.png")
    [[ax]] = drawn
    recall = np.linspace(0, 1, 101)
    # Classes with ground truth, most true boxes first, each in its class colour; the bird
    # (no ground truth) gets no curve. Then the means over classes at IoU .5 and .75.
    assert list(ax["lines"]) == ["cat (AP50 1.000)", "dog (AP50 0.500)",
                                 "all, IoU .5", "all, IoU .75"]  # fmt: skip
    assert ax["legend"] == list(ax["lines"])
    expected = {"cat (AP50 1.000)": 1.0, "dog (AP50 0.500)": 0.5,
                "all, IoU .5": 0.75, "all, IoU .75": 0.75}  # fmt: skip
    for label, precision in expected.items():
        x, y, _ = ax["lines"][label]
        assert x == pytest.approx(recall) and y == pytest.approx([precision] * 101), label
    assert ax["lines"]["cat (AP50 1.000)"][2] == pytest.approx(np.array(class_colour(0)) / 255)
    assert ax["lines"]["dog (AP50 0.500)"][2] == pytest.approx(np.array(class_colour(1)) / 255)
    assert ax["title"] == "mAP 0.750   mAP50 0.750   mAP75 0.750"
    px = _pixels(path)
    for c in (0, 1):  # the PNG shows both class curves in their colours (alpha .8 on white)
        seen = 0.8 * np.array(class_colour(c)) + 0.2 * 255
        assert (np.abs(px - seen).max(-1) < 12).sum() > 200

    # A perfect detector: the same picture but every curve (and the title) at 1.
    good = _pr_case(dog_first=False)
    perfect = save_pr_curves(good, tmp_path / "perfect.png")
    ax = drawn[1][0]
    assert list(ax["lines"])[:2] == ["cat (AP50 1.000)", "dog (AP50 1.000)"]
    for label, (_, y, _) in ax["lines"].items():
        assert y == pytest.approx([1.0] * 101), label
    assert ax["title"] == "mAP 1.000   mAP50 1.000   mAP75 1.000"
    assert not np.array_equal(_pixels(perfect), px)

    # max_classes keeps the classes with the most true boxes: here the cat only.
    save_pr_curves(poor, tmp_path / "one.png", max_classes=1)
    assert list(drawn[2][0]["lines"]) == ["cat (AP50 1.000)", "all, IoU .5", "all, IoU .75"]


def test_pr_curves_draw_the_evaluated_numbers_and_a_message_without_truth(tmp_path, drawn):
    gt, preds, classes = _random_case()
    result = coco_evaluate(gt, preds, classes)
    _not_blank(save_pr_curves(result, tmp_path / "pr.png", max_classes=1))
    [[ax]] = drawn
    busiest = max(classes, key=lambda n: result["per_class"][n]["gt"])
    ap50 = result["per_class"][busiest]["ap50"]
    assert list(ax["lines"]) == [f"{busiest} (AP50 {ap50:.3f})", "all, IoU .5", "all, IoU .75"]
    assert ax["lines"]["all, IoU .5"][1] == pytest.approx(result["pr"]["all50"])
    assert ax["lines"]["all, IoU .75"][1] == pytest.approx(result["pr"]["all75"])
    own = ax["lines"][f"{busiest} (AP50 {ap50:.3f})"][1]
    assert own == pytest.approx(result["pr"]["precision50"][busiest])
    nothing = coco_evaluate(_set([[]], [[]]), [_none()], ["cat"])
    _not_blank(save_pr_curves(nothing, tmp_path / "empty.png"))
    assert drawn[1] == [{"texts": ["no ground-truth boxes: no precision-recall curve"]}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "pr.png"]  # no temp files


def test_detection_curves(tmp_path, drawn):
    history = [
        {"epoch": 1, "train_loss": 2.0, "val_map": 0.1, "val_map50": 0.2},
        {"epoch": 2, "train_loss": 1.0, "val_map": None, "val_map50": 0.4},  # mAP not measured
        {"epoch": 3, "train_loss": 0.5, "val_map": 0.3, "val_map50": 0.6},
    ]
    path = save_detection_curves(history, tmp_path / "curves.png")
    [[loss, val]] = drawn
    assert (loss["title"], val["title"]) == ("loss", "validation mAP")
    # Loss: only the train curve (the history has no val_loss), one point per epoch.
    assert list(loss["lines"]) == loss["legend"] == ["train"]
    x, y, _ = loss["lines"]["train"]
    assert x.tolist() == [1, 2, 3] and y.tolist() == [2.0, 1.0, 0.5]
    # mAP: both curves; the epoch without a value is left out, not drawn as 0.
    assert list(val["lines"]) == val["legend"] == ["mAP@[.5:.95]", "mAP50"]
    x, y, _ = val["lines"]["mAP@[.5:.95]"]
    assert x.tolist() == [1, 3] and y.tolist() == [0.1, 0.3]
    x, y, _ = val["lines"]["mAP50"]
    assert x.tolist() == [1, 2, 3] and y.tolist() == [0.2, 0.4, 0.6]
    assert _pixels(path).shape[:2] == (400, 1000)  # 10 x 4 inches at 100 dpi

    # One epoch with only a loss: a single point, the axis spanning epochs 0-2, and the mAP
    # panel saying it has no data.
    one = save_detection_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "one.png")
    [loss, val] = drawn[1]
    x, y, _ = loss["lines"]["train"]
    assert x.tolist() == [1] and y.tolist() == [1.0] and loss["xlim"] == (0, 2)
    assert val["lines"] == {} and val["texts"] == ["no data"]
    # Other numbers, another picture.
    assert not np.array_equal(_pixels(one), _pixels(path))
