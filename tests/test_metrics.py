"""Metrics against scikit-learn as an independent reference, and calibration on hand-made cases."""

import json
import math
import warnings

import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from imrec.classify.metrics import classification_metrics, reliability, worst_mistakes


def _logits_with_probs(rows: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probability rows (up to float error)."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


def _random_case(seed: int, n: int = 300, k: int = 6, never_predicted: int = 2):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=gen)
    # noisy logits leaning towards the true class, so the scores are neither 0 nor 1
    logits = torch.randn(n, k, generator=gen) + 1.5 * torch.nn.functional.one_hot(labels, k)
    logits[:, never_predicted] = -100.0  # this class is never the argmax
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_sklearn_on_random_data(seed):
    k = 6
    logits, labels = _random_case(seed, k=k)
    classes = [f"c{i}" for i in range(k)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class with no predictions must not warn
        m = classification_metrics(logits, labels, classes)
    y, p = labels.numpy(), logits.argmax(1).numpy()
    assert 2 not in p and 2 in y

    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-6)
    assert m["confusion"] == confusion_matrix(y, p, labels=range(k)).tolist()
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=range(k), zero_division=0)
    for i, name in enumerate(classes):
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(prec[i], abs=1e-6)
        assert row["recall"] == pytest.approx(rec[i], abs=1e-6)
        assert row["f1"] == pytest.approx(f1[i], abs=1e-6)
        assert row["support"] == sup[i]
        assert row["predicted"] == int((p == i).sum())
    assert m["per_class"]["c2"]["precision"] == 0.0 and m["per_class"]["c2"]["predicted"] == 0
    assert m["macro_f1"] == pytest.approx(
        f1_score(y, p, average="macro", zero_division=0), abs=1e-6
    )
    assert m["weighted_f1"] == pytest.approx(
        f1_score(y, p, average="weighted", zero_division=0), abs=1e-6
    )
    # sklearn's log_loss clips tiny probabilities, so torch's cross-entropy is the reference
    expected_nll = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    assert m["nll"] == pytest.approx(expected_nll, rel=1e-5)


def test_nll_matches_sklearn_log_loss():
    logits, labels = _random_case(5, n=100, k=4)
    logits[:, 2] = 0.0  # keep every probability far from sklearn's clipping
    probs = torch.softmax(logits.double(), 1).numpy()
    m = classification_metrics(logits, labels, list("abcd"))
    assert m["nll"] == pytest.approx(log_loss(labels.numpy(), probs, labels=range(4)), abs=1e-5)


def test_class_without_support_is_left_out_of_macro_averages():
    k = 5
    logits, labels = _random_case(7, k=k, never_predicted=0)
    labels[labels == 4] = 3  # class 4 has no samples, but the model still predicts it
    logits[:10, 4] = 50.0
    m = classification_metrics(logits, labels, list("abcde"))
    y, p = labels.numpy(), logits.argmax(1).numpy()
    present = [0, 1, 2, 3]
    for avg in ("f1", "precision", "recall"):
        fn = {"f1": f1_score, "precision": _precision, "recall": _recall}[avg]
        expected = fn(y, p, labels=present, average="macro", zero_division=0)
        assert m[f"macro_{avg}"] == pytest.approx(expected, abs=1e-6)
    assert m["per_class"]["e"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "predicted": int((p == 4).sum()),
    }
    assert (p == 4).sum() >= 10


def _precision(*args, **kw):
    return precision_recall_fscore_support(*args, **kw)[0]


def _recall(*args, **kw):
    return precision_recall_fscore_support(*args, **kw)[1]


def test_result_is_plain_json():
    logits, labels = _random_case(0, n=40, k=4)
    m = classification_metrics(logits, labels, ["é", "猫", "b", "c"])
    assert json.loads(json.dumps(m)) == m


