"""Every CLI command end to end, at tiny sizes, on data the tests make or that needs no download."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imrec.cli import main

TINY = ["--epochs", "2", "--quiet", "--seed", "0"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One tiny training run on scikit-learn's digits, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "digits", "--out", str(out), "--epochs", "4", "--quiet"]) == 0
    return out


def _shape_image(kind: str, size: int, rng: np.random.Generator, colour: bool) -> Image.Image:
    """A filled circle, square or triangle at a random place and size on a random background."""
    mode = "RGB" if colour else "L"
    bg = tuple(int(v) for v in rng.integers(0, 80, 3)) if colour else int(rng.integers(0, 80))
    fg = tuple(int(v) for v in rng.integers(170, 256, 3)) if colour else int(rng.integers(170, 256))
    img = Image.new(mode, (size, size + int(rng.integers(0, 9))), bg)
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    return img


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    """A one-folder-per-class dataset: nested folders, grey and colour, odd sizes, bad files."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for kind in ("circle", "square", "triangle"):
        for i in range(40):
            sub = root / kind / ("nested/deeper" if i % 3 == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            img = _shape_image(kind, int(rng.integers(20, 48)), rng, colour=i % 2 == 0)
            img.save(sub / f"{i}.{'png' if i % 4 else 'jpg'}")
    (root / "circle" / "empty.png").write_bytes(b"")
    (root / "square" / "notes.png").write_bytes(b"this is not an image")
    good = (root / "triangle" / "1.png").read_bytes()
    (root / "triangle" / "cut.png").write_bytes(good[: len(good) // 2])
    return root


def test_data_list_names_every_builtin(capsys):
    code, out, _ = run_cli(capsys, "data", "list")
    assert code == 0
    for name in (
        "mnist",
        "fashion-mnist",
        "chinese-mnist",
        "emnist-letters",
        "chars74k",
        "digits",
        "folder:",
    ):
        assert name in out


def test_data_get_and_show(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "data", "get", "digits")
    assert code == 0 and "digits" in out
    png = tmp_path / "digits.png"
    code, out, _ = run_cli(capsys, "data", "show", "digits", "--out", png, "--per-class", "4")
    assert code == 0 and Image.open(png).size[0] > 100
    aug = tmp_path / "digits-aug.png"
    code, _, _ = run_cli(
        capsys, "data", "show", "digits", "--augment", "--out", aug, "--per-class", "4"
    )
    assert code == 0
    plain, augmented = np.asarray(Image.open(png)), np.asarray(Image.open(aug))
    assert plain.shape[1] == augmented.shape[1]  # same grid; only the caption differs
    # Compare the grids themselves (the bottom of each picture; captions sit on top).
    rows = min(plain.shape[0], augmented.shape[0]) * 3 // 4
    assert not np.array_equal(plain[-rows:], augmented[-rows:])


def test_unknown_dataset_is_a_clear_error(capsys):
    code, _, err = run_cli(capsys, "data", "show", "no-such-set")
    assert code == 2 and "no-such-set" in err and "imrec data list" in err


def test_models_lists_the_registry(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for name in ("mlp", "cnn", "resnet", "inception", "tv:NAME", "timm:NAME"):
        assert name in out


def test_train_writes_the_whole_run_folder(digits_run):
    for name in (
        "config.json",
        "metrics.jsonl",
        "curves.png",
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "last.json",
        "report.json",
        "report.md",
        "confusion.png",
        "mistakes.png",
    ):
        assert (digits_run / name).is_file(), name
    rows = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    report = json.loads((digits_run / "report.json").read_text())
    assert report["dataset"] == "digits" and report["model"] == "cnn"
    assert report["test"]["accuracy"] > 0.85  # 4 epochs on 1.4k 8x8 digits
    for key in ("macro_f1", "top5", "ece", "per_class"):
        assert key in report["test"]
    assert report["train_seconds"] > 0
    meta = json.loads((digits_run / "best.json").read_text())
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["input"]["size"] == [8, 8] and len(meta["input"]["mean"]) == 1
    assert "accuracy" in (digits_run / "report.md").read_text()


def test_eval_reproduces_the_training_report(capsys, digits_run):
    before = json.loads((digits_run / "report.json").read_text())["test"]["accuracy"]
    code, out, _ = run_cli(capsys, "eval", digits_run)
    assert code == 0 and "accuracy" in out and f"report: {digits_run / 'report.md'}" in out
    after = json.loads((digits_run / "report.json").read_text())["test"]["accuracy"]
    assert after == pytest.approx(before)


def test_predict_table_json_and_bad_files(capsys, digits_run, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    files = []
    for i in range(12):
        # Files as the dataset stores its images (8x8, light ink on dark): the real-world
        # preparation of photos is tested on MNIST in test_mnist.py.
        img = Image.fromarray((d.images[-i - 1] * 255 / 16).round().astype(np.uint8))
        files.append(tmp_path / f"d{i}_{d.target[-i - 1]}.png")
        img.save(files[-1])
    code, out, _ = run_cli(capsys, "predict", digits_run, tmp_path, "--json", "--top-k", "3")
    assert code == 0
    results = json.loads(out)
    assert len(results) == 12 and all(len(r["top"]) == 3 for r in results)
    hits = sum(r["top"][0]["label"] == Path(r["input"]).stem.split("_")[1] for r in results)
    assert hits >= 10, results
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, _ = run_cli(capsys, "predict", digits_run, tmp_path / "broken.png", files[0])
    assert code == 1  # one input failed; the other still got its prediction
    assert "broken.png: ERROR" in out and f"{files[0]}:" in out
    code, _, err = run_cli(capsys, "predict", tmp_path / "nope", files[0])
    assert code == 2 and "nope" in err


def test_folder_dataset_end_to_end_skips_bad_files(capsys, shapes_folder, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "train",
        f"folder:{shapes_folder}",
        "--out",
        out,
        "--size",
        "24",
        *TINY,
        "--epochs",
        "6",
        "--batch-size",
        "16",
        "--model",
        "cnn",
    )
    assert code == 0 and "report:" in stdout
    report = json.loads((out / "report.json").read_text())
    skipped = {Path(s["path"]).name for s in report["skipped"]}
    assert skipped == {"empty.png", "notes.png", "cut.png"}
    assert report["classes"] == ["circle", "square", "triangle"]
    assert report["test"]["accuracy"] > 0.6
    assert "cut.png" in (out / "report.md").read_text()


def test_folder_errors_come_before_training(capsys, tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("L", (10, 10)).save(tmp_path / "only" / "a.png")
    code, _, err = run_cli(capsys, "train", f"folder:{tmp_path}", *TINY)
    assert code == 2 and "class" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", f"folder:{tmp_path}", *TINY)
    assert code == 2 and "empty" in err
    code, _, err = run_cli(capsys, "train", f"folder:{tmp_path / 'missing'}", *TINY)
    assert code == 2 and "missing" in err


@pytest.mark.parametrize(
    "flags",
    [
        ["--model", "mlp", "--optimizer", "adam", "--schedule", "constant"],
        [
            "--optimizer",
            "sgd",
            "--schedule",
            "cosine",
            "--label-smoothing",
            "0.1",
            "--ema",
            "--grad-clip",
            "1",
        ],
        ["--class-weights", "--early-stop", "1", "--no-augment", "--weight-norm"],
    ],
)
def test_training_options(capsys, tmp_path, flags):
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "digits", "--out", out, *TINY, "--batch-size", "32", *flags
    )
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["epochs"] == 2
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["accuracy"] > 0.3  # learning happened with every combination


def test_fine_tune_from_a_checkpoint_with_other_classes(
    capsys, digits_run, shapes_folder, tmp_path
):
    # digits is 1x8x8 with 10 classes; the shapes folder, made grey and 8x8, has 3 classes.
    out = tmp_path / "ft"
    code, _, err = run_cli(
        capsys,
        "train",
        f"folder:{shapes_folder}",
        "--init",
        digits_run,
        "--size",
        "8",
        "--channels",
        "1",
        "--freeze-epochs",
        "1",
        "--head-lr-mult",
        "5",
        "--out",
        out,
        *TINY,
    )
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert "initialised from" in json.dumps(report)
    code, _, err = run_cli(capsys, "train", "digits", "--init", tmp_path / "nothing", *TINY)
    assert code == 2 and "--init" in err


def test_resume_of_a_finished_run_changes_nothing(capsys, digits_run):
    before = (digits_run / "metrics.jsonl").read_text()
    code, _, _ = run_cli(capsys, "train", "--resume", digits_run, "--quiet")
    assert code == 0
    assert (digits_run / "metrics.jsonl").read_text() == before


def test_bad_arguments(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "train", "digits", "--model", "nonet", *TINY, "--out", tmp_path / "r"
    )
    assert code == 2 and "nonet" in err
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "not-a-run")
    assert code == 2 and "not-a-run" in err
    code, _, err = run_cli(
        capsys, "train", "digits", "--augment-off", "wobble", *TINY, "--out", tmp_path / "r2"
    )
    assert code == 2 and "wobble" in err
