"""Helpers shared by the benchmark scripts: measured processes, the machine, the record.

Every script in this folder writes one section of ``BENCHMARKS.md`` between its own pair of
markers, naming the command, the commit and the machine that made its numbers. This module
holds what they have in common, so each script reads as the description of one measurement.

Example:
    >>> from _bench import git_commit, machine
    >>> sorted(machine())[:2], git_commit()  # doctest: +SKIP
    (['cores', 'cpu'], '21ec877+dirty')
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---- processes ------------------------------------------------------------------------


def run_measured(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd`` to completion: (wall seconds, peak RSS in MB, its output).

    Output goes to ``log`` (the command runs in the log's folder); a failing command ends the
    benchmark with the tail of its log. ``os.wait4`` reaps the child itself, which gives this
    child's own peak RSS (getrusage of all children would only give the largest one seen so far).

    Example:
        >>> wall, rss, text = run_measured(["true"], Path("/tmp/true.log"), dict(os.environ))
        >>> rss > 0
        True
    """
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped above, so tell Popen
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-20:])
        raise SystemExit(f"{shlex.join(cmd)} failed (exit {proc.returncode}), log {log}:\n{tail}")
    return wall, usage.ru_maxrss / 1024, text  # ru_maxrss is in KiB on Linux


def imrec_cli(*args: str) -> tuple[float, str]:
    """Run ``python -m imrec ARGS`` (a whole process, as a user runs it): its wall time and
    stdout; a failure ends the benchmark with the tail of its stderr."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "imrec", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"imrec {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0, out.stdout


def predict_top5(run: Path, folder: Path, truth) -> dict:
    """top-1/top-5 of ``imrec predict RUN FOLDER --json --top-k 5`` (a whole process, as a user
    runs it), ``truth(name)`` giving each file's true label from its name; with its wall time."""
    wall, out = imrec_cli("predict", str(run), str(folder), "--json", "--top-k", "5")
    top1 = top5 = 0
    answers = json.loads(out)
    for item in answers:
        expected = truth(Path(item["input"]).name)
        labels = [t["label"] for t in item["top"]]
        top1 += labels[0] == expected
        top5 += expected in labels
    n = len(answers)
    return {"top1": top1 / n, "top5": top5 / n, "n": n, "wall_seconds": round(wall, 1)}


def command_output(cmd: list[str], cwd: Path | None = None) -> str:
    """The stripped stdout of ``cmd`` ('' when it prints nothing or fails)."""
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd).stdout.strip()


def default_mirror() -> Path:
    """The data mirror: ``$IMREC_DATA_MIRROR``, else ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("IMREC_DATA_MIRROR") or REPO.parent / "shared" / "data")


def imrec_train(
    dataset: str, args: list[str], run_dir: Path, mirror: Path
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of one ``imrec train DATASET ARGS --out RUN --quiet``."""
    out = str(run_dir.resolve())  # the command runs in another folder (see run_measured)
    cmd = [sys.executable, "-m", "imrec", "train", dataset, *args, "--out", out]
    return cmd + ["--quiet"], dict(os.environ, IMREC_DATA_MIRROR=str(mirror.resolve()))


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """A finished run's ``report.json`` and its ``metrics.jsonl`` rows (one per epoch)."""
    report = json.loads((run_dir / "report.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return report, [json.loads(line) for line in lines if line.strip()]


# ---- the record -----------------------------------------------------------------------


def machine() -> dict[str, str]:
    """CPU, cores, memory, OS, Python and torch version of this machine.

    Example:
        >>> sorted(machine())
        ['cores', 'cpu', 'os', 'python', 'ram', 'torch']
    """
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    mem = re.search(r"MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text())
    return {
        "cpu": cpu.group(1).strip() if cpu else platform.processor() or "unknown",
        "cores": f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}",
        "ram": f"{int(mem.group(1)) / 2**20:.1f} GiB" if mem else "unknown",
        "os": _os_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _os_name() -> str:
    release = Path("/etc/os-release")
    if release.exists():
        found = re.search(r'PRETTY_NAME="?([^"\n]+)', release.read_text())
        if found:
            return f"{found.group(1)}, kernel {platform.release()}"
    return platform.platform()


def git_commit() -> str:
    """Short commit of the checkout, with ``+dirty`` when there are uncommitted changes."""
    if os.environ.get("IMREC_BENCH_COMMIT"):
        # Set by whoever sends a copy of the tree to another machine (its git data may be stale).
        return os.environ["IMREC_BENCH_COMMIT"]
    commit = command_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO) or "unknown"
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO)
    return commit + ("+dirty" if dirty else "")


def now() -> str:
    """The local date and time as BENCHMARKS.md writes it, e.g. ``2026-11-25 12:20 UTC``."""
    return f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"


def md_table(header: list[str], rows: list[list[object]], align: str = "") -> list[str]:
    """A Markdown table as lines; ``align`` has one letter per column, ``l`` or ``r`` (default r).

    Example:
        >>> md_table(["epoch", "loss"], [[1, "0.50"]], "rr")
        ['| epoch | loss |', '|---:|---:|', '| 1 | 0.50 |']
    """
    align = align or "r" * len(header)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return ["| " + " | ".join(header) + " |", rule, *body]


def write_section(md: Path, section: str, start: str, end: str) -> None:
    """Replace the part of ``md`` between ``start`` and ``end`` by ``section`` (or append it).

    ``section`` includes the markers. The file is replaced atomically, so an interrupted
    benchmark never leaves half a BENCHMARKS.md; the text outside the markers is kept as it is.

    Example:
        >>> write_section(Path("/tmp/b.md"), "<!-- a:start -->hi<!-- a:end -->",
        ...               "<!-- a:start -->", "<!-- a:end -->")
        >>> "hi" in Path("/tmp/b.md").read_text()
        True
    """
    text = md.read_text() if md.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, md)
