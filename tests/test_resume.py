"""A run killed with SIGKILL resumes from its last complete epoch and ends exactly like an
uninterrupted run with the same seed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imrec.cli import main

# Four epochs: killed after two, resumed for the other two (each process's start-up, data and
# report cost more than the epochs; two epochs after the kill exercise the restored optimiser,
# schedule, EMA and random state as well as four did).
EPOCHS = 4
ARGS = [
    "--epochs",
    str(EPOCHS),
    "--batch-size",
    "32",
    "--seed",
    "3",
    "--threads",
    "1",
    "--quiet",
    "--ema",
    "--no-figures",  # the runs are compared by their numbers
]


def _imrec(*argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "imrec", *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        **kw,
    )


def _epochs(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Wall-clock fields differ between any two runs; everything else must match exactly.
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "train_seconds", "images_per_second")}
        for r in rows
    ]


def _kill_and_resume(tmp_path: Path, dataset: str, args: list[str], epochs: int) -> None:
    """Train ``dataset`` once through, and once killed mid-run and resumed: same numbers.
    The run through and the run to be killed train side by side (one thread each, the same
    numbers whatever else runs: the CI's 2 cores each take one)."""
    ref = tmp_path / "ref"
    through = _imrec("train", dataset, "--out", ref, *args)

    run = tmp_path / "killed"
    p = _imrec("train", dataset, "--out", run, *args)
    deadline = time.monotonic() + 240
    while len(_epochs(run)) < 2 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    done = len(_epochs(run))
    assert 2 <= done < epochs, (
        f"the run was killed after {done} epochs; the test needs a mid-run kill"
    )
    assert not (run / "report.json").exists()
    _, err = through.communicate(timeout=300)
    assert through.returncode == 0, err

    # Resumed in this process (only the killed run needs a process of its own): one torch
    # thread, as the run's config asks, like the run through.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "--resume", str(run)]) == 0
    assert "report:" in out.getvalue()

    assert _epochs(run) == _epochs(ref)
    a = json.loads((ref / "report.json").read_text())["test"]
    b = json.loads((run / "report.json").read_text())["test"]
    assert b["accuracy"] == a["accuracy"] and b["nll"] == pytest.approx(a["nll"], abs=1e-6)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    _kill_and_resume(tmp_path, "digits", ARGS, EPOCHS)


def test_a_streamed_folder_run_resumes_too(tmp_path):
    """Training images decoded by DataLoader workers: killed and resumed, still the same run."""
    from conftest import bar_folder

    bar_folder(tmp_path / "glyphs", per_class=60)
    args = ["--model", "cnn", "--data-placement", "stream", "--workers", "1", "--epochs", "8",
            "--batch-size", "8", "--seed", "2", "--threads", "1", "--quiet", "--no-figures"]  # fmt: skip
    _kill_and_resume(tmp_path, f"folder:{tmp_path / 'glyphs'}", args, 8)


def test_an_ensemble_resumes_too(tmp_path):
    """Two members in one run: both networks, their optimiser state and the EMA come back."""
    # Three epochs, not four: killed after two, resumed for one (two networks make each epoch
    # twice the work, and the point here is the second member's state, which the resumed
    # epoch needs from the checkpoint).
    args = [*ARGS, "--members", "2"]
    args[args.index("--epochs") + 1] = "3"
    _kill_and_resume(tmp_path, "digits", args, 3)
    from imrec.core.checkpoint import load_checkpoint

    weights, _ = load_checkpoint(tmp_path / "killed" / "best.safetensors")
    assert any(k.startswith("backbone.parts.1.") for k in weights)
    assert json.loads((tmp_path / "killed" / "report.json").read_text())["members"] == 2


def test_resume_needs_a_completed_epoch(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(["train", "--resume", str(run)]) == 2
    assert "no completed epoch" in capsys.readouterr().err
