"""digits-detect: exact boxes, fair scenes, deterministic files, atomic writes, COCO output."""

from __future__ import annotations

import dataclasses
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imrec.data import digits_detect as dd
from imrec.data import sources
from imrec.data.digits_detect import (
    INK,
    DigitsDetectSpec,
    checksum,
    generate_digits_detect,
    render_scene,
)
from imrec.data.sources import DatasetError

SMALL = DigitsDetectSpec(canvas=64, max_digits=4, min_scale=16, max_scale=24, train=20, val=5,
                         test=5)  # fmt: skip
# The synthetic digit is a filled block over rows 4..23 and columns 8..19 of the 28x28 cell.
ROWS, COLS = (4, 24), (8, 20)


def _digits(labels: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of known extent with a little texture, one per label."""
    rng = np.random.default_rng(seed)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    images[:, ROWS[0] : ROWS[1], COLS[0] : COLS[1]] = rng.integers(200, 256, (len(labels), 20, 12))
    return images, np.array(labels, np.int64)


def _slashes(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Thick diagonal strokes: unlike blocks, two of them can share box area without touching."""
    images = np.zeros((count, 28, 28), np.uint8)
    for row in range(4, 24):
        col = 8 + round((row - 4) * 11 / 19)
        images[:, row, max(col - 2, 8) : col + 2] = 255
    return images, np.arange(count, dtype=np.int64) % 10


TRAIN = _digits([0, 1, 2, 3, 4] * 2)
TEST = _digits([5, 6, 7, 8, 9] * 2, seed=1)  # test digits carry labels train never has


def _clean(spec: DigitsDetectSpec = SMALL, **changes) -> DigitsDetectSpec:
    """The spec without noise and clutter, so canvas pixels >= INK are exactly digit ink."""
    return dataclasses.replace(spec, noise=0.0, clutter=0, **changes)


def _scenes(spec: DigitsDetectSpec, count: int, digits=None, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [render_scene(rng, *(digits or TRAIN), spec) for _ in range(count)]


def _scenes_one_seed_each(spec: DigitsDetectSpec, count: int):
    return [render_scene(np.random.default_rng(i), *TRAIN, spec) for i in range(count)]


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _box_mask(boxes: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    for x1, y1, x2, y2 in boxes.astype(int):
        mask[y1:y2, x1:x2] = True
    return mask


def _assert_edges_have_ink(image: np.ndarray, boxes: np.ndarray, level: float = INK) -> None:
    for x1, y1, x2, y2 in boxes.astype(int):
        inside = image[y1:y2, x1:x2]
        edges = [inside[0], inside[-1], inside[:, 0], inside[:, -1]]
        assert all(edge.max() >= level for edge in edges), (x1, y1, x2, y2)


def _generate(root: Path, spec: DigitsDetectSpec = SMALL, digits=(TRAIN, TEST)) -> Path:
    return generate_digits_detect(root / spec.key(), spec, *digits)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def _boxes_by_image(coco: dict) -> dict[int, np.ndarray]:
    out = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        out[a["image_id"]].append([x, y, x + w, y + h])
    return {k: np.array(v, np.float32).reshape(-1, 4) for k, v in out.items()}


# --- boxes ---------------------------------------------------------------------------------


def test_boxes_are_the_exact_hull_of_each_digits_ink():
    # Without overlap, noise and clutter, every bright pixel belongs to exactly one digit, so
    # the bright pixels inside a box must reach all four of its edges and none may lie outside.
    spec = _clean(max_overlap=0.0)
    for image, boxes, _ in _scenes(spec, 40):
        assert not (image[~_box_mask(boxes, spec.canvas)] >= INK).any()
        for x1, y1, x2, y2 in boxes.astype(int):
            bright = image[y1:y2, x1:x2] >= INK
            rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
            assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (0, y2 - y1, 0, x2 - x1)


def test_overlapping_digits_keep_their_own_boxes():
    spec = _clean(max_overlap=0.3, max_digits=6)
    overlapped = 0
    for image, boxes, _ in _scenes(spec, 40, digits=_slashes(10)):
        assert not (image[~_box_mask(boxes, spec.canvas)] >= INK).any()
        _assert_edges_have_ink(image, boxes)
        overlapped += sum(_iou(a, b) > 0 for a, b in combinations(boxes.tolist(), 2))
    assert overlapped > 0  # the test must actually see boxes that overlap


def test_ink_of_two_digits_never_touches():
    # Touching strokes would read as one shape; every connected bright blob must fit in a box.
    from scipy import ndimage

    spec = _clean(max_overlap=0.3, max_digits=6)
    for image, boxes, _ in _scenes(spec, 40, digits=_slashes(10)):
        blobs, _ = ndimage.label(image >= INK, structure=np.ones((3, 3)))
        for rows, cols in ndimage.find_objects(blobs):
            hull = (cols.start, rows.start, cols.stop, rows.stop)
            assert any(_contains(box, hull) for box in boxes.tolist()), hull


def _contains(outer, inner) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )


def test_boxes_lie_in_the_canvas_with_sizes_from_the_scale_range():
    for _, boxes, labels in _scenes(SMALL, 40):
        assert boxes.dtype == np.float32 and labels.dtype == np.int64
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= SMALL.canvas).all()
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        # The block is 12/28 of the cell wide and 20/28 high; bilinear edges add up to 2 px.
        assert (w >= SMALL.min_scale * 12 / 28 - 2).all() and (
            w <= SMALL.max_scale * 12 / 28 + 2
        ).all()
        assert (h >= SMALL.min_scale * 20 / 28 - 2).all() and (
            h <= SMALL.max_scale * 20 / 28 + 2
        ).all()


def test_counts_and_overlap_follow_the_spec():
    spec = dataclasses.replace(SMALL, max_digits=6, max_overlap=0.15)
    counts, ious = [], [0.0]
    for _, boxes, _ in _scenes(spec, 60, digits=_slashes(10)):
        counts.append(len(boxes))
        ious += [_iou(a, b) for a, b in combinations(boxes.tolist(), 2)]
    assert min(counts) >= spec.min_digits and max(counts) <= spec.max_digits
    assert len(set(counts)) >= 3  # the count really varies
    assert 0.0 < max(ious) <= 0.15 + 1e-6  # boxes do overlap, never beyond the limit


def test_roomy_scenes_get_exactly_the_planned_count():
    spec = dataclasses.replace(SMALL, canvas=128, min_digits=3, max_digits=3)
    assert {len(boxes) for _, boxes, _ in _scenes(spec, 20)} == {3}


def test_crowded_scenes_give_up_on_digits_but_keep_one():
    # Six big digits cannot fit on a small canvas: some are given up, never fewer than one.
    spec = dataclasses.replace(SMALL, canvas=32, min_digits=6, max_digits=6, min_scale=28,
                               max_scale=30, max_overlap=0.0)  # fmt: skip
    counts = [len(boxes) for _, boxes, _ in _scenes(spec, 20)]
    assert max(counts) < 6 and min(counts) >= 1


def test_digits_with_too_little_ink_are_left_out():
    images, labels = _digits([0, 1])
    images[1] = 0
    images[1, 10:12, 10:12] = 255  # a 2x2 dot: its ink box is under 4 px at any scale
    drawn = [label for _, _, lab in _scenes(_clean(), 30, digits=(images, labels)) for label in lab]
    assert set(drawn) == {0}


def test_digits_without_ink_are_an_error():
    with pytest.raises(DatasetError, match="ink"):
        render_scene(np.random.default_rng(0), np.zeros((3, 28, 28), np.uint8), [0, 1, 2], SMALL)


def test_clutter_stays_out_of_every_box():
    # Same seed with and without clutter: digits and background are drawn first, so the two
    # canvases may differ only where clutter was drawn, and that must be away from every box.
    with_clutter = _scenes_one_seed_each(dataclasses.replace(SMALL, noise=0.0, clutter=3), 40)
    without = _scenes_one_seed_each(_clean(), 40)
    strokes = 0
    for (a, boxes_a, _), (b, boxes_b, _) in zip(with_clutter, without, strict=True):
        np.testing.assert_array_equal(boxes_a, boxes_b)
        changed = a != b
        strokes += changed.any()
        assert not (changed & dd._grow(_box_mask(boxes_a, SMALL.canvas), 1)).any()
        assert (a[changed] >= 60).all()  # strokes are brighter than the background
    assert strokes >= 20  # most scenes have clutter


def test_noise_has_the_requested_spread():
    noisy = _scenes(dataclasses.replace(SMALL, clutter=0, noise=6.0), 5)
    clean = _scenes(_clean(), 5)
    # Away from 0 and 255, where clipping would shrink the spread.
    diff = np.concatenate([(a.astype(float) - b)[(b >= 15) & (b <= 230)] for (a, _, _), (b, _, _) in
                           zip(noisy, clean, strict=True)])  # fmt: skip
    assert 5.0 < diff.std() < 7.0


# --- generated dataset -----------------------------------------------------------------------


def test_dataset_layout_and_coco_files(tmp_path):
    from pycocotools.coco import COCO

    root = _generate(tmp_path)
    assert root == tmp_path / SMALL.key()
    for split in ("train", "val", "test"):
        coco = COCO(str(root / "annotations" / f"{split}.json"))
        assert len(coco.getImgIds()) == SMALL.split_size(split)
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [str(d) for d in range(10)]
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(root / "images" / split / image["file_name"]) as im:
                assert im.mode == "L" and im.size == (image["width"], image["height"])
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann["bbox"]
            assert ann["area"] == w * h and ann["iscrowd"] == 0


def test_dataset_boxes_keep_the_rules(tmp_path):
    root = _generate(tmp_path)
    for split in ("train", "val", "test"):
        for image_id, boxes in _boxes_by_image(_coco(root, split)).items():
            assert SMALL.min_digits <= len(boxes) <= SMALL.max_digits
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= SMALL.canvas).all()
            assert all(_iou(a, b) <= SMALL.max_overlap for a, b in combinations(boxes.tolist(), 2))
            image = np.asarray(Image.open(root / "images" / split / f"{image_id - 1:06d}.png"))
            _assert_edges_have_ink(image, boxes, level=INK - 4 * SMALL.noise)


