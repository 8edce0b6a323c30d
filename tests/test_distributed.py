"""Data-parallel training under torchrun: two CPU processes on loopback, on the digits set.

Each end-to-end test starts ``python -m torch.distributed.run --nproc_per_node=2 -m imrec train``
as a subprocess, the way a user would, and reads the run folder it leaves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imrec.engine import distributed
from imrec.engine.distributed import World
from imrec.engine.placement import rank_batch

# --no-figures: these runs are compared by their numbers (about 1 s less a run).
ARGS = ["--batch-size", "32", "--seed", "1", "--quiet", "--no-figures"]


# ---- helpers ----------------------------------------------------------------------------


class Job:
    """One launched command, its output going to two files (a pipe could fill and block it)."""

    def __init__(self, cmd: list[str], logs: Path, env: dict):
        self.out, self.err = logs.with_suffix(".out"), logs.with_suffix(".err")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            # Its own process group, so that a test can kill torchrun as `kill -9 -PGID` would.
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, env=env, start_new_session=True
            )
        self.pid = self.proc.pid

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, self.out.read_text(), self.err.read_text()


def _start(tmp_path: Path, *argv, nproc: int = 2, env: dict | None = None) -> Job:
    """torchrun with ``nproc`` workers (or plain ``python -m imrec`` for 0).

    ``--standalone`` lets torchrun bind its rendezvous store to a free port itself and keep
    it: a port picked here and released before the launch could be taken in between.
    """
    cmd = [sys.executable, "-m", "imrec", *map(str, argv)]
    if nproc:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd = [sys.executable, *launcher, *cmd[1:]]
    logs = tmp_path / f"job-{time.monotonic_ns()}"
    return Job(cmd, logs, {**os.environ, **(env or {})})


def _train_here(*argv) -> None:
    """``imrec train ...`` in this interpreter, as the one-process reference beside a torchrun
    job: the same command and numbers as ``python -m imrec``, without another interpreter
    paying torch's import. ``--threads`` sets torch's threads for the process; the caller's
    come back after."""
    from imrec.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["train", *map(str, argv)]) == 0
    finally:
        torch.set_num_threads(threads)


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for_epochs(run: Path, job: Job, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(_rows(run)) < n and job.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_rows(run)) >= n, f"no {n} epoch(s) in {timeout} s: {job.err.read_text()[-2000:]}"


def _workers(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (its children, which carry RANK)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = [e[5:] for e in env if e.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0])] = pid
    return ranks


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


# ---- the pieces -------------------------------------------------------------------------


def test_world_from_env_reads_torchrun_variables():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    world = distributed.world_from_env(env)
    assert world == World(size=4, rank=3, local_size=2, local_rank=1)
    assert not world.main
    assert distributed.world_from_env({}) == World()


def test_rank_batches_cover_the_global_batch_once():
    batch = torch.arange(100, 131)  # 31 samples over 2 ranks: 16 + 15
    parts = [rank_batch(batch, World(size=2, rank=r)) for r in range(2)]
    assert [len(p) for p in parts] == [16, 15]
    assert torch.equal(torch.cat(parts), batch)
    # A final batch smaller than the world: every rank still gets a sample.
    tiny = [rank_batch(torch.tensor([7]), World(size=3, rank=r)).tolist() for r in range(3)]
    assert tiny == [[7], [7], [7]]


def test_validation_shards_partition_the_split():
    parts = [distributed.shard(10, World(size=3, rank=r)) for r in range(3)]
    assert [list(range(10))[s] for s in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_seconds() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7.5")
    assert distributed.timeout_seconds() == 7.5
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(distributed.DistributedError, match="IMREC_DIST_TIMEOUT"):
        distributed.timeout_seconds()


def test_threads_split_the_usable_cores():
    cores = len(os.sched_getaffinity(0))
    assert distributed.cpu_threads(1) == cores
    assert distributed.cpu_threads(cores * 4) == 1


def test_communication_failures_are_told_from_bugs():
    assert distributed.is_comm_failure(RuntimeError("[gloo] Connection closed by peer"))
    assert distributed.is_comm_failure(RuntimeError("Timed out waiting 4000ms for recv"))
    assert not distributed.is_comm_failure(RuntimeError("shapes cannot be multiplied"))
    hung = RuntimeError("Application timeout caused pair closure")
    assert distributed.is_comm_failure(hung)
    assert "rank 0 of 2 gave no answer within the collective timeout" in (
        distributed.failure_message(hung, World(size=2, rank=1))
    )
    died = RuntimeError("[gloo/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:37050")
    assert "died or closed its connection" in distributed.failure_message(died, World(size=2))


def test_collective_helpers_in_a_group_of_one(tmp_path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert distributed.all_reduce_sum(torch.tensor([3.0, 1.0])).tolist() == [3.0, 1.0]
        assert distributed.all_reduce_mean(torch.tensor([4.0])).tolist() == [4.0]
        assert distributed.broadcast_object({"epoch": 2}) == {"epoch": 2}
        assert distributed.share_from_main({"test": 0.9}, timeout_s=5) == {"test": 0.9}
        distributed.barrier()
    finally:
        distributed.shutdown()
    assert not dist.is_initialized()


LEAVE_WORLD = """
import os, sys, torch
from torch import nn
from imrec.engine import distributed

