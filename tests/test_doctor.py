"""The data doctor (imrec doctor) and the fixes lists it writes (imrec train --exclude/--relabel).

A small colour folder with planted problems: unreadable files of three kinds, a blank and a
tiny image, an exact and a near duplicate across train and test, and a red image filed as
green. The classes (red, green, blue noise) are learnt in a few epochs, so the label issue is
found for sure.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import count_cpu_map
from PIL import Image

from imrec.classify.doctor import DoctorConfig, diagnose
from imrec.cli import main
from imrec.data import DatasetError, load_dataset
from imrec.data.fixes import apply_fixes

COLOURS = {"red": 0, "green": 1, "blue": 2}
FAST = {"folds": 2, "epochs": 8, "model": "cnn", "size": 16, "progress": False}


def _noise(rng, colour: int, size: int = 24) -> np.ndarray:
    """A smooth random texture whose ``colour`` channel is the brightest."""
    img = rng.integers(0, 90, (6, 6, 3))
    img[..., colour] += rng.integers(120, 165)
    small = Image.fromarray(img.astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.Resampling.BILINEAR))


def make_folder(root: Path, n_train: int = 16, n_test: int = 6, seed: int = 0) -> dict:
    """A train/test folder of three colour classes with the problems named in the return."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for name, c in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_noise(rng, c)).save(root / split / name / f"{i}.png")
    planted = {
        "mislabelled": "train/green/red-filed-as-green.png",
        "blank": "train/blue/blank.png",
        "tiny": "train/blue/tiny.png",
        "exact": ("train/red/0.png", "test/red/copy-of-train-0.png"),
        "near": ("train/blue/1.png", "test/blue/jpeg-of-train-1.jpg"),
    }
    Image.fromarray(_noise(rng, COLOURS["red"])).save(root / planted["mislabelled"])
    Image.new("L", (24, 24), 90).save(root / planted["blank"])  # also the one grey file
    Image.fromarray(_noise(rng, COLOURS["blue"], size=10)).save(root / planted["tiny"])
    shutil.copy(root / planted["exact"][0], root / planted["exact"][1])
    buf = io.BytesIO()
    Image.open(root / planted["near"][0]).save(buf, "JPEG", quality=92)
    (root / planted["near"][1]).write_bytes(buf.getvalue())
    (root / "train/red/empty.png").write_bytes(b"")
    whole = (root / "train/red/1.png").read_bytes()
    (root / "train/red/truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "train/green/notes.png").write_text("not an image")
    return planted


@pytest.fixture(scope="module")
def doctored(tmp_path_factory):
    """The folder, and the doctor's report on it (with fixes lists written)."""
    tmp = tmp_path_factory.mktemp("doctor")
    root = tmp / "colours"
    planted = make_folder(root)
    out = tmp / "report"
    report = diagnose(
        f"folder:{root}",
        out,
        DoctorConfig(**FAST),
        write_exclude=tmp / "exclude.json",
        write_relabel=tmp / "relabel.json",
    )
    return root, planted, out, report, tmp


def _files(items) -> set[str]:
    return {i.get("file") for i in items}


def test_doctor_finds_broken_blank_and_tiny_images(doctored):
    _, planted, _, report, _ = doctored
    integ = report["integrity"]
    assert integ["unreadable_kinds"] == {"zero-byte": 1, "truncated": 1, "not an image": 1}
    assert _files(integ["blank"]) == {planted["blank"]}
    assert _files(integ["tiny"]) == {planted["tiny"]}
    total = sum(report["sizes"].values())
    assert integ["grey_colour"] == {"grey": 1, "colour": total - 1, "mixed": True}


def test_doctor_leaves_cleanvision_logging_as_it_found_it(doctored):
    """cleanvision is quieted for the doctor's call only: a user's logging stays theirs."""
    import logging

    assert doctored[3]["integrity"]["grey_colour"]["grey"] == 1  # cleanvision's flags are in
    assert logging.getLogger("cleanvision").level == logging.NOTSET


def test_doctor_finds_duplicates_across_splits(doctored):
    _, planted, _, report, _ = doctored
    groups = report["duplicates"]["groups"]
    by_files = {frozenset(_files(g["items"])): g for g in groups}
    exact = by_files[frozenset(planted["exact"])]
    near = by_files[frozenset(planted["near"])]
    assert exact["kind"] == "exact" and exact["across_splits"] and not exact["conflicting_labels"]
    assert near["kind"] == "near" and near["splits"] == ["test", "train"]
    assert near["items"][0]["similarity"] >= 0.995
    # Nothing else: random noise images are not alike.
    assert len(groups) == 2, [sorted(_files(g["items"])) for g in groups]


def test_doctor_flags_the_mislabelled_image_first(doctored):
    _, planted, _, report, _ = doctored
    train = report["labels"]["train"]
    worst = train["ranking"][0]
    assert worst["file"] == planted["mislabelled"]
    assert (worst["label"], worst["suggested"], worst["flagged"]) == ("green", "red", True)
    assert worst["score"] < 0.5
    assert train["flagged"] >= 1 and train["out_of_sample_accuracy"] > 0.9
    assert set(report["labels"]) == {"train", "val", "test"}
    assert len(report["predictions"]["fold_accuracy"]) == 2


def test_doctor_writes_report_and_galleries(doctored):
    _, planted, out, report, _ = doctored
    saved = json.loads((out / "doctor.json").read_text())
    assert saved["labels"]["train"]["ranking"][0]["file"] == planted["mislabelled"]
    md = (out / "doctor.md").read_text()
    assert "# imrec doctor: folder:" in md and planted["mislabelled"] in md
    for name in ("labels-train.png", "duplicates.png", "outliers.png", "integrity.png"):
        assert (out / name).stat().st_size > 1000, name
    assert report["imbalance"]["counts"]["train"]["green"] > 0
    assert report["outliers"]["train"], "every examined split lists its outliers"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".report-")]


