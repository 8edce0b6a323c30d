"""Where a run's seconds go: ``timing.phases`` in every report, shown in report.md."""

from __future__ import annotations

import json
import os
import platform
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


def test_import_imrec_costs_nothing_until_a_name_is_used():
    """`import imrec` (and so the command line's start) loads no torch; each public name loads
    on first use and is the real object."""
    code = (
        "import sys, imrec\n"
        "assert 'torch' not in sys.modules, 'torch loaded by import imrec'\n"
        "missing = sorted(set(imrec.__all__) - set(dir(imrec)))\n"
        "assert not missing, missing\n"
        "from imrec.api import fit\n"
        "assert imrec.fit is fit and imrec.Predictor.__name__ == 'Predictor'\n"
        "try:\n"
        "    imrec.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_command_line_collects_no_garbage_while_a_command_starts(tmp_path):
    """imrec.core.heap under `imrec train`: no collection before the first epoch (imports, data,
    model), the collector back on and the start-up's objects frozen for the training, and the
    run's objects frozen for the interpreter's shutdown."""
    code = f"""
import gc, json, sys
import imrec.engine.loop as loop
from imrec.cli import main

seen = {{"full": 0, "any": 0}}
def count(phase, info):
    if phase == "stop":
        seen["any"] += 1
        seen["full"] += info["generation"] == 2
gc.callbacks.append(count)
at_training = {{}}
real = loop.Trainer.train_loop
def train_loop(self):
    at_training.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count(), **seen)
    return real(self)
loop.Trainer.train_loop = train_loop
sys.argv = ["imrec", "train", "digits", "--epochs", "1", "--out", {str(tmp_path / "r")!r},
            "--quiet"]
rc = main()  # as the program, not called with an argv
print(json.dumps({{"rc": rc, "at_training": at_training, "enabled": gc.isenabled(),
                  "frozen": gc.get_freeze_count()}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0
    start = got["at_training"]
    assert start["any"] == 0, start  # paused from main() until the model was built
    assert start["enabled"] and start["frozen"] > 100_000, start  # torch's objects, frozen
    assert got["enabled"] and got["frozen"] >= start["frozen"], got


def test_commands_without_a_model_collect_garbage_from_the_start():
    """Data and doctor commands may run long on many small objects before (or without) a
    model: under the program the collector is back on as soon as the arguments are read."""
    code = """
import gc, json, sys
import imrec.cli as cli
seen = {}
def data_list(args):
    seen["enabled"] = gc.isenabled()
    return 0
cli.cmd_data_list = data_list
sys.argv = ["imrec", "data", "list"]
rc = cli.main()
print(json.dumps({"rc": rc, **seen}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"rc": 0, "enabled": True}


def test_outside_the_command_line_the_collector_is_left_alone():
    import gc

    from imrec.core import heap

    before = gc.get_freeze_count()
    heap.settled()  # what loading a model or starting a training calls
    assert gc.isenabled() and gc.get_freeze_count() == before
    gc.disable()  # a program's own choice is kept too
    try:
        heap.settled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    from imrec.cli import main

    assert main(["data", "list"]) == 0  # the command line called from Python
    assert gc.isenabled() and gc.get_freeze_count() == before


def test_the_evaluation_reuses_the_best_epochs_validation_outputs(digits_run):
    """report.json's validation numbers are the best checkpoint's, whether they come from the
    best epoch's own validation pass (kept when it was the last) or a new one."""
    from imrec.classify.evaluate import load_for_model
    from imrec.classify.metrics import classification_metrics
    from imrec.core.batching import Batcher, predict_logits
    from imrec.models.load import load_model

    report = json.loads((digits_run / "report.json").read_text())
    model, meta = load_model(digits_run)
    split = load_for_model("digits", meta, report["config"]).val
    batcher = Batcher.from_stats(meta["input"]["mean"], meta["input"]["std"], "cpu")
    logits = predict_logits(model, split.images, batcher)
    fresh = classification_metrics(logits, split.labels, meta["classes"])
    for key in ("accuracy", "macro_f1", "nll"):
        assert report["val"][key] == pytest.approx(fresh[key], abs=1e-6), key


def test_the_evaluation_measures_validation_again_when_the_outputs_were_not_kept(
    tmp_path, monkeypatch
):
    """Outputs too big to keep (or a best epoch that was not the last) are measured again: the
    report is the same either way."""
    import imrec.classify.train as classify_train

    kept = imrec.fit("digits", out=tmp_path / "kept", train={"epochs": 1}, progress=False)
    monkeypatch.setattr(classify_train, "KEEP_VAL_OUTPUTS", 0)
    again = imrec.fit("digits", out=tmp_path / "again", train={"epochs": 1}, progress=False)
    for key in ("accuracy", "nll", "ece"):
        assert kept["val"][key] == pytest.approx(again["val"][key], abs=1e-6), key
    assert kept["confidence"]["threshold"] == pytest.approx(again["confidence"]["threshold"])


def test_the_command_line_keeps_freed_memory_for_the_next_step():
    """Under the program, glibc's malloc keeps large freed blocks (imrec.core.heap
    .keep_freed_memory): a 64 MB tensor made and freed again and again, as a training step
    makes its activations, is mapped and zero-filled once the heap has grown (a round or
    two), not on every step (by default: one page fault per 4 KB page every time)."""
    code = """
import json, resource, sys
import torch
import imrec.cli as cli

def faults_of_reuse():
    torch.ones(2**24)  # 64 MB, freed at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.ones(2**24)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

seen = {}
def data_list(args):
    seen["faults"] = [faults_of_reuse() for _ in range(4)][-1]
    return 0
cli.cmd_data_list = data_list
default = [faults_of_reuse() for _ in range(2)][-1]
sys.argv = ["imrec", "data", "list"]
print(json.dumps({"rc": cli.main(), "default": default, **seen}))
"""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("keep_freed_memory acts on glibc's malloc only")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0
    assert got["default"] > 4 * 8_000, got  # about 4 x 16,384 pages of 4 KB
    assert got["faults"] < 2_000, got


def test_malloc_settings_of_the_user_and_of_a_host_program_are_kept(monkeypatch):
    from imrec import cli
    from imrec.core import heap

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert heap.keep_freed_memory() is False  # the environment's own setting wins
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1))
    assert cli.main(["data", "list"]) == 0  # called from Python: the host's allocator
    assert calls == []