def test_test_scenes_use_only_test_digits(tmp_path):
    root = _generate(tmp_path)
    categories = {s: {a["category_id"] for a in _coco(root, s)["annotations"]} for s in dd.SPLITS}
    assert categories["train"] <= {1, 2, 3, 4, 5} and categories["val"] <= {1, 2, 3, 4, 5}
    assert categories["test"] <= {6, 7, 8, 9, 10} and categories["test"]


def test_same_spec_gives_identical_files_and_another_seed_does_not(tmp_path):
    a = _files(_generate(tmp_path / "a"))
    b = _files(_generate(tmp_path / "b"))
    assert a == b
    c = _files(_generate(tmp_path / "c", dataclasses.replace(SMALL, seed=1)))
    assert a.keys() - {"spec.json"} == c.keys() - {"spec.json"}
    assert a["annotations/train.json"] != c["annotations/train.json"]
    assert a["images/test/000000.png"] != c["images/test/000000.png"]


def test_scenes_another_process_made_while_this_one_waited_are_taken(tmp_path, monkeypatch):
    """Generation runs under the cache's lock; a process that waited for it finds the scenes
    another one generated meanwhile and keeps them (no second generation)."""
    import shutil
    from contextlib import contextmanager

    made = _generate(tmp_path / "made")  # what the other process wrote
    held = []

    @contextmanager
    def other_process_first(path, what):
        held.append(path)
        shutil.copytree(made, path)  # the other process finished while this one waited
        yield

    monkeypatch.setattr(sources, "one_at_a_time", other_process_first)
    monkeypatch.setattr(dd, "_write_split", lambda *a: pytest.fail("generated a second time"))
    root = _generate(tmp_path / "here")
    assert held == [root] and _files(root) == _files(made)