device = distributed.setup(torch.device("cpu"))  # torchrun's variables come from the test
model = nn.parallel.DistributedDataParallel(nn.Linear(3, 2))
model(torch.ones(4, 3)).sum().backward()
assert distributed.broadcast_object({"done": 1}) == {"done": 1}
assert distributed.collective_threads() > 0, "no gloo worker threads: nothing was tested"
del model
distributed.shutdown()
print("threads after shutdown:", distributed.collective_threads())
"""


def test_leaving_the_world_ends_the_collective_threads(tmp_path):
    """After a DDP run the process group ends with its gloo threads; a thread left over would
    reach for the GIL during interpreter shutdown and abort a finished run (SIGABRT).

    In a fresh interpreter: once a test has imported ``torch._dynamo`` the defect cannot show.
    """
    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}
    env.update(LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_WORLD)
    done = subprocess.run(
        [sys.executable, script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "threads after shutdown: 0" in done.stdout, done.stdout + done.stderr


# ---- end to end -------------------------------------------------------------------------


def test_two_processes_reach_the_accuracy_of_one(tmp_path):
    """An ensemble of two members, under torchrun and in one process: the pair finishes (DDP,
    which finds no unused parameters here, stops at its second step if any member's parameters
    got no gradient), learns as one process does, and rank 0 saves both members. (A
    one-member run under torchrun: test_killed_two_process_run_resumes.)"""
    epochs, one, two = 2, tmp_path / "one", tmp_path / "two"
    args = ["digits", "--epochs", epochs, "--members", 2, *ARGS]
    # One thread, like each of the two ranks: two threads crawl on cores that others share.
    # The two runs side by side: their numbers do not depend on what else runs.
    pair = _start(tmp_path, "train", *args, "--out", two)
    _train_here(*args, "--out", one, "--threads", 1)
    rc, out, err = pair.finish(300)
    assert rc == 0, err
    assert "report:" in out

    # One line per epoch: two ranks appending would double them.
    assert [r["epoch"] for r in _rows(two)] == list(range(1, epochs + 1))
    a, b = _report(one), _report(two)
    assert (a["members"], b["members"]) == (2, 2)
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert b["test"]["accuracy"] > 0.9, b["test"]
    assert abs(a["test"]["accuracy"] - b["test"]["accuracy"]) <= 0.03, (a["test"], b["test"])
    assert b["effective_batch_size"] == 32 and b["per_rank_batch_size"] == 16
    assert b["lr_scaling"] == "none"
    assert not list(two.glob(".*.tmp")), "a half-written file was left behind"

    from imrec.core.checkpoint import load_checkpoint

    weights, meta = load_checkpoint(two / "best.safetensors")
    assert not [k for k in weights if k.startswith("module.")]
    assert {k.split(".")[2] for k in weights if k.startswith("backbone.parts.")} == {"0", "1"}
    assert meta["epoch"] == b["best_epoch"]


def test_killed_two_process_run_resumes(tmp_path):
    epochs, run = 3, tmp_path / "run"
    p = _start(tmp_path, "train", "digits", "--out", run, "--epochs", epochs, *ARGS)
    _wait_for_epochs(run, p, 1)
    workers = _workers(p.pid)
    os.killpg(p.pid, signal.SIGKILL)  # torchrun and its group; the workers sit in their own
    p.finish()
    deadline = time.monotonic() + 10
    while any(map(_alive, workers.values())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, workers.values())), "workers outlived their torchrun"
    done = len(_rows(run))
    assert 1 <= done < epochs and not (run / "report.json").exists()

    rc, _, err = _start(tmp_path, "train", "--resume", run).finish()
    assert rc == 0, err
    assert [r["epoch"] for r in _rows(run)] == list(range(1, epochs + 1))
    assert _report(run)["world_size"] == 2


def test_a_dead_rank_fails_the_job(tmp_path):
    run = tmp_path / "run"
    p = _start(tmp_path, "train", "digits", "--out", run, "--epochs", 200, *ARGS)
    _wait_for_epochs(run, p, 1)
    os.kill(_workers(p.pid)[1], signal.SIGKILL)
    t0 = time.monotonic()
    rc, _, err = p.finish(timeout=60)
    assert rc != 0 and time.monotonic() - t0 < 60
    assert "SIGKILL" in err  # torchrun names the rank that died
    assert not (run / "report.json").exists()


def test_a_hung_rank_times_out_with_a_clear_message(tmp_path):
    """A rank that is alive but silent is noticed only through the collective timeout T: rank 0
    must fail with the clear message within a few T (one T in the collective, the rest to reach
    it and to tear down), whatever the machine's load."""
    run, timeout = tmp_path / "run", 5.0
    env = {distributed.TIMEOUT_ENV: str(timeout)}
    p = _start(tmp_path, "train", "digits", "--out", run, "--epochs", 200, *ARGS, env=env)
    _wait_for_epochs(run, p, 1)
    hung = _workers(p.pid)[1]
    os.kill(hung, signal.SIGSTOP)  # alive but silent: only the timeout can tell
    t0 = time.monotonic()
    try:
        while (
            "imrec: error" not in p.err.read_text()
            and p.proc.poll() is None
            and time.monotonic() - t0 < 10 * timeout
        ):
            time.sleep(0.1)
        waited = time.monotonic() - t0
    finally:
        os.kill(hung, signal.SIGCONT)  # so that torchrun's SIGTERM can end it
    rc, _, err = p.finish(timeout=60)
    assert rc != 0
    # gloo words a timeout in several ways ("Timed out waiting ...", "Application timeout
    # caused pair closure"); the message says it in one.
    assert "distributed training failed on rank 0 of 2: rank 1 of 2 gave no answer" in err, err
    assert waited <= 3 * timeout, (
        f"rank 0 noticed the hung rank after {waited:.1f} s (T={timeout:g} s)"
    )


