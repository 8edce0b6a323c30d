"""Detection: box transforms, detectors through one harness, training, CLI at tiny sizes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imrec.cli import main
from imrec.core.preprocess import letterbox
from imrec.data.detection import load_detection
from imrec.detect.augment import DetectAugment, DetectTransform
from imrec.models.detectors import (
    TinyDet,
    create_detector,
    detector_options,
    list_detectors,
)

TINY = "digits-detect:train=64,val=16,test=16,canvas=64,min_scale=18,max_scale=30,max_digits=3"


@pytest.fixture(autouse=True)
def _keep_threads():
    """Runs here use --threads 1 (exact resume needs the same reduction order); restore after."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ---- box transforms ---------------------------------------------------------------------


def test_letterbox_scales_boxes_and_pads_right_and_bottom():
    img = torch.full((3, 50, 100), 200, dtype=torch.uint8)
    out, boxes, scale = letterbox(img, torch.tensor([[10.0, 10.0, 30.0, 20.0]]), 64, fill=7)
    # Longer side 100 -> 64: scale 0.64; content 32 rows high, padded to 64 at the bottom.
    assert scale == pytest.approx(0.64)
    assert out.shape == (3, 64, 64)
    assert torch.allclose(boxes, torch.tensor([[6.4, 6.4, 19.2, 12.8]]))
    assert (out[:, :32, :] == 200).all() and (out[:, 32:, :] == 7).all()