def test_the_command_line_lets_idle_openmp_threads_sleep_soon_before_torch_loads():
    """Under the program, GOMP_SPINCOUNT is set before torch (and so libgomp, which reads it
    once as it loads) is imported; a user's own choice of how OpenMP threads wait is kept."""
    code = """
import json, os, sys
import imrec.cli as cli

seen = {}
def data_list(args):
    seen["spin"] = os.environ.get("GOMP_SPINCOUNT")
    return 0
cli.cmd_data_list = data_list
seen["torch_before"] = "torch" in sys.modules
sys.argv = ["imrec", "data", "list"]
print(json.dumps({"rc": cli.main(), **seen}))
"""
    from imrec.core import openmp

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}

    def run(**extra):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra}
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    got = run()
    assert got == {"rc": 0, "torch_before": False, "spin": str(openmp.SPIN)}
    assert run(GOMP_SPINCOUNT="123")["spin"] == "123"  # the user's count
    assert run(OMP_WAIT_POLICY="ACTIVE")["spin"] is None  # the user's policy, no count added


def test_openmp_waits_are_not_changed_once_torch_is_loaded_or_for_a_host_program(monkeypatch):
    import torch  # noqa: F401  (loaded: libgomp has read its environment already)

    from imrec import cli
    from imrec.core import openmp

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert openmp.wait_briefly() is False
    assert "GOMP_SPINCOUNT" not in os.environ
    calls = []
    monkeypatch.setattr(openmp, "wait_briefly", lambda: calls.append(1))
    assert cli.main(["data", "list"]) == 0  # called from Python: the host's threads
    assert calls == []


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc only")
def test_finding_the_process_start_leaves_no_file_open():
    """It read /proc with bare open() and left both files to the garbage collector."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert timing._process_start() is not None
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
