"""Every CLI command end to end, at tiny sizes, on data the tests make or that needs no download."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

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
        "letters[:options]",
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


# ---- every `imrec train` flag reaches config.json and does what it says -----------------
#
# Each case is a list of (flag, value or None, config.json field, expected value); the runs
# pass exactly these flags (with --out and --quiet), check every field, then check what each
# flag changed. test_every_train_flag_is_checked fails for a flag that no case passes.

TRAIN_CASES: dict[str, list[tuple[str, str | None, str, object]]] = {
    "adamw": [
        ("--epochs", "2", "loop.epochs", 2),
        ("--model", "cnn", "model.name", "cnn"),
        ("--model-opt", "width=16", "model.options", {"width": 16}),
        ("--optimizer", "adamw", "optim.optimizer", "adamw"),
        ("--lr", "0.004", "optim.lr", 0.004),
        ("--weight-decay", "0.001", "optim.weight_decay", 0.001),
        ("--schedule", "onecycle", "optim.schedule", "onecycle"),
        ("--warmup-epochs", "1.5", "optim.warmup_epochs", 1.5),
        ("--batch-size", "64", "loop.batch_size", 64),
        ("--ema", None, "optim.ema", True),
        ("--ema-decay", "0", "optim.ema_decay", 0.0),
        ("--grad-clip", "1", "optim.grad_clip", 1.0),
        ("--label-smoothing", "0.1", "optim.label_smoothing", 0.1),
        ("--class-weights", None, "optim.class_weights", True),
        ("--compile", None, "hardware.compile", True),
        ("--threads", "1", "hardware.threads", 1),
        ("--device", "cpu", "hardware.device", "cpu"),
        ("--amp", "off", "hardware.amp", "off"),
        ("--data-placement", "host", "hardware.data_placement", "host"),
        ("--cuda-graphs", "off", "hardware.cuda_graphs", "off"),
        ("--augment-off", "rotate,shear", "data.augment_off", ["rotate", "shear"]),
        ("--val-fraction", "0.2", "data.val_fraction", 0.2),
        ("--preset", "fast", "preset", "fast"),
        ("--task", "classify", "task", "classify"),
        ("--seed", "0", "loop.seed", 0),
    ],
    "sgd-best": [
        ("--epochs", "2", "loop.epochs", 2),
        ("--batch-size", "128", "loop.batch_size", 128),
        ("--optimizer", "sgd", "optim.optimizer", "sgd"),
        ("--lr", "0.03", "optim.lr", 0.03),
        ("--schedule", "cosine", "optim.schedule", "cosine"),
        ("--warmup-epochs", "0", "optim.warmup_epochs", 0.0),
        ("--preset", "best", "preset", "best"),
        ("--seed", "1", "loop.seed", 1),
    ],
    "mlp-early-stop": [
        ("--epochs", "3", "loop.epochs", 3),
        ("--batch-size", "32", "loop.batch_size", 32),
        ("--model", "mlp", "model.name", "mlp"),
        ("--weight-norm", None, "model.weight_norm", True),
        ("--optimizer", "adam", "optim.optimizer", "adam"),
        ("--lr", "0", "optim.lr", 0.0),  # the model never changes: no epoch beats the first
        ("--early-stop", "1", "loop.early_stop", 1),
    ],
    "fine-tune": [
        ("--init", "{digits_run}", "optim.init", "{digits_run}"),
        ("--epochs", "1", "loop.epochs", 1),
        ("--freeze-epochs", "1", "optim.freeze_epochs", 1),
        ("--head-lr-mult", "5", "optim.head_lr_mult", 5.0),
        ("--optimizer", "sgd", "optim.optimizer", "sgd"),
        ("--momentum", "0.8", "optim.momentum", 0.8),
        ("--lr", "0.01", "optim.lr", 0.01),
        ("--schedule", "constant", "optim.schedule", "constant"),
        ("--warmup-epochs", "0", "optim.warmup_epochs", 0.0),
        ("--no-augment", None, "data.augment", "none"),
    ],
    "pretrained": [
        ("--model", "tv:mobilenet_v3_small", "model.name", "tv:mobilenet_v3_small"),
        ("--pretrained", "{weights}", "model.options", {"pretrained": "{weights}"}),
        ("--epochs", "1", "loop.epochs", 1),
        ("--freeze-epochs", "1", "optim.freeze_epochs", 1),
        ("--batch-size", "64", "loop.batch_size", 64),
    ],
    "folder-stream": [
        ("--size", "12", "data.size", 12),
        ("--channels", "3", "data.channels", 3),
        ("--domain", "objects", "data.domain", "objects"),
        ("--data-placement", "stream", "hardware.data_placement", "stream"),
        ("--workers", "2", "hardware.workers", 2),
        ("--epochs", "2", "loop.epochs", 2),
        ("--batch-size", "16", "loop.batch_size", 16),
    ],
}
# Passed by every run (the run folder is read from --out; --quiet is checked by the seed test)
# or tested elsewhere.
ALWAYS_PASSED = {"--out", "--quiet"}
TESTED_ELSEWHERE = {
    "--resume": "test_resume_of_a_finished_run_changes_nothing here, tests/test_resume.py",
    "--channels-last": "test_layout_and_evaluation_batch_flags_reach_the_trainer",
    "--eval-batch-size": "test_layout_and_evaluation_batch_flags_reach_the_trainer",
    "--figures": "test_layout_and_evaluation_batch_flags_reach_the_trainer",
    "--no-figures": "the same, and tests/test_detection.py::test_detection_run_killed_then_resumed_matches",
    # Fine-tuning and outlier options, through the same config fields (imrec.fit(train=...)):
    "--keep-classes": "tests/test_hanzi.py::test_fine_tuning_keeps_every_class_and_rehearses_them",
    "--rehearse": "tests/test_hanzi.py::test_fine_tuning_keeps_every_class_and_rehearses_them",
    "--distill": "tests/test_hanzi.py::test_distillation_keeps_the_checkpoints_answers_on_the_characters_not_tuned",
    "--distill-temperature": "the same",
    "--outliers": "tests/test_confidence.py::test_outlier_exposure_teaches_the_model_to_be_unsure",
    "--outlier-weight": "tests/test_confidence.py::test_outlier_exposure_teaches_the_model_to_be_unsure",
    "--exclude": "tests/test_doctor.py::test_exclude_and_relabel_lists_apply_to_training",
    "--relabel": "tests/test_doctor.py::test_exclude_and_relabel_lists_apply_to_training",
    "--small-epochs": "tests/test_engine.py::test_small_epoch_options_are_checked (and the run "
    "above it, through the same config fields)",
    "--small-scale": "tests/test_engine.py::test_small_epoch_options_are_checked",
    "--time-limit": "tests/test_engine.py::test_a_time_limit_cuts_the_epochs_and_ends_the_"
    "schedule_with_them (through the same config field)",
    "--members": "tests/test_ensemble.py::test_the_members_flag_trains_an_ensemble",
    # Only datasets that draw renders (letters, hanzi) have images the flag leaves alone:
    "--augment-renders": "test_the_augment_renders_flags_reach_the_data_config, "
    "test_no_augment_renders_on_data_without_renders_is_refused and "
    "tests/test_letters.py::test_renders_can_be_left_as_drawn_while_the_real_letters_are_augmented",
    "--no-augment-renders": "the same",
    # Only streamed images (renders, big folders) have DataLoader workers; StreamLoader is
    # given the field, and its old name is parsed into it:
    "--worker-priority": "tests/test_engine.py::test_data_workers_give_way_to_the_training_step",
    "--render-priority": "tests/test_engine.py::test_runs_recorded_with_the_old_render_priority_"
    "still_load",
}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _train_flags() -> set[str]:
    import argparse

    from imrec.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        opt
        for action in sub.choices["train"]._actions
        for opt in action.option_strings
        if opt.startswith("--") and action.dest != "help"
    }


def test_every_train_flag_is_checked():
    """A new `imrec train` flag must join a case below (config field and effect) or be named."""
    assert set(EFFECTS) == set(TRAIN_CASES)
    used = {flag for case in TRAIN_CASES.values() for flag, *_ in case}
    assert _train_flags() == used | ALWAYS_PASSED | set(TESTED_ELSEWHERE)


@pytest.fixture
def train_spies(monkeypatch):
    """Records what training did with the flags: each step's loss options and gradient
    clipping, torch.compile calls, the augmentation applied, the streaming workers. Puts the
    torch thread count back afterwards (--threads changes it for the process)."""
    import torch
    import torch.nn.functional as F

    import imrec.engine.placement as engine
    from imrec.classify.augment import BatchAugment

    spies = SimpleNamespace(losses=[], clips=[], compiled=[], augments=[], workers=[])
    cross_entropy, clip = F.cross_entropy, torch.nn.utils.clip_grad_norm_
    forward, stream_init = BatchAugment.forward, engine.StreamLoader.__init__

    def loss(*args, **kw):
        if "label_smoothing" in kw:  # a training step's loss (validation passes no options)
            spies.losses.append(
                {"label_smoothing": kw["label_smoothing"], "weight": kw.get("weight")}
            )
        return cross_entropy(*args, **kw)

    def clipped(params, max_norm, *args, **kw):
        spies.clips.append(max_norm)
        return clip(params, max_norm, *args, **kw)

    def compiled(model, *args, **kw):
        spies.compiled.append(model)
        return model  # compiling takes ~30 s; that it is asked for is the flag's effect

    def augment(self, *args, **kw):
        spies.augments.append(self.cfg)
        return forward(self, *args, **kw)

    def loader(self, *args, **kw):
        stream_init(self, *args, **kw)
        spies.workers.append(self.loader.num_workers)

    monkeypatch.setattr(F, "cross_entropy", loss)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clipped)
    monkeypatch.setattr(torch, "compile", compiled)
    monkeypatch.setattr(BatchAugment, "forward", augment)
    monkeypatch.setattr(engine.StreamLoader, "__init__", loader)
    threads = torch.get_num_threads()
    yield spies
    torch.set_num_threads(threads)


def _tensors(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _field(cfg: dict, path: str):
    for key in path.split("."):
        cfg = cfg[key]
    return cfg


def _filled(value, fill: dict):
    if isinstance(value, str):
        return value.format(**fill)
    if isinstance(value, dict):
        return {k: _filled(v, fill) for k, v in value.items()}
    return value


def _param_count(name: str, weight_norm: bool = False, **options) -> int:
    from imrec.models import create_model

    kw = {"num_classes": 10, "in_channels": 1, "input_size": (8, 8)}
    model = create_model(name, weight_norm=weight_norm, **kw, **options)
    return sum(p.numel() for p in model.parameters())


def _adamw_effects(r: SimpleNamespace) -> None:
    report, rows, state, groups, spies = r.report, r.rows, r.state, r.groups, r.spies
    steps, total = r.steps, r.total
    # --batch-size 64: AdamW's step count is one per 64 images (a shorter last batch).
    assert float(state["optim/0.step"]) == total and report["effective_batch_size"] == 64
    # --lr, --schedule onecycle, --warmup-epochs 1.5: epoch 1 ends in the linear warm-up from
    # 4% of the peak; epoch 2 ends at the last step of the linear decay to 0. The optimiser
    # ran at the rate the metrics report.
    warm = round(1.5 * steps)
    assert rows[0]["lr"] == pytest.approx(0.004 * (0.04 + 0.96 * (steps - 1) / warm), abs=1e-8)
    decayed = (total - 1 - warm) / (total - warm)
    assert rows[1]["lr"] == pytest.approx(0.004 * (1 - decayed), abs=1e-8)
    assert [g["lr"] for g in groups] == pytest.approx([rows[1]["lr"]] * len(groups), abs=1e-8)
    # --optimizer adamw, --weight-decay 0.001: decoupled decay, on weights (not biases).
    assert all(g["decoupled_weight_decay"] is True for g in groups)
    assert sorted({g["weight_decay"] for g in groups}) == [0.0, 0.001]
    assert any(k.endswith(".exp_avg") for k in state)
    # --model cnn --model-opt width=16: stages of 12, 16, 32, 64 channels (default 24-128).
    assert r.best["backbone.features.0.body.0.weight"].shape == (12, 1, 3, 3)
    assert r.best["head.weight"].shape == (10, 64)
    assert report["params"] == _param_count("cnn", width=16) < _param_count("cnn")
    # --ema --ema-decay 0: an average updated every step that, with decay 0, is the model.
    assert r.meta["ema_updates"] == total
    model = {k[len("model/") :]: v for k, v in state.items() if k.startswith("model/")}
    assert all(state[f"ema/{k}"].equal(v) for k, v in model.items())
    # --grad-clip 1, --label-smoothing 0.1, --class-weights: what every step used.
    assert spies.clips == [1.0] * total
    assert [s["label_smoothing"] for s in spies.losses] == [0.1] * total
    weight = spies.losses[0]["weight"]  # inverse class frequency, mean 1
    assert weight.shape == (10,) and float(weight.mean()) == pytest.approx(1.0)
    assert 0.8 < float(weight.min()) < float(weight.max()) < 1.25
    assert len(spies.compiled) == 1  # --compile
    assert report["timing"]["threads"] == 1  # --threads 1
    # --device cpu, --amp off, --data-placement host, --cuda-graphs off (see also
    # test_device_flags_reach_the_trainer).
    assert (report["device"], report["amp"]) == ("cpu", "off")
    assert (report["data_placement"], report["cuda_graphs"]) == ("host", False)
    # --augment-off rotate,shear: the fast handwriting preset (--preset fast: no elastic
    # warp), without rotation and shear, at every step.
    assert len(spies.augments) == total and len(set(spies.augments)) == 1
    a = spies.augments[0]
    assert (a.rotate, a.shear, a.translate, a.scale, a.elastic) == (0, 0, 0.1, (0.9, 1.1), 0)
    sizes = report["sizes"]  # --val-fraction 0.2 of the non-test images
    assert sizes["val"] / (sizes["train"] + sizes["val"]) == pytest.approx(0.2, abs=0.01)
    assert report["task"] == "classify" and "(seed 0)" in report["split"]  # --task, --seed


def _sgd_best_effects(r: SimpleNamespace) -> None:
    # --optimizer sgd: Nesterov momentum buffers, no Adam moments.
    assert all((g["momentum"], g["nesterov"]) == (0.9, True) for g in r.groups)
    assert any(k.endswith(".momentum_buffer") for k in r.state)
    assert not any(k.endswith(".exp_avg") for k in r.state)
    # --lr 0.03 --schedule cosine --warmup-epochs 0: half a cosine from the first step.
    for row in r.rows:
        step = row["epoch"] * r.steps - 1
        assert row["lr"] == pytest.approx(
            0.015 * (1 + math.cos(math.pi * step / r.total)), abs=1e-8
        )
    # --preset best: its handwriting recipe adds an EMA (updated once per 128 images: the
    # --batch-size), elastic warps and random erasing.
    assert r.cfg["optim"]["ema"] is True and r.meta["ema_updates"] == r.total
    assert {(a.elastic, a.erasing) for a in r.spies.augments} == {(2.0, 0.25)}
    assert "(seed 1)" in r.report["split"]  # --seed 1 drew the validation split


def _mlp_early_stop_effects(r: SimpleNamespace) -> None:
    # --early-stop 1: epoch 2 did not beat epoch 1 (lr 0), so epoch 3 never ran; epoch 2 tied
    # with it, so its weights are the ones kept (the latest within the validation noise).
    assert [row["epoch"] for row in r.rows] == [1, 2] and r.report["best_epoch"] == 2
    assert r.rows[0]["val_accuracy"] == r.rows[1]["val_accuracy"]
    assert r.report["val_top"]["epoch"] == 1 and r.report["val_top"]["margin"] > 0
    # --model mlp --weight-norm: one weight-normalised hidden layer of 64 units.
    assert r.best["backbone.1.parametrizations.weight.original1"].shape == (64, 64)
    assert r.best["head.weight"].shape == (10, 64)
    assert r.report["params"] == _param_count("mlp", weight_norm=True)
    # --optimizer adam: Adam's moments, its weight decay not decoupled; --batch-size 32.
    assert all(g["decoupled_weight_decay"] is False for g in r.groups)
    assert float(r.state["optim/0.step"]) == 2 * r.steps


def _fine_tune_effects(r: SimpleNamespace) -> None:
    # --init: the digits run's weights; --freeze-epochs 1: its backbone did not move.
    assert r.report["init"].startswith(f"initialised from {r.digits_run}")
    init = _tensors(r.digits_run / "best.safetensors")
    last = _tensors(r.out / "last.safetensors")
    for k, v in init.items():
        if k.startswith("backbone.") and not k.endswith(BUFFERS):
            assert last[k].equal(v), k
    assert not last["head.weight"].equal(init["head.weight"])
    # Only the head was stepped: momentum only for its parameters.
    head = {i for g in r.groups if g["is_head"] for i in g["params"]}
    moved = {int(k.split("/")[1].split(".")[0]) for k in r.state if k.endswith("momentum_buffer")}
    assert moved == head
    assert {g["momentum"] for g in r.groups} == {0.8}  # --momentum 0.8
    # --head-lr-mult 5 on --lr 0.01 --schedule constant --warmup-epochs 0.
    assert r.rows[0]["lr"] == 0.01
    for g in r.groups:
        assert g["lr"] == pytest.approx(0.05 if g["is_head"] else 0.01, abs=1e-12)
    assert r.spies.augments == []  # --no-augment (the cnn on digits would augment)


def _pretrained_effects(r: SimpleNamespace) -> None:
    # --pretrained: the torchvision backbone starts from the file; frozen, it stays there.
    for k, v in r.source.items():
        if not k.startswith("classifier.3.") and not k.endswith(BUFFERS):
            assert r.best[f"backbone.model.{k}"].equal(v), k
    assert r.report["model"] == "tv:mobilenet_v3_small"


def _folder_stream_effects(r: SimpleNamespace) -> None:
    # --size 12 --channels 3 --domain objects: 3x12x12 inputs and the objects preset, which
    # flips images (handwriting never does).
    card = json.loads((r.out / "best.json").read_text())
    assert card["input"]["size"] == [12, 12] and card["input"]["channels"] == 3
    assert card["domain"] == "objects"
    assert r.best["backbone.features.0.body.0.weight"].shape[1] == 3
    assert {a.hflip for a in r.spies.augments} == {True}
    # --data-placement stream --workers 2: two DataLoader workers decoded the files.
    assert r.report["data_placement"] == "stream" and r.spies.workers == [2]
    assert float(r.state["optim/0.step"]) == r.total  # --batch-size 16


EFFECTS = {
    "adamw": _adamw_effects,
    "sgd-best": _sgd_best_effects,
    "mlp-early-stop": _mlp_early_stop_effects,
    "fine-tune": _fine_tune_effects,
    "pretrained": _pretrained_effects,
    "folder-stream": _folder_stream_effects,
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_training_options(request, capsys, tmp_path, shapes_folder, train_spies, case):
    from safetensors import safe_open

    digits_run = Path("-")
    if case == "fine-tune":  # the only case that needs the module's digits run, to start from
        digits_run = request.getfixturevalue("digits_run")
        for seen in vars(train_spies).values():
            seen.clear()  # that run's training (when made now) is not this one's
    fill = {"digits_run": str(digits_run), "weights": str(tmp_path / "mnv3.safetensors")}
    source = None
    if case == "pretrained":
        import torch
        import torchvision
        from safetensors.torch import save_file

        torch.manual_seed(1)
        source = torchvision.models.mobilenet_v3_small(num_classes=5).state_dict()
        save_file(source, fill["weights"])
    # The folder of shapes is the smaller set: it keeps the torchvision model's run short.
    folder = case in ("folder-stream", "pretrained")
    dataset = f"folder:{shapes_folder}" if folder else "digits"
    argv = [a.format(**fill) for flag, value, *_ in TRAIN_CASES[case] for a in (flag, value) if a]
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", dataset, "--out", out, "--quiet", *argv)
    assert code == 0, err
    assert "epoch 1/" not in err  # --quiet: no progress bar

    # Every flag reached config.json with its value.
    cfg = json.loads((out / "config.json").read_text())
    for flag, _, path, expected in TRAIN_CASES[case]:
        assert _field(cfg, path) == _filled(expected, fill), flag
    report = json.loads((out / "report.json").read_text())
    assert report["config"] == cfg

    # What each flag changed, read from the run folder and from what training did.
    with safe_open(str(out / "state.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["imrec"])
    loop = cfg["loop"]
    steps = math.ceil(report["sizes"]["train"] / loop["batch_size"])  # per epoch
    run = SimpleNamespace(
        out=out,
        cfg=cfg,
        report=report,
        rows=[json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()],
        state=_tensors(out / "state.safetensors"),
        best=_tensors(out / "best.safetensors"),
        meta=meta,
        groups=meta["optim"]["param_groups"],
        steps=steps,
        total=loop["epochs"] * steps,
        spies=train_spies,
        digits_run=digits_run,
        source=source,
    )
    if case != "mlp-early-stop":  # --epochs (that case stops early)
        assert [row["epoch"] for row in run.rows] == list(range(1, loop["epochs"] + 1))
    EFFECTS[case](run)
    if case not in ("mlp-early-stop", "pretrained"):  # (lr 0; a frozen random backbone)
        assert report["test"]["accuracy"] > 0.3  # and it learned


def test_the_augment_renders_flags_reach_the_data_config(monkeypatch, tmp_path):
    import imrec
    from imrec.cli import main
    from imrec.config import build_config

    class Stop(Exception):
        pass

    seen = []

    def fit(dataset, **kw):
        seen.append(build_config(dataset, "handwriting", data=kw["data"]).data.augment_renders)
        raise Stop

    monkeypatch.setattr(imrec, "fit", fit)
    for flags in (["--no-augment-renders"], ["--augment-renders"], []):
        with pytest.raises(Stop):
            main(["train", "letters", "--out", str(tmp_path / "r"), *flags])
    assert seen == [False, True, True]  # the recipe's own (renders augmented) when not given


def test_no_augment_renders_on_data_without_renders_is_refused(capsys, tmp_path):
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "train", "digits", "--no-augment-renders", "--out", out)
    assert code == 2 and "--no-augment-renders: digits has no renders" in err
    assert not out.exists()  # refused before anything was written


def test_device_flags_reach_the_trainer(capsys, tmp_path):
    # On a CPU, --device cpu --amp off --cuda-graphs off behave as the defaults do; values the
    # trainer must refuse show that each flag gets there.
    base = ["train", "digits", "--device", "cpu", "--epochs", "1", "--quiet"]
    code, _, err = run_cli(capsys, *base, "--amp", "fp16", "--out", tmp_path / "a")
    assert code == 2 and "--amp fp16 is for GPUs" in err
    code, _, err = run_cli(capsys, *base, "--cuda-graphs", "on", "--out", tmp_path / "b")
    assert code == 2 and "--cuda-graphs on: training does not run on a CUDA GPU" in err


def test_seed_makes_runs_identical_and_quiet_hides_the_bar(capsys, tmp_path):
    import torch

    def run(name: str, seed: int, *extra: str) -> tuple[dict, list[dict], str]:
        out = tmp_path / name
        # On the CPU: CUDA kernels need not be deterministic.
        flags = ["--epochs", "1", "--model-opt", "width=8", "--device", "cpu", "--seed", str(seed)]
        flags += extra
        code, _, err = run_cli(capsys, "train", "digits", "--out", out, *flags)
        assert code == 0, err
        assert json.loads((out / "config.json").read_text())["loop"]["seed"] == seed
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        timeless = [{k: v for k, v in r.items() if "second" not in k} for r in rows]
        return _tensors(out / "best.safetensors"), timeless, err

    first, rows, err = run("a", 3)
    assert "epoch 1/1" in err  # without --quiet, the progress bar
    again, rows_again, quiet_err = run("b", 3, "--quiet")
    assert "epoch 1/1" not in quiet_err
    assert rows_again == rows
    assert first.keys() == again.keys() and all(again[k].equal(v) for k, v in first.items())
    other, rows_other, _ = run("c", 4, "--quiet")
    assert rows_other != rows
    assert not all(torch.equal(other[k], v) for k, v in first.items())


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


def test_layout_and_evaluation_batch_flags_reach_the_trainer(tmp_path, monkeypatch):
    """--channels-last off keeps batches in the default layout; --eval-batch-size is the
    number of validation images per call (both leave the numbers alone, so spies tell);
    --no-figures leaves the report's figures out, --figures (the default) draws them."""
    import imrec.classify.train as classify_train
    from imrec.core.batching import Batcher

    layouts, sizes = [], []
    from_stats, predict_logits = Batcher.from_stats.__func__, classify_train.predict_logits

    def batcher(cls, mean, std, device="cpu", channels_last=False):
        layouts.append(channels_last)
        return from_stats(cls, mean, std, device, channels_last)

    def logits(model, images, batcher, batch_size=1024, features_out=None):
        sizes.append(batch_size)
        return predict_logits(model, images, batcher, batch_size, features_out)

    monkeypatch.setattr(Batcher, "from_stats", classmethod(batcher))
    monkeypatch.setattr(classify_train, "predict_logits", logits)
    for layout, expected, figures in (("off", False, "--no-figures"), ("auto", True, "--figures")):
        out = tmp_path / layout
        argv = ["train", "digits", "--epochs", "1", "--channels-last", layout, figures]
        assert main([*argv, "--eval-batch-size", "7", "--out", str(out), "--quiet"]) == 0
        assert layouts[0] is expected  # the training batcher, built first
        layouts.clear()
        saved = json.loads((out / "config.json").read_text())
        assert (saved["hardware"]["channels_last"], saved["loop"]["eval_batch_size"]) == (layout, 7)
        drawn = sorted(p.name for p in out.glob("*.png"))
        report = json.loads((out / "report.json").read_text())
        if figures == "--no-figures":
            assert saved["loop"]["figures"] is False and drawn == [] and report["files"] == {}
            assert "## Figures" not in (out / "report.md").read_text()
        else:
            assert saved["loop"]["figures"] is True and "confusion.png" in drawn
            assert sorted(report["files"].values()) == drawn  # the figures drawn, no other
    assert sizes and set(sizes) == {7}