def _square_image(box: list[int], size=(60, 80)) -> torch.Tensor:
    img = torch.zeros(1, *size, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = 255
    return img


def _ink_box(img: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(img[0] > 127, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize(
    "augment",
    [
        DetectAugment(photometric=False, hflip=True),
        DetectAugment(photometric=False, scale=(0.7, 1.3), translate=0.1),
        DetectAugment(photometric=True, scale=(0.8, 1.2)),
    ],
)
def test_boxes_move_with_the_image(augment):
    """After every random transform the box still frames the white square (within 1.5 px)."""
    torch.manual_seed(0)
    tf = DetectTransform(64, augment, "photo")
    flipped = set()
    for _ in range(12):
        img = _square_image([20, 15, 40, 35])
        out, boxes, labels = tf(img, torch.tensor([[20.0, 15.0, 40.0, 35.0]]), torch.tensor([3]))
        assert out.shape == (1, 64, 64) and labels.tolist() == [3]
        assert boxes[0].tolist() == pytest.approx(_ink_box(out), abs=1.5)
        flipped.add((boxes[0, 0] + boxes[0, 2]).item() / 2 > 32)
    if augment.hflip:  # both outcomes of the coin were seen and both were right
        assert flipped == {True, False}


def test_hflip_box_is_mirrored_by_hand():
    torch.manual_seed(1)
    tf = DetectTransform(80, DetectAugment(photometric=False, hflip=True), "photo")
    seen = set()
    for _ in range(10):
        _, b, _ = tf(
            _square_image([10, 5, 30, 25]),
            torch.tensor([[10.0, 5.0, 30.0, 25.0]]),
            torch.tensor([0]),
        )
        seen.add(tuple(round(v, 3) for v in b[0].tolist()))
    # 80 px wide: x -> 80 - x, so [10, 30] becomes [50, 70]; the letterbox scale is 1.
    assert seen == {(10.0, 5.0, 30.0, 25.0), (50.0, 5.0, 70.0, 25.0)}


def test_boxes_pushed_out_of_the_image_are_dropped_with_their_labels():
    torch.manual_seed(0)
    tf = DetectTransform(
        64, DetectAugment(photometric=False, scale=(1.0, 1.0), translate=0.45), "photo"
    )
    for _ in range(20):
        img = _square_image([0, 0, 6, 6], size=(64, 64))
        _, boxes, labels = tf(img, torch.tensor([[0.0, 0.0, 6.0, 6.0]]), torch.tensor([1]))
        assert len(boxes) == len(labels)
        if len(boxes):
            assert (
                (boxes[:, 2] - boxes[:, 0] >= 2).all()
                and (boxes >= 0).all()
                and (boxes <= 64).all()
            )


# ---- detectors --------------------------------------------------------------------------


def _targets():
    return [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 30.0, 60.0, 60.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]


@pytest.mark.parametrize("name", sorted(list_detectors()))
def test_every_detector_trains_and_detects(name):
    torch.manual_seed(0)
    det = create_detector(name, num_classes=3, in_channels=1, input_size=(64, 64))
    det.train()
    x = torch.rand(2, 1, 64, 64)
    parts = det.losses(x, _targets())
    assert torch.isfinite(parts["loss"]) and parts["loss"].requires_grad
    parts["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in det.parameters())
    out = det.detect(x, score_thresh=0.0, max_det=7)
    assert det.training  # detect() leaves the mode as it found it
    assert len(out) == 2
    for o in out:
        assert set(o) == {"boxes", "scores", "labels"}
        assert o["boxes"].shape[1:] == (4,) and len(o["boxes"]) <= 7
        assert len(o["scores"]) == len(o["labels"]) == len(o["boxes"])
        if len(o["labels"]):
            assert 0 <= o["labels"].min() and o["labels"].max() < 3


def test_tinydet_targets_put_a_peak_on_each_centre():
    det = TinyDet(3, 1, [0.5], [0.25])
    heat, box_t, box_w = det._targets(_targets(), (2, 3, 16, 16), "cpu")
    # Box 1 centre (17, 23) -> cell (x 4, y 5) of class 0; box 2 centre (50, 45) -> (12, 11), class 2.
    assert heat[0, 0, 5, 4] == 1.0 and heat[0, 2, 11, 12] == 1.0
    assert heat[0, 1].max() == 0 and heat[1].max() == 0
    assert (heat == 1.0).sum() == 2
    assert box_t[0, 5, 4].tolist() == [4.0, 6.0, 30.0, 40.0] and box_w[0, 5, 4] > 0
    assert box_w[1].max() == 0


def test_fine_tuning_from_a_state_dict_keeps_the_backbone_and_replaces_the_head(tmp_path):
    torch.manual_seed(0)
    donor = create_detector(
        "fasterrcnn_mobilenet", num_classes=5, in_channels=3, input_size=(96, 96)
    )
    path = tmp_path / "donor.pth"
    torch.save(donor.net.state_dict(), path)
    torch.manual_seed(1)
    det = create_detector(
        "fasterrcnn_mobilenet",
        num_classes=2,
        in_channels=3,
        input_size=(96, 96),
        pretrained=str(path),
    )
    own, theirs = det.net.state_dict(), donor.net.state_dict()
    key = next(k for k in own if k.startswith("backbone.body") and k.endswith("weight"))
    assert torch.equal(own[key], theirs[key])
    head = "roi_heads.box_predictor.cls_score.weight"
    assert own[head].shape[0] == 3 and theirs[head].shape[0] == 6  # background + classes
    with pytest.raises(ValueError, match="does not exist"):
        create_detector(
            "fcos",
            num_classes=2,
            in_channels=3,
            input_size=(64, 64),
            pretrained=str(tmp_path / "nope.pth"),
        )


def test_detector_options_are_checked():
    assert detector_options("tinydet") == {"width": 32, "neck": 48}
    with pytest.raises(ValueError, match="unexpected option"):
        create_detector("tinydet", num_classes=2, in_channels=1, input_size=(64, 64), depth=3)


# ---- training and the CLI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tiny_run):
    return load_detection(TINY)


def test_tinydet_loss_falls_on_generated_scenes(tiny_data):
    torch.manual_seed(0)
    d = tiny_data
    det = create_detector(
        "tinydet", num_classes=10, in_channels=1, input_size=(64, 64), width=16, neck=32
    )
    x = torch.stack([d.train.load_image(i, 1) for i in range(16)]).float() / 255
    targets = [{"boxes": d.train.boxes[i], "labels": d.train.labels[i]} for i in range(16)]
    opt = torch.optim.AdamW(det.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss = det.losses(x, targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def _train_args(out: Path, epochs: int = 2) -> list[str]:
    return [
        "train", TINY, "--out", str(out), "--epochs", str(epochs), "--batch-size", "16",
        "--model-opt", "width=16", "--model-opt", "neck=32", "--quiet", "--threads", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if not (Path(os.environ.get("IMREC_DATA_MIRROR", "")) / "mnist").is_dir():
        from conftest import MIRROR

        if not (MIRROR / "mnist").is_dir():
            pytest.skip("no dataset mirror (set IMREC_DATA_MIRROR)")
        os.environ["IMREC_DATA_MIRROR"] = str(MIRROR)
    n = torch.get_num_threads()
    run = tmp_path_factory.mktemp("det") / "run"
    try:
        assert main(_train_args(run)) == 0
    finally:
        torch.set_num_threads(n)
    return run


def test_train_writes_a_detection_run(tiny_run, capsys):
    for name in ("config.json", "metrics.jsonl", "curves.png", "pr.png", "predictions.png",
                 "best.safetensors", "best.json", "last.safetensors", "report.json", "report.md"):  # fmt: skip
        assert (tiny_run / name).is_file(), name
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["task"] == "detect" and report["model"] == "tinydet"
    for key in ("map", "map50", "map75", "per_class"):
        assert key in report["test"]
    assert 0.0 <= report["test"]["map"] <= report["test"]["map50"] <= 1.0
    assert set(report["test"]["per_class"]) == {str(d) for d in range(10)}
    rows = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_map" in r for r in rows)
    md = (tiny_run / "report.md").read_text()
    assert "mAP@[.5:.95]" in md and "## AP per class" in md
    meta = json.loads((tiny_run / "best.json").read_text())
    assert meta["task"] == "detect" and meta["input"]["size"] == [64, 64]


def test_eval_cli_reproduces_the_test_map(tiny_run, capsys):
    before = json.loads((tiny_run / "report.json").read_text())["test"]["map"]
    assert main(["eval", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "mAP@[.5:.95]" in out and "report:" in out
    after = json.loads((tiny_run / "report.json").read_text())["test"]["map"]
    assert after == pytest.approx(before, abs=1e-6)


def test_predict_json_and_draw(tiny_run, tiny_data, tmp_path, capsys):
    scene = tiny_data.test.files[0]
    big = tmp_path / "big.png"  # another size: boxes must come back in its own pixels
    Image.open(scene).resize((128, 128)).save(big)
    drawn = tmp_path / "drawn"
    code = main(["predict", str(tiny_run), str(scene), str(big), "--json", "--conf", "0.0",
                 "--max-det", "5", "--draw", str(drawn)])  # fmt: skip
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["width"] for r in results] == [64, 128]
    for r in results:
        assert 0 < len(r["boxes"]) <= 5
        for b in r["boxes"]:
            assert b["label"] in [str(d) for d in range(10)] and 0.0 <= b["score"] <= 1.0
            x1, y1, x2, y2 = b["box"]
            assert 0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"]
    # Boxes come back in the input's own pixels: the model's boxes on the letterboxed
    # 64 px version of the 128 px image, divided by the letterbox scale 0.5.
    from imrec.detect.predict import DetectionPredictor

    p = DetectionPredictor(tiny_run, score_thresh=0.0, max_det=5)
    _, boxed, scale = p.prepare(big)
    assert scale == 0.5 and boxed.shape == (1, 64, 64)
    raw = p.model.detect(boxed[None].float() / 255, score_thresh=0.0, max_det=5)[0]
    got = np.array([b["box"] for b in results[1]["boxes"]])
    assert np.allclose(got, raw["boxes"].numpy() / scale, atol=0.01)
    assert sorted(p.name for p in drawn.iterdir()) == sorted(["big.png", scene.name])
    img = np.asarray(Image.open(drawn / "big.png"))
    assert img.shape == (128, 128, 3)


def test_predict_reports_a_broken_image(tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(tiny_run), str(bad), "--json"]) == 1
    assert "error" in json.loads(capsys.readouterr().out)[0]


def test_data_show_and_convert(mirror, tmp_path, capsys):
    out = tmp_path / "show.png"
    assert main(["data", "show", TINY, "--out", str(out)]) == 0
    aug = tmp_path / "aug.png"
    assert main(["data", "show", TINY, "--augment", "--out", str(aug)]) == 0
    a, b = np.asarray(Image.open(out)), np.asarray(Image.open(aug))
    assert a.shape == b.shape and (a != b).any()
    src = load_detection(TINY)
    ann = Path(src.train.files[0]).parents[2] / "annotations" / "train.json"
    yolo = tmp_path / "yolo"
    assert main(["data", "convert", str(ann), str(yolo), "--to", "yolo"]) == 0
    assert "boxes" in capsys.readouterr().out
    data = load_detection(f"yolo:{yolo}")
    assert (
        data.train.num_boxes() + data.val.num_boxes() + data.test.num_boxes()
        == src.train.num_boxes()
    )
    assert main(["models", "--task", "detect"]) == 0
    assert "tinydet" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert "digits-detect" in listed and "coco128" in listed and "mnist" in listed
    assert main(["data", "get", TINY]) == 0
    assert "files ready in" in capsys.readouterr().out


def test_bad_detection_input_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "coco:" + str(tmp_path / "missing.json"), "--epochs", "1"]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main(["train", "digits-detect:colour=3", "--epochs", "1"]) == 2
    assert "bad option" in capsys.readouterr().err


def _epochs(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "train_seconds", "images_per_second")}
        for r in rows
    ]


def test_detection_run_killed_then_resumed_matches(tiny_run, tmp_path):
    run = tmp_path / "killed"
    args = [*_train_args(run, epochs=2), "--no-figures"]  # a setting the resumed run keeps
    p = subprocess.Popen([sys.executable, "-m", "imrec", *args], env=os.environ.copy(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while len(_epochs(run)) < 1 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL and len(_epochs(run)) == 1
    assert main(["train", "--resume", str(run)]) == 0
    assert _epochs(run) == _epochs(tiny_run)
    a = json.loads((tiny_run / "report.json").read_text())["test"]
    b = json.loads((run / "report.json").read_text())
    assert b["test"]["map"] == pytest.approx(a["map"], abs=1e-9)
    assert b["files"] == {} and not list(run.glob("*.png"))  # no figures, as asked
    assert sorted(p.name for p in tiny_run.glob("*.png")) == [
        "curves.png",
        "pr.png",
        "predictions.png",
    ]


# ---- coco128 ----------------------------------------------------------------------------


def test_coco128_has_a_held_out_val_and_the_val2017_test(mirror):
    data = load_detection("coco128", val_fraction=0.1, seed=0)
    assert len(data.classes) == 80 and data.classes[0] == "person"
    assert len(data.train) + len(data.val) == 128 and len(data.val) == 13
    assert len(data.test) == 128
    assert not {f.name for f in data.train.files} & {f.name for f in data.val.files}
    assert data.train.num_boxes() + data.val.num_boxes() == 929
    assert data.test.num_boxes() == 898
    assert data.channels == 3 and data.domain == "photo"


def test_coco128_with_a_changed_file_is_refused(mirror, tmp_path, monkeypatch):
    import shutil

    fake = tmp_path / "mirror"
    shutil.copytree(mirror / "coco128", fake / "coco128")
    label = sorted((fake / "coco128" / "labels" / "train2017").iterdir())[0]
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    monkeypatch.setenv("IMREC_DATA_MIRROR", str(fake))
    monkeypatch.setenv("IMREC_HOME", str(tmp_path / "home"))
    from imrec.data import DatasetError

    with pytest.raises(DatasetError, match="fails its checksum"):
        load_detection("coco128")
    assert not (tmp_path / "home" / "datasets" / "coco128").exists()


def test_torchvision_detector_fine_tunes_from_a_state_dict_end_to_end(tiny_run, tmp_path, capsys):
    """The fine-tuning path: weights from a file (as a user's COCO weights would be), trained."""
    torch.manual_seed(0)
    donor = create_detector(
        "fasterrcnn_mobilenet", num_classes=4, in_channels=3, input_size=(64, 64)
    )
    weights = tmp_path / "donor.pth"
    torch.save(donor.net.state_dict(), weights)
    run = tmp_path / "ft"
    args = ["train", TINY, "--model", "fasterrcnn_mobilenet", "--model-opt", f"pretrained={weights}",
            "--epochs", "1", "--batch-size", "16", "--out", str(run), "--quiet"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["model"] == "fasterrcnn_mobilenet" and "map" in report["test"]
    from imrec.detect.predict import load_detector

    model, meta = load_detector(run)
    assert meta["model"]["options"]["pretrained"] == str(weights)
    key = "net.backbone.body.0.0.weight"  # the stem: started from the file, then trained
    start, end = donor.net.state_dict()[key[4:]], model.state_dict()[key]
    assert start.shape == end.shape and (start - end).abs().max() < 0.5 * start.abs().max()
