"""imrec's detector trained from scratch on coco128: does the pipeline learn on real photos?

``imrec train coco128`` (the default recipe: tinydet at 320 px, from scratch) runs once as
its own process with its own empty ``IMREC_HOME``; the wall time counts copying and checking
coco128 from the mirror, training with a validation mAP after every epoch, the final
evaluation and the report. The learning curve comes from the run's ``metrics.jsonl``, the test
figures (the 128 val2017 images) from its ``report.json``. The section of ``BENCHMARKS.md``
between the markers below says what the numbers can and cannot show: a hundred-odd training
images are far too few for COCO's 80 classes.

Usage:
    .venv/bin/python benchmarks/coco128.py                       # the default recipe
    .venv/bin/python benchmarks/coco128.py --keep-run runs/bench-coco128 --imrec-args "--epochs 60"
    .venv/bin/python benchmarks/coco128.py --md /tmp/bench.md \\
        --imrec-args "--epochs 1 --model-opt width=8 --model-opt neck=16 --size 64"  # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
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

START, END = "<!-- coco128:start -->", "<!-- coco128:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--imrec-args", default="", help='extra flags for imrec, e.g. "--epochs 60"')
    p.add_argument(
        "--mirror",
        type=Path,
        default=default_mirror(),
        help="data mirror holding coco128/ (default: $IMREC_DATA_MIRROR or ../shared/data)",
    )
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md", help="file to update")
    p.add_argument("--keep-run", type=Path, metavar="DIR", help="keep the run folder as DIR")
    return p.parse_args(argv)


def run(imrec_args: list[str], mirror: Path, work: Path, run_dir: Path) -> dict:
    """One measured ``imrec train coco128``: wall, peak RSS, report and epoch rows."""
    cmd, env = imrec_train("coco128", imrec_args, run_dir, mirror)
    env["IMREC_HOME"] = str(work / "home")  # empty cache: the wall includes getting the data
    wall, rss, _ = run_measured(cmd, work / "coco128.log", env)
    shutil.rmtree(work / "home")
    report, rows = read_run(run_dir)
    return {"wall": wall, "rss_mb": rss, "report": report, "rows": rows}


# ---- the record -----------------------------------------------------------------------


def curve_table(rows: list[dict]) -> list[str]:
    """Epoch, training loss, validation mAP and mAP@.5, one line per epoch."""
    body = [
        [r["epoch"], f"{r['train_loss']:.4f}", f"{r['val_map']:.4f}", f"{r['val_map50']:.4f}"]
        for r in rows
    ]
    return md_table(["epoch", "train loss", "val mAP", "val mAP@.5"], body)


def render(command: str, imrec_cmd: str, info: dict, commit: str, result: dict, curves: str) -> str:
    """The BENCHMARKS.md section, markers included; ``curves`` is a link to the plot or ''."""
    report, rows = result["report"], result["rows"]
    test, sizes = report["test"], report["sizes"]
    first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
    lines = [
        START,
        f"## Detection: coco128 from scratch ({report['model']})",
        "",
        f"Command: `{command}`",
        "",
        f"- imrec: `{imrec_cmd}`",
        f"- commit `{commit}`, {now()}",
        *(f"- {k}: {v}" for k, v in info.items()),
        f"- model: {report['model']}, {report['params']:,} parameters, input "
        f"{'x'.join(map(str, report['input']['size']))}x{report['input']['channels']}, "
        f"device {report['device']}, no pretrained weights",
        f"- data: {sizes['train']} train / {sizes['val']} val images (train2017), "
        f"{sizes['test']} test images (val2017), {len(report['classes'])} classes",
        f"- wall {result['wall']:.1f} s (process start to exit, empty cache), "
        f"train {report['train_seconds']:.1f} s, peak RSS {result['rss_mb']:.0f} MB",
        "",
        "Learning curve:",
        "",
        *curve_table(rows),
        "",
        f"Test (the {sizes['test']} val2017 images, best epoch {report['best_epoch']} on val): "
        f"mAP@[.5:.95] **{test['map']:.4f}**, mAP@.5 **{test['map50']:.4f}**, "
        f"mAP@.75 {test['map75']:.4f}.",
        "",
        *_verdict(sizes["train"], first, last),
    ]
    if curves:
        lines += ["", f"Curves of the kept run: [{curves}]({curves})"]
    return "\n".join([*lines, END])


def _verdict(n_train: int, first: float, last: float) -> list[str]:
    """What the run can show: learning if the loss fell, never COCO-grade detection."""
    few = f"{n_train} training images from scratch are far too few for COCO's 80 classes, so"
    if last < first:
        return [
            few,
            f"this run shows that the pipeline learns (training loss {first:.3f} -> {last:.3f})",
            "and that it measures honestly on held-out photos, not that it detects COCO objects",
            "well.",
        ]
    return [
        few + " this run",
        f"cannot show much; here the training loss did not fall ({first:.3f} -> {last:.3f}),",
        "so it does not even show that the pipeline learns.",
    ]


# ---- main -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.mirror / "coco128" / "data.yaml").is_file():
        raise SystemExit(f"no coco128/ in {args.mirror} (set --mirror or IMREC_DATA_MIRROR)")
    imrec_args = shlex.split(args.imrec_args)
    work = REPO / ".bench" / f"coco128-{dt.datetime.now():%Y%m%d-%H%M%S}"
    work.mkdir(parents=True)
    run_dir = (args.keep_run or work / "run").resolve()  # imrec runs in `work`
    result = run(imrec_args, args.mirror, work, run_dir)  # a failure keeps `work` and its log
    curves = ""
    if args.keep_run:
        shutil.move(work / "coco128.log", run_dir / "benchmark.log")
        if (run_dir / "curves.png").is_file():
            curves = os.path.relpath(run_dir / "curves.png", args.md.resolve().parent)
    shutil.rmtree(work)
    command = shlex.join(["python", "benchmarks/coco128.py", *(argv or sys.argv[1:])])
    imrec_cmd = shlex.join(["imrec", "train", "coco128", *imrec_args, "--out", "RUN", "--quiet"])
    section = render(command, imrec_cmd, machine(), git_commit(), result, curves)
    write_section(args.md, section, START, END)
    t = result["report"]["test"]
    print(
        f"coco128: wall {result['wall']:.1f} s, test mAP {t['map']:.4f}, mAP@.5 {t['map50']:.4f}, "
        f"train loss {result['rows'][0]['train_loss']:.3f} -> {result['rows'][-1]['train_loss']:.3f}"
    )
    print(f"wrote {args.md}" + (f"; run kept in {run_dir}" if args.keep_run else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