def test_spec_json_records_the_spec_and_checksum(tmp_path):
    root = _generate(tmp_path)
    info = json.loads((root / "spec.json").read_text())
    assert {k: info[k] for k in dataclasses.asdict(SMALL)} == dataclasses.asdict(SMALL)
    assert info["key"] == SMALL.key() and info["checksum"] == checksum(root)
    (root / "annotations" / "val.json").write_text("{}")
    assert checksum(root) != info["checksum"]


def test_key_is_stable_and_names_every_field():
    assert SMALL.key() == dataclasses.replace(SMALL).key()
    step = {int: 1, float: 0.05}
    keys = {dataclasses.replace(SMALL, **{f.name: v + step[type(v)]}).key()
            for f in dataclasses.fields(SMALL) for v in [getattr(SMALL, f.name)]}  # fmt: skip
    assert len(keys) == len(dataclasses.fields(SMALL)) and SMALL.key() not in keys


@pytest.mark.parametrize(
    "change",
    [
        {"min_digits": 0},
        {"max_digits": 0},
        {"max_scale": 65},
        {"max_overlap": 1.5},
        {"noise": -1.0},
        {"test": -1},
        {"min_scale": 30},
    ],  # fmt: skip
)
def test_bad_specs_are_refused(change):
    with pytest.raises(ValueError, match="DigitsDetectSpec"):
        dataclasses.replace(SMALL, **change)


