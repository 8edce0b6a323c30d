"""Numbers out of range, refused where they come in: by their flag, before any work, leaving
nothing behind (``imrec.core.checks``, ``imrec.config.check_options``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import imrec
from imrec.cli import main
from imrec.config import LoopConfig, OptimConfig, TrainConfig
from imrec.core.checks import Range
from imrec.core.errors import DatasetError, ExportError, TrainError

# (flag, a value out of its range, what the error says): every numeric training option
BAD_TRAINING = [
    ("--epochs", "0", "--epochs must be 1 or more, got 0"),
    ("--epochs", "-1", "--epochs must be 1 or more, got -1"),
    ("--batch-size", "0", "--batch-size must be 1 or more, got 0"),
    ("--eval-batch-size", "0", "--eval-batch-size must be 1 or more, got 0"),
    ("--early-stop", "-2", "--early-stop must be 0 or more, got -2"),
    ("--seed", "-1", "--seed must be 0 or more, got -1"),
    ("--small-epochs", "-1", "--small-epochs must be 0 or more, got -1"),
    ("--small-scale", "0", "--small-scale must be in (0, 1], got 0.0"),
    ("--time-limit", "-1", "--time-limit must be 0 or more, got -1.0"),
    ("--lr", "-0.1", "--lr must be 0 or more, got -0.1"),
    ("--lr", "nan", "--lr must be a finite number, got nan"),
    ("--momentum", "1", "--momentum must be in [0, 1), got 1.0"),
    ("--weight-decay", "-0.1", "--weight-decay must be 0 or more, got -0.1"),
    ("--warmup-epochs", "-1", "--warmup-epochs must be 0 or more, got -1.0"),
    ("--label-smoothing", "2", "--label-smoothing must be in [0, 1), got 2.0"),
    ("--grad-clip", "-1", "--grad-clip must be 0 or more, got -1.0"),
    ("--ema-decay", "1", "--ema-decay must be in [0, 1), got 1.0"),
    ("--freeze-epochs", "-1", "--freeze-epochs must be 0 or more, got -1"),
    ("--head-lr-mult", "-1", "--head-lr-mult must be 0 or more, got -1.0"),
    ("--outlier-weight", "-1", "--outlier-weight must be 0 or more, got -1.0"),
    ("--rehearse", "-1", "--rehearse must be 0 or more, got -1"),
    ("--distill", "-1", "--distill must be 0 or more, got -1.0"),
    ("--distill-temperature", "0", "--distill-temperature must be above 0, got 0.0"),
    ("--threads", "-3", "--threads must be 0 or more, got -3"),
    ("--workers", "-1", "--workers must be 0 or more, got -1"),
]


@pytest.mark.parametrize(("flag", "value", "says"), BAD_TRAINING)
def test_a_training_option_out_of_range_is_refused_by_its_flag_before_the_data_loads(
    capsys, tmp_path, flag, value, says
):
    """Before: --batch-size 0 and --threads -3 ended in tracebacks, --epochs 0 in "no
    checkpoint at ..." with a run folder left behind, --workers -1 and --ema-decay 2 were taken
    silently. The folder that does not exist shows the option is checked before the data."""
    out = tmp_path / "run"
    code = main(["train", f"folder:{tmp_path / 'no-such-folder'}", flag, value, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"imrec: error: {says}"
    assert not out.exists()
    # The same from Python, with the value as the flag's type reads it.
    kind = type(TrainConfig.__dataclass_fields__[flag[2:].replace("-", "_")].default)
    with pytest.raises(TrainError, match=f"^{re.escape(says)}$"):
        imrec.fit(
            "digits", out=out, train={flag[2:].replace("-", "_"): kind(value)}, progress=False
        )
    assert not out.exists()


def test_options_of_the_wrong_kind_are_refused_from_python(tmp_path):
    for train, says in [
        ({"epochs": 2.5}, "--epochs must be a whole number, got 2.5"),
        ({"epochs": True}, "--epochs must be a number, got True"),
        ({"lr": "fast"}, "--lr must be a number, got 'fast'"),
        ({"figures": 0}, "--figures is on or off (true or false), got 0"),
        ({"optimizer": "rmsprop"}, "--optimizer must be one of adam, adamw, sgd, got 'rmsprop'"),
        ({"amp": "fp8"}, "--amp must be one of auto, bf16, fp16, off, got 'fp8'"),
    ]:
        with pytest.raises(TrainError) as caught:
            imrec.fit("digits", out=tmp_path / "run", train=train, progress=False)
        assert str(caught.value) == says and not (tmp_path / "run").exists()
    with pytest.raises(TrainError, match="--epochs must be 1 or more"):
        TrainConfig(epochs=0)  # the flat view is checked as the groups are


def test_the_edges_of_each_range_are_taken():
    loop = LoopConfig(epochs=1, batch_size=1, seed=0, early_stop=0, time_limit=0.0, small_scale=1.0)
    # lr 0 keeps the weights and an EMA decay of 0 follows them: both have their uses (tests)
    optim = OptimConfig(lr=0.0, momentum=0.0, label_smoothing=0.0, ema_decay=0.0, distill=0.0)
    assert (loop.epochs, optim.momentum) == (1, 0.0)
    assert LoopConfig(seed=np.int64(3)).seed == 3  # numpy's integers are whole numbers
    assert Range(0, 1).admits(0) and Range(0, 1).admits(1) and not Range(0, 1).admits(1.01)
    assert not Range(0, lo_open=True).admits(0) and Range(0, lo_open=True).admits(1e-12)


def test_a_config_json_edited_out_of_range_is_refused_on_resume(capsys, digits_run, tmp_path):
    run = Path(shutil.copytree(digits_run, tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    config["loop"]["batch_size"] = 0
    (run / "config.json").write_text(json.dumps(config))
    before = (run / "metrics.jsonl").read_text()
    code = main(["train", "--resume", str(run), "--quiet"])
    assert code == 2 and "--batch-size must be 1 or more, got 0" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before


def test_predictions_need_one_label_or_more(capsys, digits_run, tmp_path):
    from PIL import Image

    image = tmp_path / "seven.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(image)
    says = "top_k (--top-k) must be 1 or more, got 0"
    with pytest.raises(ValueError, match=r"^top_k \(--top-k\) must be 1 or more, got 0$"):
        imrec.Predictor(digits_run).predict([image], top_k=0)
    model = imrec.load(digits_run, backend="torch")
    with pytest.raises(ValueError, match=r"must be 1 or more, got -2"):
        model.predict(image, top_k=-2)  # before: a RuntimeError from torch.topk
    assert len(model.predict(image, top_k=3)["top"]) == 3
    code = main(["predict", str(digits_run), str(image), "--top-k", "0"])
    assert code == 2 and says in capsys.readouterr().err


def test_a_detectors_box_options_are_checked_when_it_is_loaded(digits_run):
    for options, says in [
        ({"score_thresh": 2.0}, r"score_thresh \(--conf\) must be in \[0, 1\], got 2.0"),
        ({"nms_iou": -1.0}, r"nms_iou \(--iou\) must be in \[0, 1\], got -1.0"),
        ({"max_det": 0}, r"max_det \(--max-det\) must be 1 or more, got 0"),
    ]:
        with pytest.raises(ValueError, match=says):
            imrec.load(digits_run, backend="torch", **options)


def test_serve_refuses_a_port_or_worker_count_that_cannot_be(digits_run):
    from imrec.serve import serve

    for options, says in [
        ({"port": 99999}, r"port \(--port\) must be in \[1, 65535\], got 99999"),
        ({"port": -5}, r"port \(--port\) must be in \[1, 65535\], got -5"),
        ({"workers": 0}, r"workers \(--workers\) must be 1 or more, got 0"),
        ({"max_batch": 0}, r"max_batch \(--max-batch\) must be 1 or more, got 0"),
    ]:
        with pytest.raises(ValueError, match=says):
            serve(digits_run, **options)  # refused before the server starts


def test_export_refuses_an_opset_or_parity_limit_out_of_range(digits_run, tmp_path):
    from imrec.deploy.export import export_bundle

    out = tmp_path / "bundle"
    for options, says in [
        ({"opset": 3}, r"opset \(--opset\) must be in \[7, \d+\], got 3"),
        ({"parity_limit": -1}, r"parity_limit \(--parity-limit\) must be 1 or more, got -1"),
        ({"parity_limit": 0}, r"must be 1 or more, got 0"),
        ({"quantize": "int8", "opset": 11}, "need --opset 13 or more; got --opset 11"),
    ]:
        with pytest.raises(ExportError, match=says):
            export_bundle(digits_run, out, **options)
        assert not out.exists()  # before: --parity-limit -1 checked all test images but one


def test_doctor_and_eval_refuse_counts_below_one(digits_run, tmp_path):
    from imrec.classify.doctor import DoctorConfig, diagnose

    with pytest.raises(DatasetError, match="--top must be 1 or more, got -1"):
        diagnose("digits", tmp_path / "doc", DoctorConfig(top=-1, progress=False))
    assert not (tmp_path / "doc").exists()
    with pytest.raises(ValueError, match=r"ood_limit \(--ood-limit\) must be 1 or more, got -5"):
        imrec.evaluate(digits_run, ood="noise", ood_limit=-5)
    with pytest.raises(ValueError, match=r"batch_size \(--batch-size\) must be 1 or more"):
        imrec.evaluate(digits_run, batch_size=0)


def test_serve_reads_the_upload_limit_in_megabytes(capsys, digits_run):
    """--max-upload-mb is named in megabytes (before: "limits must be positive:
    Limits(max_upload_bytes=-1048576, ...)"); the other limits: tests/test_serve.py."""
    code = main(["serve", str(digits_run), "--max-upload-mb", "-1"])
    assert code == 2 and "--max-upload-mb must be above 0, got -1.0" in capsys.readouterr().err


def test_datasets_refuse_a_negative_seed_and_a_split_share_outside_0_1():
    """Before: a seed of -1 reached numpy ("expected non-negative integer"), or for detection
    data was taken."""
    for load in (imrec.load_dataset, imrec.load_detection):
        name = "digits" if load is imrec.load_dataset else "digits-detect:train=10,val=2,test=2"
        with pytest.raises(DatasetError, match=r"^seed \(--seed\) must be 0 or more, got -1$"):
            load(name, seed=-1)
        with pytest.raises(
            DatasetError, match=r"val_fraction \(--val-fraction\) must be in \(0, 1\)"
        ):
            load(name, val_fraction=1.0)