def test_exclude_and_relabel_lists_apply_to_training(doctored, tmp_path):
    root, planted, _, _, tmp = doctored
    excl = json.loads((tmp / "exclude.json").read_text())
    assert excl["dataset"] == f"folder:{root}" and excl["kind"] == "exclude"
    files = _files(excl["items"])
    assert {planted["mislabelled"], planted["blank"], planted["exact"][0]} <= files
    assert planted["exact"][1] not in files, "the test copy of a duplicate is kept"
    blank = next(i for i in excl["items"] if i["file"] == planted["blank"])
    assert blank["why"].startswith("blank image:"), "named as blank, whatever else is found"
    relabel = json.loads((tmp / "relabel.json").read_text())
    mis = next(i for i in relabel["items"] if i["file"] == planted["mislabelled"])
    assert mis["suggested"] == "red" and mis["accept"] is True

    data = load_dataset(f"folder:{root}")
    fixed = apply_fixes(data, exclude=tmp / "exclude.json")
    gone = sum(fixed.fixes["excluded"].values())
    sizes = [sum(len(getattr(d, s)) for s in ("train", "val", "test")) for d in (data, fixed)]
    assert sizes[0] - sizes[1] == gone == len(excl["items"])
    reasons = fixed.fixes["reasons"]  # counted by kind, for the run's report
    assert {"label issue", "blank image", "duplicate"} <= set(reasons)
    assert set(reasons) <= {"label issue", "blank image", "duplicate", "conflicting duplicate"}
    relabelled = apply_fixes(data, relabel=tmp / "relabel.json")
    red = data.classes.index("red")
    split = next(s for s in ("train", "val") if planted["mislabelled"] in _split_files(data, s))
    pos = _split_files(data, split).index(planted["mislabelled"])
    assert int(getattr(relabelled, split).labels[pos]) == red

    args = ["train", f"folder:{root}", "--model", "cnn", "--epochs", "1", "--size", "16"]
    lists = ["--exclude", str(tmp / "exclude.json"), "--relabel", str(tmp / "relabel.json")]
    assert main([*args, *lists, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["fixes"]["excluded"] == fixed.fixes["excluded"]
    assert sum(report["fixes"]["relabelled"].values()) == len(relabel["items"])
    assert sum(report["sizes"].values()) == sizes[1]
    assert "Data fixes:" in (tmp_path / "run" / "report.md").read_text()


def _split_files(data, split: str) -> list[str]:
    return [data.files[i] for i in getattr(data, split).origin.tolist()]


def test_fixes_lists_are_refused_for_changed_data(doctored, tmp_path):
    root, _, _, _, tmp = doctored
    copy = tmp_path / "colours"
    shutil.copytree(root, copy)
    other = load_dataset(f"folder:{copy}")
    with pytest.raises(DatasetError, match="written for dataset"):
        apply_fixes(other, exclude=tmp / "exclude.json")
    data = load_dataset(f"folder:{root}")
    changed = json.loads((tmp / "exclude.json").read_text())
    changed["checksum"] = "0" * 64
    (tmp_path / "old.json").write_text(json.dumps(changed))
    with pytest.raises(DatasetError, match="changed since the list was made"):
        apply_fixes(data, exclude=tmp_path / "old.json")
    with pytest.raises(DatasetError, match="pass it as --relabel"):
        apply_fixes(data, exclude=tmp / "relabel.json")
    with pytest.raises(DatasetError, match="no such file"):
        apply_fixes(data, exclude=tmp_path / "missing.json")


def test_doctor_reuses_cached_predictions(doctored, tmp_path):
    root, _, _, first, _ = doctored
    again = diagnose(f"folder:{root}", tmp_path / "again", DoctorConfig(**FAST))
    assert "cached" in again["predictions"]
    a, b = first["labels"]["train"]["ranking"], again["labels"]["train"]["ranking"]
    assert [i["file"] for i in a] == [i["file"] for i in b]


def test_doctor_leaves_the_old_report_whole_when_it_fails(doctored, tmp_path, monkeypatch):
    root, _, out, _, _ = doctored
    target = tmp_path / "kept"
    shutil.copytree(out, target)
    before = (target / "doctor.json").read_text()

    import imrec.classify.doctor_report as doctor_report

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(doctor_report, "render", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        diagnose(f"folder:{root}", target, DoctorConfig(**FAST))
    assert (target / "doctor.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kept-")]


def test_doctor_bad_input(tmp_path, digits_run):
    with pytest.raises(DatasetError, match="no such folder"):
        diagnose(f"folder:{tmp_path / 'nothing'}", tmp_path / "r", DoctorConfig(**FAST))
    root = tmp_path / "one"
    for name, n in (("a", 6), ("b", 1)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_noise(np.random.default_rng(i), COLOURS["red"])).save(
                root / name / f"{i}.png"
            )
    with (
        pytest.warns(UserWarning, match="no validation image for b"),  # said first, then refused
        pytest.raises(DatasetError, match="fewer training images than the 2 folds"),
    ):
        diagnose(f"folder:{root}", tmp_path / "r", DoctorConfig(**FAST))
    with pytest.raises(DatasetError, match="--folds must be 2 or more, got 1"):
        diagnose("digits", tmp_path / "r", DoctorConfig(folds=1))
    with pytest.raises(DatasetError, match="--splits"):
        diagnose("digits", tmp_path / "r", DoctorConfig(splits=("training",)))
    colours = tmp_path / "colours"
    make_folder(colours)
    with pytest.raises(DatasetError, match="are not those of"):
        diagnose(
            f"folder:{colours}", tmp_path / "r", DoctorConfig(**{**FAST, "run": str(digits_run)})
        )
    assert not (tmp_path / "r").exists(), "a refused run writes nothing"


def test_doctor_with_a_run_and_the_cli(digits_run, tmp_path, capsys):
    rc = main(
        [
            "doctor", "digits", "--run", str(digits_run), "--splits", "test", "--folds", "2",
            "--epochs", "1", "--out", str(tmp_path / "d"), "--quiet",
            "--write-exclude", str(tmp_path / "x.json"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "report:" in out and "exclude list:" in out
    report = json.loads((tmp_path / "d" / "doctor.json").read_text())
    assert report["examined"] == ["test"] and list(report["labels"]) == ["test"]
    assert report["predictions"]["val_test"] == f"the model of {digits_run}"
    items = json.loads((tmp_path / "x.json").read_text())["items"]
    assert all(i["split"] == "test" and i["part"] == "all" for i in items)
    rc = main(["doctor", "digits", "--folds", "1", "--quiet", "--out", str(tmp_path / "e")])
    assert rc == 2 and "--folds must be 2 or more, got 1" in capsys.readouterr().err


def test_close_pairs_match_brute_force():
    import torch

    from imrec.classify.doctor import _close_pairs

    v = torch.nn.functional.normalize(torch.randn(300, 4), dim=1)
    sim = v @ v.T
    want = {(i, j) for i in range(300) for j in range(i + 1, 300) if sim[i, j] >= 0.95}
    got = _close_pairs(v, 0.95, chunk=64)
    assert {(a, b) for a, b, _ in got} == want and len(got) == len(want) > 0
    assert all(abs(s - float(sim[a, b])) < 1e-5 for a, b, s in got)


def test_group_leaks_name_writers_in_two_splits():
    import torch

    from imrec.classify.doctor import group_leaks
    from imrec.data import ClassificationData, ImageSet

    def part(groups):
        n = len(groups)
        return ImageSet(
            torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.zeros(n), torch.tensor(groups)
        )

    data = ClassificationData("x", ["a"], part([1, 2, 2]), part([3]), part([2, 4]))
    assert group_leaks(data) == {"groups": 4, "in_two_or_more_splits": {"2": ["test", "train"]}}
    data = ClassificationData("x", ["a"], part([1]), part([3]), part([4]))
    assert group_leaks(data)["in_two_or_more_splits"] == {}


def test_fold_runs_are_trained_without_the_report_figures(tmp_path, monkeypatch):
    """The cross-validation folds' runs are kept for their weights and scores only (their
    folder is deleted after): they skip the report's figures, and such a run's report is
    whole without them."""
    from imrec.classify import doctor, train
    from imrec.config import build_config

    asked = []
    real_train = train.train

    def spy(run, *args, **kwargs):
        asked.append(run.loop.figures)
        return real_train(run, *args, **kwargs)

    monkeypatch.setattr(train, "train", spy)
    doctor._kfold(
        load_dataset("digits"),
        DoctorConfig(folds=2, epochs=1, progress=False),
        tmp_path,
        _NoPhases(),
    )
    assert asked == [False, False]
    run = tmp_path / "plain"
    report = real_train(
        build_config("digits", "handwriting", train={"epochs": 1, "figures": False}), run,
        progress=False,
    )  # fmt: skip
    assert report["files"] == {} and not list(run.glob("*.png"))
    assert (run / "report.md").is_file() and "## Figures" not in (run / "report.md").read_text()
    assert report["confidence"]["test"]["accepted"] > 0  # calibrated as any run is


class _NoPhases:
    """The doctor's progress phases, unshown."""

    def start(self, name: str) -> None:
        pass


def test_image_properties_of_in_memory_images_are_scored_alike_in_parts(monkeypatch):
    """A built-in dataset's images are scored by cleanvision in parts on every core (from
    PARALLEL_IMAGES on): the same flags and scores as in one piece, in the same order."""
    import dataclasses

    import torch

    from imrec.classify import doctor
    from imrec.core import parallel

    data = load_dataset("digits")
    images = data.train.images.clone()
    images[3] = 2  # dark
    images[700] = 250  # light
    data = dataclasses.replace(data, train=dataclasses.replace(data.train, images=images))
    entries = doctor._entries(data)
    whole = doctor._array_checks(data, entries)  # 1,797 images: below PARALLEL_IMAGES
    monkeypatch.setattr(doctor, "PARALLEL_IMAGES", 100)
    monkeypatch.setenv(parallel.PROCESSES_ENV, "2")  # two parts on any machine
    parts = count_cpu_map(monkeypatch, parallel)  # _array_checks imports it when called
    assert doctor._array_checks(data, entries) == whole and parts == [2]
    flagged = {p: [i["position"] for i in items] for p, items in whole["properties"].items()}
    assert 3 in flagged["dark"] and 700 in flagged["light"], flagged
    assert torch.equal(data.train.images[3], images[3])  # the data are left as they were


def test_cleanvision_starts_as_many_processes_as_imrec_would(tmp_path, monkeypatch):
    """A folder's files are read by cleanvision's own processes: as many as imrec's maps use
    (the cores this process may run on, or IMREC_WORKER_PROCESSES), not the machine's count."""
    from imrec.classify import doctor
    from imrec.core import parallel

    root = tmp_path / "colours"
    make_folder(root, n_train=4, n_test=2)
    data = load_dataset(f"folder:{root}")
    entries = doctor._entries(data)
    asked = []
    real = doctor._cleanvision

    def spy(source, n_jobs=1):
        asked.append(n_jobs)
        return real(source, n_jobs=n_jobs)

    monkeypatch.setattr(doctor, "_cleanvision", spy)
    monkeypatch.setattr(parallel, "MIN_PROCESS_ITEMS", 2)  # the folder is small
    monkeypatch.setattr(parallel, "ITEMS_PER_PROCESS", 1)
    for wanted in ("0", "2"):
        monkeypatch.setenv(parallel.PROCESSES_ENV, wanted)
        doctor._file_checks(data, doctor._folder_root(data), entries)
    assert asked == [1, 2]