def test_a_time_limit_plans_alike_on_every_rank(tmp_path):
    """--time-limit under torchrun: each rank times its own epochs, so rank 0's plans are
    broadcast at every decision (first plan, then after each epoch, whether it shortens,
    grows or stays); a rank that skipped one would leave the other waiting at the next
    collective. The run ends with the plan printed last, once, and records it."""
    run = tmp_path / "run"
    args = ["train", "digits", "--out", run, "--epochs", 40, "--time-limit", 0.05, *ARGS]
    p = _start(tmp_path, *args)
    try:
        rc, _, err = p.finish(180)
    finally:
        if p.proc.poll() is None:  # a hang: end torchrun and its workers
            os.killpg(p.pid, signal.SIGKILL)
    assert rc == 0, err
    plans = [int(line.split(" min: ")[1].split()[0]) for line in err.splitlines()
             if "imrec: --time-limit" in line]  # fmt: skip
    assert plans, err  # 40 epochs of digits never fit in 3 s
    ran = len(_rows(run))
    assert [r["epoch"] for r in _rows(run)] == list(range(1, ran + 1))
    assert plans[-1] == ran < 40
    assert all(plans[i] != plans[i + 1] for i in range(len(plans) - 1)), err  # rank 0 alone
    assert json.loads((run / "config.json").read_text())["loop"]["epochs"] == ran
    limit = _report(run)["time_limit"]
    # A cut after the last epoch ran (a slow epoch on a loaded machine) is said, and recorded.
    assert limit.pop("schedule_ended") is ("stops short of its schedule's end" not in err), err
    assert limit == {
        "minutes": 0.05,
        "epochs_asked": 40,
        "epochs_planned": ran,
    }


DETECT = "digits-detect:train=192,val=32,test=48,canvas=64,min_scale=18,max_scale=30,max_digits=3"
# Each rank still augments its share with its own draws (brightness and contrast); the random
# zoom and shift, which slow a few epochs' learning most, are off.
DETECT_AUGMENT = ["--augment-off", "scale,translate"]


def test_detection_trains_data_parallel_too(tmp_path):
    """A detector under torchrun: ranks share each batch, validation is sharded and scored on
    rank 0, and the run matches a single process's quality."""
    epochs, one, two = 4, tmp_path / "one", tmp_path / "two"
    args = [DETECT, "--epochs", epochs, "--batch-size", 8, *DETECT_AUGMENT, "--seed", 1, "--quiet"]
    args.append("--no-figures")
    pair = _start(tmp_path, "train", *args, "--out", two)
    _train_here(*args, "--out", one, "--threads", 1)  # side by side
    rc, out, err = pair.finish(300)
    assert rc == 0, err
    assert "report:" in out
    assert [r["epoch"] for r in _rows(two)] == list(range(1, epochs + 1))  # one line per epoch
    a, b = _report(one), _report(two)
    assert (a["world_size"], b["world_size"]) == (1, 2) and b["per_rank_batch_size"] == 4
    assert b["test"]["map50"] > 0.3, b["test"]  # it learnt (4 epochs: 0.42 and 0.43)
    assert abs(a["test"]["map50"] - b["test"]["map50"]) <= 0.15, (a["test"], b["test"])
    # The validation mAP that picked the best epoch was computed from both ranks' detections.
    assert max(r["val_map"] for r in _rows(two)) > 0
