"""Where a run's seconds go: ``timing.phases`` in every report, shown in report.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import imrec
from imrec.core import timing

STEPS = {"data_load", "model_build", "warm_up", "training", "evaluation", "report"}


def _check(report: dict) -> None:
    t = report["timing"]
    phases = t["phases"]
    assert STEPS <= set(phases), phases
    assert all(v >= 0 for v in phases.values())
    # The phases and the unclaimed rest add up to the run's wall time.
    inside = sum(v for k, v in phases.items() if k != "startup")
    assert inside + t["other"] == pytest.approx(t["total"] - phases.get("startup", 0), abs=0.02)
    assert phases["training"] > 0 and phases["evaluation"] > 0


def test_a_classifier_report_says_where_its_seconds_went(tmp_path):
    report = imrec.fit("digits", out=tmp_path / "run", train={"epochs": 1}, progress=False)
    _check(report)
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["timing"]["phases"] == report["timing"]["phases"]
    assert "images_per_second" in saved["timing"]  # the inference speed stays beside them
    md = (tmp_path / "run" / "report.md").read_text()
    assert "where the time went" in md and "first step" in md and "total" in md


def test_a_trainer_built_directly_times_its_own_run(tmp_path):
    from imrec.classify.train import train
    from imrec.config import build_config

    report = train(build_config("digits", "handwriting", train={"epochs": 1}), tmp_path / "r",
                   progress=False)  # fmt: skip
    _check(report)
    assert timing.current() is None  # nothing left behind for the next run


def test_a_detector_report_says_it_too(tmp_path, mirror):
    tiny = "digits-detect:train=32,val=8,test=8,canvas=64,min_scale=18,max_scale=30,max_digits=3"
    report = imrec.fit(tiny, out=tmp_path / "det", train={"epochs": 1}, progress=False)
    _check(report)
    assert "where the time went" in (tmp_path / "det" / "report.md").read_text()


def test_a_fresh_process_counts_its_start_up(tmp_path):
    """The process's first run also gets the seconds before it: Python, imports, arguments."""
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "imrec", "train", "digits", "--epochs", "1", "--out",
                    str(out), "--quiet"], check=True, capture_output=True)  # fmt: skip
    t = json.loads((out / "report.json").read_text())["timing"]
    assert 0.2 < t["phases"]["startup"] < t["total"]
    _check({"timing": t})


def test_nested_phases_count_once():
    clock = timing.PhaseClock()
    with clock.phase("evaluation"), clock.phase("report"):
        pass
    with clock.phase("evaluation"):
        sum(range(100_000))
    s = clock.summary()
    assert set(s["phases"]) == {"evaluation", "report"}
    assert sum(s["phases"].values()) + s["other"] == pytest.approx(s["total"], abs=1e-3)
