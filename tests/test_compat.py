"""Run folders and bundles written before the redesign still load and predict the same.

``tests/fixtures/old_run`` is a tiny run (the tutorial MLP with 16 hidden units on the digits
set, 2 epochs) and its export bundle, written by imrec at ddb9538, with the logits and bundle
predictions that code gave for the first 32 digits test images (``expected.json``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import imrec
from imrec.config import RunConfig, TrainConfig
from imrec.core.batching import Batcher, predict_logits
from imrec.data import load_dataset

OLD = Path(__file__).parent / "fixtures" / "old_run"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((OLD / "expected.json").read_text())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset("digits").test.images[:32]


def test_old_run_folder_rebuilds_the_same_model(expected, images):
    model, meta = imrec.load_model(OLD)
    assert meta["task"] == "classify" and meta["model"]["name"] == "mlp"
    batcher = Batcher.from_stats(meta["input"]["mean"], meta["input"]["std"])
    logits = predict_logits(model, images, batcher)
    assert torch.allclose(logits, torch.tensor(expected["logits"]), atol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_old_bundle_predicts_the_same(expected, images, backend):
    results = imrec.load(OLD / "bundle", backend=backend).predict(images)
    assert [r["top"][0]["label"] for r in results] == expected["bundle_top1"]


def test_old_bundle_loads_as_a_model_too(expected, images):
    model, meta = imrec.load_model(OLD / "bundle")
    batcher = Batcher.from_stats(meta["input"]["mean"], meta["input"]["std"])
    top1 = predict_logits(model, images, batcher).argmax(1)
    assert [meta["classes"][i] for i in top1] == expected["bundle_top1"]


def test_old_config_loads_and_the_run_evaluates(tmp_path, expected):
    run = RunConfig.from_dict(json.loads((OLD / "config.json").read_text()))
    assert run.model.name == "mlp" and run.model.options == {"hidden": 16}
    # The flat "train" object of old runs lands field by field in optim, loop and hardware.
    old = json.loads((OLD / "config.json").read_text())["train"]
    flat = dataclasses.asdict(run.train)
    assert {k: flat[k] for k in old} == old
    new = {k: v for k, v in flat.items() if k not in old}  # options added since: defaults
    assert new == {k: getattr(TrainConfig(), k) for k in new}
    assert (run.loop.epochs, run.optim.optimizer, run.hardware.device) == (2, "adamw", "auto")
    assert RunConfig.from_dict(json.loads(run.to_json())) == run  # and saves in the new layout
    assert "train" not in json.loads(run.to_json())
    copy = tmp_path / "run"
    shutil.copytree(OLD, copy)
    report = imrec.evaluate(copy)
    # The same model on the same test split: the number the old code reported.
    assert report["test"]["n"] == expected["test_n"]
    assert report["test"]["accuracy"] == pytest.approx(expected["test_accuracy"], abs=1e-6)
    assert (copy / "report.md").is_file()
