"""Tests of the COCO JSON and YOLO txt readers and writers, and of conversion between them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from imrec.data.boxes import DetectionSet
from imrec.data.coco import load_coco, read_coco, split_name, write_coco
from imrec.data.convert import convert_dataset
from imrec.data.sources import DatasetError
from imrec.data.yolo import label_path, read_yolo, write_yolo, yolo_splits

W, H = 40, 30  # every test image is 40 wide, 30 high


def _png(path: Path, width: int = W, height: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 200)).save(path)
    return path


def _coco(path: Path, images: list[dict], annotations: list[dict], categories=None) -> Path:
    if categories is None:
        categories = [
            {"id": 90, "name": "apple"},
            {"id": 3, "name": "zebra"},
            {"id": 7, "name": "cat"},
        ]
    for i, ann in enumerate(annotations):
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
    doc = {"images": images, "annotations": annotations, "categories": categories}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _image(image_id: int, name: str, sized: bool = True) -> dict:
    entry = {"id": image_id, "file_name": name}
    return entry | {"width": W, "height": H} if sized else entry


def _ann(image_id: int, category_id: int, bbox: list[float], **extra) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def _yolo(root: Path, labels: dict[str, str], names=("cat", "dog"), split="train") -> Path:
    """A YOLO dataset with one 40x30 image per entry of ``labels`` (None: no label file)."""
    for stem, text in labels.items():
        _png(root / "images" / split / f"{stem}.png")
        if text is not None:
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(
        yaml.safe_dump({split: f"images/{split}", "names": list(names)})
    )
    return root / "data.yaml"


def _same_split(a: DetectionSet, b: DetectionSet, atol: float) -> None:
    assert [f.name for f in a.files] == [f.name for f in b.files]
    assert a.sizes == b.sizes
    for ba, bb, la, lb in zip(a.boxes, b.boxes, a.labels, b.labels, strict=True):
        torch.testing.assert_close(ba, bb, atol=atol, rtol=0)
        assert la.tolist() == lb.tolist()


# ---------------------------------------------------------------- COCO


def test_read_coco_converts_boxes_and_maps_category_ids_in_id_order(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    _png(tmp_path / "c.png", 50, 20)
    images = [_image(5, "b.png"), _image(2, "a.png"), _image(9, "c.png", sized=False)]
    anns = [_ann(2, 7, [1, 2, 10, 5]), _ann(2, 90, [0, 0, 40, 30]), _ann(5, 3, [3.5, 4, 2, 2])]
    split, classes, report = read_coco(_coco(tmp_path / "ann.json", images, anns), tmp_path)
    assert classes == ["zebra", "cat", "apple"]  # ids 3, 7, 90 -> labels 0, 1, 2
    assert split.ids == [2, 5, 9]
    assert [f.name for f in split.files] == ["a.png", "b.png", "c.png"]
    assert split.boxes[0].tolist() == [[1, 2, 11, 7], [0, 0, 40, 30]]
    assert split.labels[0].tolist() == [1, 2]
    assert split.boxes[1].tolist() == [[3.5, 4, 5.5, 6]] and split.labels[1].tolist() == [0]
    assert split.sizes == [(H, W), (H, W), (20, 50)]  # the last from the file header
    assert (report.boxes, report.images_without_boxes, report.clipped) == (3, 1, 0)
    assert load_coco(tmp_path / "ann.json", tmp_path).category_ids == [3, 7, 90]


def test_read_coco_leaves_out_and_counts_crowd_boxes(tmp_path):
    _png(tmp_path / "a.png")
    anns = [_ann(1, 3, [1, 1, 5, 5], iscrowd=1), _ann(1, 7, [2, 2, 4, 4])]
    split, _, report = read_coco(_coco(tmp_path / "a.json", [_image(1, "a.png")], anns), tmp_path)
    assert split.boxes[0].tolist() == [[2, 2, 6, 6]] and split.labels[0].tolist() == [1]
    assert (report.crowd, report.boxes) == (1, 1)
    assert "1 crowd boxes ignored" in report.summary()


def test_read_coco_clips_and_drops_bad_boxes_keeping_labels_aligned(tmp_path):
    _png(tmp_path / "a.png")
    anns = [
        _ann(1, 3, [-5, 0, 10, 10]),  # clipped to x 0..5
        _ann(1, 7, [3, 3, 0, 9]),  # zero width: empty
        _ann(1, 90, [8, 0, -6, 4]),  # negative width
        _ann(1, 90, [35, 25, 10, 10]),  # clipped to 35..40, 25..30
        _ann(1, 7, [50, 5, 5, 5]),  # wholly outside: empty after clipping
    ]
    split, _, report = read_coco(_coco(tmp_path / "a.json", [_image(1, "a.png")], anns), tmp_path)
    assert split.boxes[0].tolist() == [[0, 0, 5, 10], [35, 25, 40, 30]]
    assert split.labels[0].tolist() == [0, 2]  # the dropped boxes took their labels with them
    assert (report.clipped, report.dropped_empty, report.dropped_negative) == (2, 2, 1)
    assert all("a.png" in line for line in report.examples)


def test_read_coco_unknown_category_error_names_the_image_and_id(tmp_path):
    _png(tmp_path / "pic.png")
    path = _coco(tmp_path / "a.json", [_image(1, "pic.png")], [_ann(1, 4, [1, 1, 2, 2])])
    with pytest.raises(DatasetError, match=r"pic\.png.*category id 4"):
        read_coco(path, tmp_path)


def test_read_coco_missing_image_file_is_named(tmp_path):
    _png(tmp_path / "a.png")
    path = _coco(tmp_path / "a.json", [_image(1, "a.png"), _image(2, "gone.png")], [])
    with pytest.raises(DatasetError, match=r"gone\.png.*does not exist"):
        read_coco(path, tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "cannot be read as JSON"),
        (json.dumps({"images": [], "categories": []}), "no key annotations"),
        (json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}), "file_name"),
        (
            json.dumps(
                {
                    "images": [],
                    "annotations": [_ann(4, 1, [0, 0, 1, 1])],
                    "categories": [{"id": 1, "name": "x"}],
                }
            ),  # fmt: skip
            "image id 4",
        ),
    ],
)
def test_read_coco_broken_files_are_named_with_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as err:
        read_coco(path, tmp_path)
    assert str(path) in str(err.value)


def test_read_coco_finds_the_image_folder_from_the_file_name(tmp_path):
    _png(tmp_path / "images" / "val2017" / "a.png")
    path = _coco(tmp_path / "annotations" / "instances_val2017.json", [_image(1, "a.png")], [])
    assert split_name(path) == "val2017"
    assert load_coco(path).image_dir == tmp_path / "images" / "val2017"
    (tmp_path / "images" / "val2017" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"looked for a\.png in .*images/val2017"):
        read_coco(path)


def test_write_coco_round_trips_and_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    for name in ("a.png", "b.png"):
        _png(tmp_path / "img" / name)
    anns = [
        _ann(3, 7, [1.25, 2.5, 10.125, 5]),
        _ann(3, 90, [0, 0, 40, 30]),
        _ann(8, 3, [3, 4, 2, 2]),
    ]
    images = [_image(3, "a.png"), _image(8, "b.png")]
    src = load_coco(_coco(tmp_path / "in.json", images, anns), tmp_path / "img")
    out = write_coco(src.split, src.classes, tmp_path / "out" / "instances_x.json",
                     image_root=tmp_path / "img", category_ids=src.category_ids)  # fmt: skip
    back = load_coco(out, tmp_path / "img")
    _same_split(src.split, back.split, atol=0.01)
    assert (back.classes, back.category_ids, back.split.ids) == (src.classes, [3, 7, 90], [3, 8])
    coco = COCO(str(out))
    assert sorted(coco.getCatIds()) == [3, 7, 90]
    assert len(coco.getAnnIds(imgIds=[3])) == 2
    assert coco.loadImgs([8])[0]["file_name"] == "b.png"
    assert coco.loadAnns(coco.getAnnIds(imgIds=[3], catIds=[7]))[0]["bbox"] == [
        1.25,
        2.5,
        10.125,
        5,
    ]


# ---------------------------------------------------------------- YOLO


def test_read_yolo_converts_normalised_boxes_to_pixels(tmp_path):
    labels = {"a": "1 0.5 0.5 0.25 0.2\n\n0 0.125 0.1 0.25 0.2\n", "b": None}
    split, classes, report = read_yolo(_yolo(tmp_path, labels))
    assert classes == ["cat", "dog"]
    # class 1 centred at (20, 15), 10 wide and 6 high; class 0 in the top-left corner
    assert split.boxes[0].tolist() == [[15, 12, 25, 18], [0, 0, 10, 6]]
    assert split.labels[0].tolist() == [1, 0]
    assert split.boxes[1].shape == (0, 4)  # no label file: an image without objects
    assert split.ids == [0, 1] and split.sizes == [(H, W), (H, W)]
    assert (report.boxes, report.images_without_boxes, report.clipped) == (2, 1, 0)


def test_read_yolo_snaps_rounding_at_the_edge_but_clips_real_overshoot(tmp_path):
    labels = {"7": "0 0.5000004 0.5 1.000001 0.5\n0 0.9 0.5 0.4 0.2\n"}
    split, _, report = read_yolo(_yolo(tmp_path, labels), "train")
    assert split.boxes[0].tolist() == [[0, 7.5, 40, 22.5], [28, 12, 40, 18]]
    assert report.clipped == 1  # only the box reaching 0.1 of the width outside
    assert split.ids == [7]  # integer file stems are the ids


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", r"a\.txt:2: expected 5 fields"),
        ("0 0.5 half 0.2 0.2", r"a\.txt:2: not a number"),
        ("2 0.5 0.5 0.2 0.2", r"a\.txt:2: class 2 .* valid ids are 0\.\.1"),
        ("-1 0.5 0.5 0.2 0.2", r"a\.txt:2: class -1 .* 0\.\.1"),
        ("0.5 0.5 0.5 0.2 0.2", r"a\.txt:2: class 0\.5 .* 0\.\.1"),
    ],
)
def test_read_yolo_bad_lines_are_named_by_file_and_line(tmp_path, line, message):
    path = _yolo(tmp_path, {"a": f"0 0.5 0.5 0.1 0.1\n{line}\n"})
    with pytest.raises(DatasetError, match=message):
        read_yolo(path)


def test_read_yolo_yaml_forms_and_unknown_split(tmp_path):
    root = tmp_path / "set"
    _png(root / "images" / "x" / "a.png")
    _png(root / "more" / "images" / "b.png")
    (root / "more" / "labels").mkdir()
    (root / "more" / "labels" / "b.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    (root / "val.txt").write_text("more/images/b.png\n")
    doc = {"path": "set", "train": ["images/x", "val.txt"], "val": "val.txt",
           "names": {0: "a", 1: "b", 2: "c"}, "nc": 3}  # fmt: skip
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(doc))
    assert yolo_splits(tmp_path) == ["train", "val"]
    split, classes, _ = read_yolo(tmp_path, "train")
    assert [f.name for f in split.files] == ["a.png", "b.png"] and classes == ["a", "b", "c"]
    assert split.labels[1].tolist() == [2] and split.boxes[1].tolist() == [[10, 7.5, 30, 22.5]]
    with pytest.raises(DatasetError, match="no split 'test'; it has train, val"):
        read_yolo(tmp_path, "test")


def test_label_path_replaces_the_last_images_folder():
    assert label_path("/d/images/x/images/a.b.jpg").as_posix() == "/d/images/x/labels/a.b.txt"
    assert label_path("/d/pics/a.jpg").as_posix() == "/d/pics/a.txt"


def test_write_yolo_round_trips_and_refuses_to_overwrite(tmp_path):
    labels = {
        "a": "1 0.5 0.5 0.25 0.2\n0 0.3 0.4 0.123457 0.2\n",
        "b": None,
        "c": "0 0.1 0.1 0.2 0.2",
    }
    src, classes, _ = read_yolo(_yolo(tmp_path / "src", labels))
    out = write_yolo({"train": src, "val": src.subset([2])}, classes, tmp_path / "out")
    back, back_classes, _ = read_yolo(out, "train")
    _same_split(src, back, atol=1e-3 * W)
    assert back_classes == classes and yolo_splits(out) == ["train", "val"]
    assert (tmp_path / "out" / "labels" / "train" / "b.txt").read_text() == ""
    with pytest.raises(DatasetError, match="not empty"):
        write_yolo({"train": src}, classes, tmp_path / "out")
    write_yolo({"train": src.subset([0])}, classes, tmp_path / "out", overwrite=True)
    assert len(read_yolo(out, "train")[0]) == 1  # the old images of the split are gone


def test_write_yolo_refuses_two_images_with_one_name(tmp_path):
    a, b = _png(tmp_path / "x" / "a.png"), _png(tmp_path / "y" / "a.png")
    split = DetectionSet([a, b], [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, [(H, W)] * 2, [1, 2])
    with pytest.raises(DatasetError, match="same file name"):
        write_yolo({"train": split}, ["c"], tmp_path / "out")


# ---------------------------------------------------------------- conversion


def test_convert_coco_to_yolo_to_coco_round_trips(tmp_path):
    for name in ("a.png", "b.png"):
        _png(tmp_path / "images" / "train2017" / name)
    anns = [_ann(1, 7, [1.5, 2, 10, 5]), _ann(1, 90, [0, 0, 40, 30]), _ann(2, 3, [3, 4, 2, 2]),
            _ann(2, 3, [1, 1, 5, 5], iscrowd=1)]  # fmt: skip
    json_path = tmp_path / "annotations" / "instances_train2017.json"
    _coco(json_path, [_image(1, "a.png"), _image(2, "b.png")], anns)
    src = load_coco(json_path)
    to_yolo = convert_dataset(json_path, tmp_path / "yolo", to="yolo")
    assert to_yolo.path == tmp_path / "yolo" / "data.yaml" and to_yolo.splits == {"train2017": 2}
    assert to_yolo.report.crowd == 1 and to_yolo.report.boxes == 3
    to_coco = convert_dataset(tmp_path / "yolo", tmp_path / "coco", to="coco")
    assert to_coco.path == tmp_path / "coco" / "annotations"
    back = load_coco(to_coco.path / "instances_train2017.json")
    assert back.image_dir == tmp_path / "coco" / "images" / "train2017"
    assert back.classes == src.classes and back.category_ids == [1, 2, 3]
    _same_split(src.split, back.split, atol=0.01)
    assert back.split.files[0].read_bytes() == src.split.files[0].read_bytes()


def test_convert_rejects_unknown_formats(tmp_path):
    yaml_path = _yolo(tmp_path / "y", {"a": None})
    with pytest.raises(DatasetError, match="expected one of coco, yolo"):
        convert_dataset(yaml_path, tmp_path / "out", to="voc")
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(DatasetError, match="expected a COCO .json file, or a YOLO data.yaml"):
        convert_dataset(tmp_path / "notes.csv", tmp_path / "out", to="yolo")
    with pytest.raises(DatasetError, match="only taken with a COCO"):
        convert_dataset(yaml_path, tmp_path / "out", to="coco", images=tmp_path)


# ---------------------------------------------------------------- real data


@pytest.fixture
def coco128(mirror) -> Path:
    if not (mirror / "coco128").is_dir():
        pytest.skip(f"no coco128 in the dataset mirror {mirror}")
    return mirror / "coco128"


def test_coco128_coco_and_yolo_agree_image_by_image(coco128):
    json_path = coco128 / "annotations" / "instances_train2017.json"
    coco, coco_classes, coco_report = read_coco(json_path, coco128 / "images" / "train2017")
    yolo, yolo_classes, yolo_report = read_yolo(coco128, split="train")
    assert (len(coco), coco.num_boxes(), coco_report.crowd) == (128, 929, 10)
    assert (len(yolo), yolo.num_boxes()) == (128, 929)
    assert coco_report.clipped == yolo_report.clipped == 0
    assert [f.name for f in coco.files] == [f.name for f in yolo.files]
    assert coco.ids == yolo.ids and coco.sizes == yolo.sizes
    pairs = zip(coco.files, coco.boxes, coco.labels, yolo.boxes, yolo.labels, strict=True)
    for f, cb, cl, yb, yl in pairs:
        _match_boxes(f.name, cb, [coco_classes[i] for i in cl], yb, [yolo_classes[i] for i in yl])


def _match_boxes(name: str, boxes_a, names_a: list[str], boxes_b, names_b: list[str]) -> None:
    """Every box of a has its own box of b with the same class name, within 1 px."""
    assert len(boxes_a) == len(boxes_b), name
    free = list(range(len(boxes_b)))
    for box, cls in zip(boxes_a, names_a, strict=True):
        near = [j for j in free if names_b[j] == cls and (boxes_b[j] - box).abs().max() <= 1]
        assert near, f"{name}: no YOLO box for {cls} {box.tolist()}"
        free.remove(near[0])


def test_write_yolo_can_link_instead_of_copying(tmp_path):
    src, classes, _ = read_yolo(_yolo(tmp_path / "src", {"a": "0 0.5 0.5 0.5 0.5\n"}))
    out = write_yolo({"val": src}, classes, tmp_path / "out", copy_images=False)
    image = tmp_path / "out" / "images" / "val" / "a.png"
    assert image.is_symlink() and image.resolve() == src.files[0].resolve()
    _same_split(src, read_yolo(out, "val")[0], atol=1e-3 * W)