def test_malformed_digit_arrays_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="train_digits"):
        _generate(tmp_path, digits=((TRAIN[0].astype(np.float32), TRAIN[1]), TEST))
    with pytest.raises(DatasetError, match="test_digits"):
        _generate(tmp_path, digits=(TRAIN, (TEST[0], TEST[1] + 5)))
    assert not any(tmp_path.iterdir())


def test_a_finished_dataset_is_reused_without_rendering(tmp_path, monkeypatch):
    root = _generate(tmp_path)
    before = _files(root)

    def fail(*args, **kwargs):
        raise AssertionError("rendered again")

    monkeypatch.setattr(dd, "render_scene", fail)
    assert _generate(tmp_path) == root
    assert _files(root) == before


def test_a_crash_leaves_no_dataset_behind(tmp_path, monkeypatch):
    calls = []

    def crash_on_the_25th(*args, **kwargs):
        calls.append(1)
        if len(calls) == 25:  # in the val split, after train is fully written
            raise RuntimeError("killed")
        return render_scene(*args, **kwargs)

    monkeypatch.setattr(dd, "render_scene", crash_on_the_25th)
    with pytest.raises(RuntimeError, match="killed"):
        _generate(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_folder_is_not_overwritten(tmp_path):
    root = tmp_path / SMALL.key()
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="no spec.json"):
        _generate(tmp_path)
    assert (root / "notes.txt").read_text() == "mine"


# --- real MNIST ------------------------------------------------------------------------------


def test_real_mnist_scenes_have_tight_boxes(tmp_path, mirror):
    from imrec.data.idx import read_idx

    images = read_idx(mirror / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mirror / "mnist" / "t10k-labels-idx1-ubyte.gz")
    train, test = (images[:5000], labels[:5000]), (images[5000:], labels[5000:])
    spec = DigitsDetectSpec(train=20, val=5, test=5)
    for image, boxes, _ in _scenes(_clean(spec), 30, digits=train):
        assert not (image[~_box_mask(boxes, spec.canvas)] >= INK).any()
        _assert_edges_have_ink(image, boxes)
    root = generate_digits_detect(tmp_path / spec.key(), spec, train, test)
    for split in dd.SPLITS:
        for image_id, boxes in _boxes_by_image(_coco(root, split)).items():
            image = np.asarray(Image.open(root / "images" / split / f"{image_id - 1:06d}.png"))
            assert 1 <= len(boxes) <= spec.max_digits
            _assert_edges_have_ink(image, boxes, level=INK - 4 * spec.noise)
