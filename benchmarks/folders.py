"""Your own folders against the built-ins: the goals of BENCHMARKS.md "Your own folders".

    python benchmarks/folders.py --work /tmp/folders [--seeds 0 1] [--only chars74k ...]

Each case is a whole ``imrec`` process (cold: what a user waits for), run with no flags on the
folder and with the built-in's own recipe on the built-in, on the same test writers
(``benchmarks/make_folders.py`` lays the folders out with the built-ins' writer split):

- ``chars74k``: Chars74K upper case, original PNGs as a folder vs ``imrec train chars74k-upper``.
- ``chinese``: Chinese MNIST JPEGs with train/ and test/ vs ``imrec train chinese-mnist``.
- ``hanzi``: 15 numerals rendered from stroke data, trained as a folder; then
  ``imrec eval RUN --data chinese-mnist`` and ``imrec predict RUN`` on writer 1's 150 files, and
  ``imrec eval --data folder:<those 150 files>``: the three must agree.
- ``fashion``: 6,000 Fashion-MNIST PNGs as a photo folder (the domain must stay photo).

Results go to ``<work>/results.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import median

from _bench import imrec_cli as imrec

HERE = Path(__file__).parent


def make(work: Path, what: str, *extra: str) -> Path:
    folder = work / what
    if not folder.is_dir():
        subprocess.run(
            [sys.executable, str(HERE / "make_folders.py"), what, str(folder), *extra], check=True
        )
    return folder


def train(dataset: str, out: Path, seed: int, *flags: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    wall, _ = imrec("train", dataset, "--out", str(out), "--seed", str(seed), "--quiet", *flags)
    report = json.loads((out / "report.json").read_text())
    return {
        "accuracy": report["test"]["accuracy"],
        "train_seconds": report["train_seconds"],
        "wall_seconds": round(wall, 1),
        "epochs": report["epochs_run"],
        "domain": (report.get("domain") or {}).get("name"),
        "input": report["input"]["size"],
        "notes": report["config"].get("notes", []),
    }


def versus(work: Path, builtin: str, folder: Path, seeds: list[int]) -> dict:
    rows = {"builtin": [], "folder": []}
    for seed in seeds:
        rows["builtin"].append(train(builtin, work / f"runs/{builtin}-{seed}", seed))
        rows["folder"].append(train(f"folder:{folder}", work / f"runs/{folder.name}-f{seed}", seed))
    acc = {k: median(r["accuracy"] for r in v) for k, v in rows.items()}
    return {
        "runs": rows,
        "median_accuracy": acc,
        "gap_points": 100 * (acc["folder"] - acc["builtin"]),
    }


def hanzi(work: Path) -> dict:
    folder = make(work, "hanzi-numerals", "--per-class", "400")
    run = work / "runs/hanzi"
    if (run / "report.json").is_file():  # trained already: the checks below are what changed
        report = json.loads((run / "report.json").read_text())
        result = {"train": {"accuracy": report["test"]["accuracy"], "input": report["input"]}}
    else:
        result = {"train": train(f"folder:{folder}", run, 0)}
    _, text = imrec("eval", str(run), "--data", "chinese-mnist")
    result["eval_chinese_mnist"] = json.loads((run / "eval-chinese-mnist/report.json").read_text())[
        "test"
    ]["accuracy"]
    writer1 = work / "chinese-writer1"  # test/: writer 1's files; train/: the others (unused)
    chinese = make(work, "chinese-mnist")
    if not writer1.is_dir():
        for f in sorted(chinese.rglob("input_1_*.jpg")):
            (writer1 / "test" / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, writer1 / "test" / f.parent.name / f.name)
        (writer1 / "train").symlink_to((chinese / "train").resolve())
    files = sorted((writer1 / "test").rglob("*.jpg"))
    _, text = imrec("predict", str(run), *map(str, files), "--json", "--top-k", "1")
    predicted = json.loads(text)
    right = sum(p["top"][0]["label"] == Path(p["input"]).parent.name for p in predicted)
    result["predict_writer1"] = right / len(files)
    imrec("eval", str(run), "--data", f"folder:{writer1}")
    eval_dir = run / f"eval-{str(writer1).strip('/').replace('/', '_')}"
    report = json.loads((eval_dir / "report.json").read_text())
    result["eval_writer1"] = report["test"]["accuracy"]
    result["eval_writer1_n"] = report["test"]["n"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/imrec-folders"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="+", default=["chars74k", "chinese", "hanzi", "fashion"])
    a = p.parse_args()
    results = {}
    if "chars74k" in a.only:
        results["chars74k"] = versus(
            a.work, "chars74k-upper", make(a.work, "chars74k-upper"), a.seeds
        )
    if "chinese" in a.only:
        results["chinese"] = versus(a.work, "chinese-mnist", make(a.work, "chinese-mnist"), a.seeds)
    if "hanzi" in a.only:
        results["hanzi"] = hanzi(a.work)
    if "fashion" in a.only:
        folder = make(a.work, "fashion-mnist", "--per-class", "600")
        results["fashion"] = train(f"folder:{folder}", a.work / "runs/fashion", 0)
    (a.work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