def test_perfectly_calibrated_has_zero_ece():
    # 10 samples at confidence 0.8 with 8 right, 5 samples at 0.6 with 3 right
    rows = [[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5
    labels = [0] * 8 + [1] * 2 + [1] * 3 + [0] * 2
    m = classification_metrics(_logits_with_probs(rows), torch.tensor(labels), ["a", "b"])
    assert m["ece"] == pytest.approx(0.0, abs=1e-6)


def test_confident_and_wrong_has_ece_near_one():
    logits = torch.tensor([[30.0, 0.0]] * 20)
    m = classification_metrics(logits, torch.ones(20, dtype=torch.long), ["a", "b"])
    assert m["accuracy"] == 0.0
    assert m["ece"] == pytest.approx(1.0, abs=1e-6)


def test_two_bin_ece_by_hand():
    # bin (0, 0.5]: two samples at 0.4, one right -> |0.5 - 0.4| = 0.1, weight 2/5
    # bin (0.5, 1]: three samples at 0.8, one right -> |1/3 - 0.8|, weight 3/5
    rows = [[0.4, 0.2, 0.2, 0.2]] * 2 + [[0.8, 0.1, 0.05, 0.05]] * 3
    labels = torch.tensor([0, 1, 0, 2, 3])
    expected = 2 / 5 * 0.1 + 3 / 5 * (0.8 - 1 / 3)  # 0.32
    logits = _logits_with_probs(rows)
    m = classification_metrics(logits, labels, list("abcd"), ece_bins=2)
    assert m["ece"] == pytest.approx(expected, abs=1e-6)

    r = reliability(logits, labels, bins=2)
    assert r["edges"] == [0.0, 0.5, 1.0]
    assert r["count"] == [2, 3]
    assert r["confidence"] == pytest.approx([0.4, 0.8], abs=1e-6)
    assert r["accuracy"] == pytest.approx([0.5, 1 / 3], abs=1e-6)
    assert r["ece"] == pytest.approx(expected, abs=1e-6)


def test_reliability_empty_bins_are_zero():
    r = reliability(torch.tensor([[5.0, 0.0]] * 3), torch.zeros(3, dtype=torch.long), bins=10)
    assert sum(r["count"]) == 3 and r["count"][-1] == 3
    assert r["confidence"][:5] == [0.0] * 5 and r["accuracy"][-1] == 1.0
    assert json.loads(json.dumps(r)) == r


def test_top5_by_hand():
    # each row ranks the classes 0 > 1 > ... > 6; the true class sits at rank 0, 4, 5 and 6
    logits = torch.arange(7, 0, -1, dtype=torch.float32).repeat(4, 1)
    labels = torch.tensor([0, 4, 5, 6])
    m = classification_metrics(logits, labels, list("abcdefg"))
    assert m["top_k"] == 5
    assert m["top5"] == 0.5
    assert m["accuracy"] == 0.25


def test_top5_with_fewer_classes_is_top_k():
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    m = classification_metrics(logits, torch.tensor([2, 1]), ["a", "b", "c"])
    assert m["top_k"] == 3
    assert m["top5"] == 1.0


def test_worst_mistakes_order():
    logits = _logits_with_probs(
        [
            [0.9, 0.1],  # right
            [0.3, 0.7],  # wrong at 0.7
            [0.05, 0.95],  # wrong at 0.95
            [0.6, 0.4],  # wrong at 0.6
            [0.3, 0.7],  # wrong at 0.7, ties with sample 1: sample order kept
        ]
    )
    labels = torch.tensor([0, 0, 0, 1, 0])
    assert worst_mistakes(logits, labels) == [2, 1, 4, 3]
    assert worst_mistakes(logits, labels, n=2) == [2, 1]
    assert worst_mistakes(logits, labels, n=0) == []
    assert worst_mistakes(logits[:1], labels[:1]) == []


@pytest.mark.parametrize(
    ("logits", "labels", "classes", "message"),
    [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), list("abc"), "empty"),
        (torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), ["a"], "at least 2"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), list("abc"), "expected logits"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), list("abc"), r"\[0, 3\)"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), list("abc"), "integer"),
        (torch.tensor([[math.nan, 0.0]]), torch.tensor([0]), ["a", "b"], "NaN"),
        (torch.zeros(2, 3), torch.tensor([0, 1]), ["a", "b"], "distinct class names"),
        (torch.zeros(2, 2), torch.tensor([0, 1]), ["a", "a"], "distinct class names"),
    ],
)
def test_bad_input_raises(logits, labels, classes, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(logits, labels, classes)


def test_accepts_half_precision_logits_and_int32_labels():
    logits, labels = _random_case(3, n=50, k=4)
    ref = classification_metrics(logits, labels, list("abcd"))
    m = classification_metrics(logits.half(), labels.int(), list("abcd"))
    assert m["confusion"] == ref["confusion"]
    assert m["nll"] == pytest.approx(ref["nll"], abs=1e-2)


def test_many_classes_report_the_most_confused_pairs_not_a_matrix(tmp_path):
    import numpy as np
    import torch

    from imrec.classify.metrics import DENSE_CONFUSION, TOP_PAIRS, classification_metrics
    from imrec.classify.report import render_markdown
    from imrec.classify.viz import save_confused_pairs

    k, n = 150, 3000
    assert k > DENSE_CONFUSION
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, k, (n,), generator=gen)
    logits = torch.nn.functional.one_hot(labels, k).float() * 5 + torch.randn(n, k, generator=gen)
    wrong = labels == 7
    logits[wrong, 9] += 20  # class 7 is always taken for class 9
    classes = [chr(0x4E00 + i) for i in range(k)]  # CJK names
    m = classification_metrics(logits, labels, classes)
    assert "confusion" not in m and len(m["confused_pairs"]) <= TOP_PAIRS
    t, p, count = m["confused_pairs"][0]
    assert (t, p, count) == (7, 9, int(wrong.sum()))
    counts = [c for *_, c in m["confused_pairs"]]
    assert counts == sorted(counts, reverse=True)
    md = render_markdown({"classes": classes, "test": m})
    assert f"| {classes[7]} | {classes[9]} | {count} | 100.0% |" in md
    images = torch.randint(0, 255, (n, 1, 16, 16), dtype=torch.uint8, generator=gen)
    pred = logits.argmax(1).tolist()
    path = save_confused_pairs(
        images, labels.tolist(), pred, m["confused_pairs"], classes, tmp_path / "p.png"
    )
    from PIL import Image

    assert np.asarray(Image.open(path).convert("L")).std() > 10  # drawn, not blank


