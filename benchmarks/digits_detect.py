"""imrec's digit detector on digits-detect, from scratch, on this machine, against its goals.

``imrec train digits-detect`` (generated scenes of MNIST digits on a 128x128 canvas, tinydet)
runs ``--runs`` times, each as its own process with its own empty ``IMREC_HOME``, so every wall
time counts copying MNIST from the mirror, generating the scenes, training (with a validation
mAP after each epoch), the final evaluation on val and test, and the report and its plots. The
peak resident memory comes from ``os.wait4``; the metrics come from the run's ``report.json``
and ``metrics.jsonl``. With several runs the figures are medians.

Goals: test mAP@.5 >= 0.97, test mAP@[.5:.95] >= 0.80, and the process wall time (stricter
than the run's own ``train_seconds``) <= 900 s. The result is printed and written to a section
of ``BENCHMARKS.md`` between the markers below.

Usage:
    .venv/bin/python benchmarks/digits_detect.py                      # one run, ~10-15 min
    .venv/bin/python benchmarks/digits_detect.py --runs 3 --preset best
    .venv/bin/python benchmarks/digits_detect.py --keep-run runs/bench-dd --imrec-args "--seed 1"
    .venv/bin/python benchmarks/digits_detect.py --dataset "digits-detect:train=64,val=16,test=16" \\
        --imrec-args "--epochs 1" --md /tmp/bench.md                # a smoke test of the script
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import statistics
import sys
from pathlib import Path

from _bench import (
    REPO,
    default_mirror,
    git_commit,
    imrec_train,
    machine,
    md_table,
    now,
    read_run,
    run_measured,
    write_section,
)

START, END = "<!-- digits_detect:start -->", "<!-- digits_detect:end -->"
GOAL_MAP50, GOAL_MAP, GOAL_WALL = 0.97, 0.80, 900.0
VERDICT = {True: "**met**", False: "**not met**"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1, help="runs (default 1); N > 1 gives medians")
    p.add_argument("--preset", choices=["fast", "best"], default="fast")
    p.add_argument("--imrec-args", default="", help='extra flags for imrec, e.g. "--epochs 30"')
    p.add_argument(
        "--dataset",
        default="digits-detect",
        help="the dataset name; smaller scenes sets (digits-detect:train=...) test the script",
    )
    p.add_argument(
        "--mirror",
        type=Path,
        default=default_mirror(),
        help="data mirror holding mnist/ (default: $IMREC_DATA_MIRROR or ../shared/data)",
    )
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md", help="file to update")
    p.add_argument("--keep-run", type=Path, metavar="DIR", help="keep runs and logs in DIR/run-N")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    return args


# ---- one run --------------------------------------------------------------------------


def run_once(cmd_args: list[str], dataset: str, mirror: Path, work: Path, i: int) -> dict:
    """One ``imrec train`` process in a fresh run folder and cache: the figures it produced."""
    run_dir, home = work / f"run-{i}", work / f"home-{i}"
    cmd, env = imrec_train(dataset, cmd_args, run_dir, mirror)
    env["IMREC_HOME"] = str(home)  # empty cache: the wall time includes making the data
    wall, rss, _ = run_measured(cmd, work / f"run-{i}.log", env)
    report, rows = read_run(run_dir)
    shutil.rmtree(home)  # the generated scenes: the next run makes its own
    return summarize_run(wall, rss, report, rows)


def summarize_run(wall: float, rss: float, report: dict, rows: list[dict]) -> dict:
    """The figures of one run, flat, from its measured process and its files."""
    test, timing = report["test"], report["timing"]
    best = next(r for r in rows if r["epoch"] == report["best_epoch"])
    return {
        "wall": wall,
        "rss_mb": rss,
        "train_s": float(report["train_seconds"]),
        "map": test["map"],
        "map50": test["map50"],
        "map75": test["map75"],
        "best_epoch": report["best_epoch"],
        "best_val_map": best["val_map"],
        "epochs": report["epochs_run"],
        "images_per_second": timing["images_per_second"],
        "single_per_second": timing["single_image_per_second"],
        "rows": rows,
        "per_class": {c: v["ap"] for c, v in test["per_class"].items()},
        "report": report,
    }


# ---- the record -----------------------------------------------------------------------

NUMBERS = (
    "wall", "train_s", "rss_mb", "epochs", "best_epoch", "best_val_map",
    "map", "map50", "map75", "images_per_second", "single_per_second",
)  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    """Medians over the runs and the three goal verdicts."""
    med = {k: statistics.median(r[k] for r in runs) for k in NUMBERS}
    return {
        "median": med,
        "map50_ok": med["map50"] >= GOAL_MAP50,
        "map_ok": med["map"] >= GOAL_MAP,
        "wall_ok": med["wall"] <= GOAL_WALL,
    }


def _row(label: object, r: dict) -> list[object]:
    return [
        label, f"{r['wall']:.1f}", f"{r['train_s']:.1f}", f"{r['rss_mb']:.0f}",
        f"{r['epochs']:g}", f"{r['best_epoch']:g}", f"{r['best_val_map']:.4f}",
        f"{r['map']:.4f}", f"{r['map50']:.4f}", f"{r['map75']:.4f}",
        f"{r['images_per_second']:.0f}", f"{r['single_per_second']:.0f}",
    ]  # fmt: skip


def run_table(runs: list[dict], med: dict) -> list[str]:
    header = [
        "run", "wall s", "train s", "peak RSS MB", "epochs", "best epoch", "val mAP (best)",
        "test mAP", "mAP@.5", "mAP@.75", "images/s (batch)", "images/s (single)",
    ]  # fmt: skip
    rows = [_row(i, r) for i, r in enumerate(runs, 1)]
    if len(runs) > 1:
        rows.append(_row("median", med))
    return md_table(header, rows)


def curve_table(rows: list[dict]) -> list[str]:
    """Epoch, validation mAP, mAP@.5, training loss and seconds, one line per epoch."""
    body = [
        [r["epoch"], f"{r['val_map']:.4f}", f"{r['val_map50']:.4f}",
         f"{r['train_loss']:.4f}", f"{r['seconds']:.1f}"]
        for r in rows
    ]  # fmt: skip
    return md_table(["epoch", "val mAP", "val mAP@.5", "train loss", "seconds"], body)


def class_table(per_class: dict[str, float | None]) -> list[str]:
    """Test AP@[.5:.95] per class as one row (ten digits fit on a line)."""
    values = ["-" if v is None else f"{v:.3f}" for v in per_class.values()]
    return md_table(["class", *per_class], [["AP", *values]], "l" + "r" * len(values))


def render(command: str, imrec_cmd: str, info: dict, commit: str, runs: list[dict]) -> str:
    """The BENCHMARKS.md section, markers included."""
    summary = summarize(runs)
    med, first = summary["median"], runs[0]["report"]
    which = "run 1" if len(runs) > 1 else "the run"
    lines = [
        START,
        f"## Detection: {first['dataset']} from scratch ({first['model']})",
        "",
        f"Command: `{command}`",
        "",
        f"- imrec: `{imrec_cmd}`",
        f"- commit `{commit}`, {now()}",
        *(f"- {k}: {v}" for k, v in info.items()),
        f"- model: {first['model']}, {first['params']:,} parameters, input "
        f"{'x'.join(map(str, first['input']['size']))}x{first['input']['channels']}, "
        f"device {first['device']}",
        f"- data: {first['split']}",
        "",
        "Wall = process start to exit with an empty cache (copying MNIST from the mirror,",
        "generating the scenes, training with a validation mAP after every epoch, the final",
        "evaluation on val and test, the report and plots). Train s = the run's own",
        "`train_seconds` (the epochs and their validation). Peak RSS from `os.wait4`. Images/s:",
        "the run's report timing on the test split, batch 32 (the model call with decoding and",
        "NMS) and one image at a time.",
        "",
        *run_table(runs, med),
        "",
        f"Per-epoch curve of {which}:",
        "",
        *curve_table(runs[0]["rows"]),
        "",
        f"Test AP@[.5:.95] per class, {which}:",
        "",
        *class_table(runs[0]["per_class"]),
        "",
        f"Goals{' (medians)' if len(runs) > 1 else ''}:",
        "",
        f"- test mAP@.5 >= {GOAL_MAP50}: {med['map50']:.4f}, {VERDICT[summary['map50_ok']]}",
        f"- test mAP@[.5:.95] >= {GOAL_MAP}: {med['map']:.4f}, {VERDICT[summary['map_ok']]}",
        f"- wall time <= {GOAL_WALL:.0f} s (whole process, stricter than train s): "
        f"{med['wall']:.1f} s, {VERDICT[summary['wall_ok']]}",
        END,
    ]
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.mirror / "mnist").is_dir():
        raise SystemExit(f"no mnist/ in {args.mirror} (set --mirror or IMREC_DATA_MIRROR)")
    cmd_args = ["--preset", args.preset, *shlex.split(args.imrec_args)]
    stamp = f"digits_detect-{dt.datetime.now():%Y%m%d-%H%M%S}"
    work = (args.keep_run or REPO / ".bench" / stamp).resolve()  # imrec runs in `work`
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(1, args.runs + 1):  # a failed run exits here and keeps `work` and its log
        runs.append(run_once(cmd_args, args.dataset, args.mirror, work, i))
        _progress(f"run {i}", runs[-1])
    if not args.keep_run:
        shutil.rmtree(work)
    command = shlex.join(["python", "benchmarks/digits_detect.py", *(argv or sys.argv[1:])])
    imrec_cmd = shlex.join(["imrec", "train", args.dataset, *cmd_args, "--out", "RUN", "--quiet"])
    section = render(command, imrec_cmd, machine(), git_commit(), runs)
    write_section(args.md, section, START, END)
    _print_summary(runs)
    print(f"wrote {args.md}" + (f"; runs kept in {work}" if args.keep_run else ""))
    return 0


def _progress(label: str, r: dict) -> None:
    print(
        f"{label:6s} wall {r['wall']:6.1f} s  train {r['train_s']:6.1f} s  "
        f"test mAP {r['map']:.4f}  mAP@.5 {r['map50']:.4f}  mAP@.75 {r['map75']:.4f}  "
        f"peak RSS {r['rss_mb']:.0f} MB",
        flush=True,
    )


def _print_summary(runs: list[dict]) -> None:
    summary = summarize(runs)
    if len(runs) > 1:
        _progress("median", summary["median"])
    ok = {True: "met", False: "NOT met"}
    print(
        f"goals: mAP@.5 >= {GOAL_MAP50} {ok[summary['map50_ok']]}; "
        f"mAP@[.5:.95] >= {GOAL_MAP} {ok[summary['map_ok']]}; "
        f"wall <= {GOAL_WALL:.0f} s {ok[summary['wall_ok']]}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
