"""Count distributed runs that fail at exit: the check behind issue 10 (SIGABRT after the work).

Runs ``torchrun --standalone --nproc_per_node=2 -m imrec train digits --epochs 2 --quiet``
``--runs`` times in a row, then ``pytest tests/test_distributed.py`` ``--suites`` times, and
prints how many of each exited non-zero (both must be 0). The logs of failed runs are kept.

    python scripts/ddp_exit_check.py --runs 30 --suites 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def torchrun_digits(run_dir: Path, log: Path) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "imrec", "train", "digits", "--epochs", "2", "--quiet", "--out", str(run_dir)]
    with open(log, "w") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO).returncode


def test_suite(log: Path) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd.append("tests/test_distributed.py")
    with open(log, "w") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=30, help="torchrun digits jobs (default 30)")
    p.add_argument("--suites", type=int, default=5, help="runs of test_distributed.py (5)")
    p.add_argument("--logs", type=Path, help="folder for the logs (default: a temporary one)")
    args = p.parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="ddp-exit-"))
    logs.mkdir(parents=True, exist_ok=True)
    failed_runs = []
    for i in range(1, args.runs + 1):
        rc = torchrun_digits(logs / f"run{i}", logs / f"run{i}.log")
        print(f"torchrun digits {i}/{args.runs}: exit {rc}", flush=True)
        if rc:
            failed_runs.append(i)
    failed_suites = []
    for i in range(1, args.suites + 1):
        rc = test_suite(logs / f"suite{i}.log")
        print(f"tests/test_distributed.py {i}/{args.suites}: exit {rc}", flush=True)
        if rc:
            failed_suites.append(i)
    print(f"torchrun runs that exited non-zero: {len(failed_runs)} of {args.runs} {failed_runs}")
    print(f"test-suite runs that failed: {len(failed_suites)} of {args.suites} {failed_suites}")
    print(f"logs: {logs}")
    return 1 if failed_runs or failed_suites else 0


if __name__ == "__main__":
    sys.exit(main())