def test_a_confused_class_without_images_is_printed_beside_the_mistake(tmp_path):
    """A 3,755-character model scored on Chinese MNIST: the class a numeral is taken for has no
    image in the set, so its tile shows the name printed large instead of staying blank."""
    import numpy as np
    from PIL import Image

    from imrec.classify.viz import save_confused_pairs

    classes = ["四", "囚"]
    black = np.zeros((2, 1, 32, 32), np.uint8)

    def right_tile(true: list[int], pred: list[int], name: str) -> np.ndarray:
        """The second tile of the one pair drawn: the box of dark pixels in the right half."""
        path = save_confused_pairs(black, true, pred, [[0, 1, 1]], classes, tmp_path / name)
        grey = np.asarray(Image.open(path).convert("L"))
        dark = grey[:, grey.shape[1] // 2 :] < 30
        rows = np.flatnonzero(dark.mean(1) > 0.5)  # title text never darkens half a row
        assert len(rows) > 0.2 * len(dark), "no dark tile on the right: left blank"
        cols = np.flatnonzero(dark[rows].mean(0) > 0.5)
        return grey[:, grey.shape[1] // 2 :][
            rows.min() : rows.max() + 1, cols.min() : cols.max() + 1
        ]

    shown = right_tile([0, 1], [1, 1], "shown.png")  # 囚 has an (all black) image
    printed = right_tile([0, 0], [1, 0], "printed.png")  # no image of 囚 in the set
    assert (shown > 128).sum() == 0
    assert (printed > 128).sum() > 100  # its name, light on the dark tile


def test_the_per_class_table_of_a_subset_lists_the_classes_seen_and_the_worst_of_many():
    """A 300-class model scored on 5 of its classes (as a 3,755-character model on Chinese
    MNIST's 15): the table lists those 5 and the empty classes images were given to, not 295
    rows of zeros; scored on all 300, it lists the worst PER_CLASS_ROWS and says where the rest
    are."""
    from imrec.classify.metrics import classification_metrics
    from imrec.classify.report import PER_CLASS_ROWS, render_markdown

    k, n = 300, 600
    classes = [f"k{i:03d}" for i in range(k)]
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (n,), generator=gen)  # only classes 0-4 have images
    logits = torch.nn.functional.one_hot(labels, k).float() * 5
    logits[:30, 250] = 50.0  # 30 images taken for class 250, which has none
    logits[30:33, 17] = 50.0  # 3 for class 17
    m = classification_metrics(logits, labels, classes)
    md = render_markdown({"classes": classes, "test": m})
    table = md.split("## Per class")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| k")]
    assert rows[-2:] == ["k250", "k017"]  # the empty ones last, the most predicted first
    assert sorted(rows[:-2]) == classes[:5]
    assert "293 more of the model's classes have no test images and were never predicted." in md

    labels = torch.arange(n) % k  # every class has images now
    logits = torch.randn(n, k, generator=gen) + torch.nn.functional.one_hot(labels, k) * 2.5
    m = classification_metrics(logits, labels, classes)
    table = render_markdown({"classes": classes, "test": m}).split("## Per class")[1]
    table = table.split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| k")]
    assert len(rows) == PER_CLASS_ROWS < k
    f1 = sorted(row["f1"] for row in m["per_class"].values())
    assert [float(r.split(" | ")[3]) for r in rows] == pytest.approx(f1[:PER_CLASS_ROWS], abs=1e-4)
    assert f"The other {k - PER_CLASS_ROWS} classes (F1 " in table
    assert "are in report.json (`metrics.test.per_class`)." in table


def test_a_report_of_every_image_of_another_dataset_says_so():
    """``imrec eval RUN --data OTHER --split all`` scores all of OTHER's splits: its report says
    which images were scored, not that a test split was held out."""
    from imrec.classify.metrics import classification_metrics
    from imrec.classify.report import render_markdown

    labels = torch.tensor([0, 1, 2, 1])
    m = classification_metrics(torch.eye(3)[labels] * 4, labels, ["a", "b", "c"])
    report = {"dataset": "chinese-mnist", "split": "split by writer", "classes": list("abc")}
    held_out = render_markdown({**report, "test": m, "split_scored": "test"})
    assert "The test split was never used for any choice" in held_out
    md = render_markdown({**report, "test": m, "split_scored": "all"})
    assert "Scored: every image of chinese-mnist (4), its training, validation and test" in md
    assert "The test split was never used" not in md
