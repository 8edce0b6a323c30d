"""Time to a test accuracy: seconds of training an MNIST recipe needs for 99.0% and 99.5%.

Each configuration (a preset, field overrides, an epoch budget) trains once per seed in this
process through imrec's own classification trainer, on the device named by ``--device``.
After every epoch the model a run would save (its EMA where the recipe keeps one) is scored on
the test split, outside the timed part. A run's training time after epoch k is the sum of the
first k epochs' ``train_seconds``: the optimiser steps alone, timed on the host after a GPU
synchronisation at the end of each epoch (validation, checkpoint writing and the test scoring
are not counted; data loading and model building happen before). A configuration reaches a
target when every seed's run does; its time to the target is the median over seeds of the
first such epoch's training time. The schedule (warm-up, decay to zero) is planned for the
configuration's whole epoch budget, so shorter budgets are separate configurations.

Before the first timed run, an untimed one-epoch run of the first configuration warms the
process up (CUDA context, cuDNN autotuning, allocator pools); its wall time is reported.
Configurations with ``compile`` pay for compilation inside their first epoch unless an earlier
one left compiled code to reuse; their per-epoch times show it.

``--plan fashion`` instead times whole ``imrec train fashion-mnist`` processes (wall clock, as
a user sees it) and reads their test accuracy from ``report.json``.

Usage:
    python benchmarks/time_to_accuracy.py --plan cpu                  # the 2-core CPU
    python benchmarks/time_to_accuracy.py --plan gpu --device cuda    # a GPU
    python benchmarks/time_to_accuracy.py --plan fashion --device cuda
    python benchmarks/time_to_accuracy.py --plan smoke --md /tmp/b.md # seconds, for a check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
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

from imrec.classify.train import ClassifyTrainer
from imrec.config import build_config
from imrec.core.batching import predict_logits
from imrec.data import load_dataset

TARGETS = (0.99, 0.995)
SMOKE_IMAGES = 10_800  # of the 54,000 training images

# name -> (preset, overrides for build_config, epoch budgets). "default" is `imrec train mnist`.
PLANS: dict[str, list[tuple[str, str, dict, list[int]]]] = {
    "smoke": [("default", "fast", {"train": {"batch_size": 256}}, [1])],
    "cpu": [
        ("default", "fast", {}, [3]),
        ("best", "best", {}, [15]),
    ],
    # `--preset best` is cnn size=m width 24 without elastic warps since 2026-12-01 (the GPU rows
    # of BENCHMARKS.md "run 3" were measured with the size-s recipe and --model-opt size=m).
    "gpu": [
        ("default", "fast", {}, [3]),
        ("best", "best", {}, [4, 6, 8, 15]),
        (
            "best, batch 512, lr 2e-2",
            "best",
            {"train": {"batch_size": 512, "lr": 2e-2}},
            [4, 6, 8],
        ),
    ],
}
FASHION = [
    ("--preset best", ["--preset", "best"]),
    ("--preset best --model-opt width=32", ["--preset", "best", "--model-opt", "width=32"]),
]


class ScoredTrainer(ClassifyTrainer):
    """The classification trainer, scoring its model on the test split after every epoch
    (untimed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scores: list[tuple[float, float]] = []  # (epoch train_seconds, test accuracy)

    def train_epoch(self, epoch: int) -> dict:
        row = super().train_epoch(epoch)
        test = self.data.test
        logits = predict_logits(self.eval_model(), test.images, self.batcher)
        accuracy = (logits.argmax(1) == test.labels).float().mean().item()
        self.scores.append((row["train_seconds"], accuracy))
        return row


def train_once(data, preset: str, overrides: dict, epochs: int, seed: int, device: str) -> dict:
    """One run: per-epoch training seconds and test accuracy, cumulative times to targets."""
    train = {**overrides.get("train", {}), "epochs": epochs, "seed": seed, "device": device}
    cfg = build_config(
        "mnist", data.domain, preset, data=overrides.get("data"), model=overrides.get("model"),
        train=train,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        trainer = ScoredTrainer(cfg, Path(tmp) / "run", data=data, progress=False)
        trainer.train_loop()
    cumulative, total = [], 0.0
    for seconds, _ in trainer.scores:
        total += seconds
        cumulative.append(round(total, 3))
    accuracies = [round(a, 5) for _, a in trainer.scores]
    reached = {
        str(t): next((c for c, a in zip(cumulative, accuracies, strict=True) if a >= t), None)
        for t in TARGETS
    }
    return {
        "epochs": epochs,
        "seed": seed,
        "epoch_seconds": [round(s, 3) for s, _ in trainer.scores],
        "cumulative_seconds": cumulative,
        "test_accuracy": accuracies,
        "time_to": reached,
    }


def summarise(runs: list[dict]) -> dict:
    """Median final accuracy and, per target, the median time over seeds if all reached it."""
    out = {
        "final_accuracy": statistics.median(r["test_accuracy"][-1] for r in runs),
        "train_seconds": statistics.median(r["cumulative_seconds"][-1] for r in runs),
    }
    for t in TARGETS:
        times = [r["time_to"][str(t)] for r in runs]
        out[str(t)] = statistics.median(times) if all(x is not None for x in times) else None
    return out


def device_info(device: str) -> dict[str, str]:
    info = machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        info["bf16"] = str(torch.cuda.is_bf16_supported())
    return info


def run_plan(plan: str, device: str, seeds: list[int], budget: float, out: Path) -> dict:
    data = load_dataset("mnist", val_fraction=0.1, seed=0)
    if plan == "smoke":  # a check that the script runs: a fifth of the training images
        data = dataclasses.replace(data, train=data.train.subset(torch.arange(SMOKE_IMAGES)))
    result: dict = {"plan": plan, "device": device, "seeds": seeds, "configs": []}
    first = PLANS[plan][0]
    if plan != "smoke":  # the smoke plan checks that the script runs; its times are not kept
        t0 = time.perf_counter()
        train_once(data, first[1], first[2], 1, seeds[0], device)  # untimed warm-up
        result["warmup_seconds"] = round(time.perf_counter() - t0, 2)
        print(f"warm-up run: {result['warmup_seconds']:.1f} s", flush=True)
    start = time.perf_counter()
    for name, preset, overrides, budgets in PLANS[plan]:
        for epochs in budgets:
            if time.perf_counter() - start > budget:
                print(f"time budget of {budget:.0f} s spent: skipping {name} x{epochs}")
                result["configs"].append({"name": name, "epochs": epochs, "skipped": "budget"})
                continue
            try:
                runs = [train_once(data, preset, overrides, epochs, s, device) for s in seeds]
            except Exception as e:  # one broken configuration must not lose the others
                print(f"{name} x{epochs}: FAILED {type(e).__name__}: {e}", flush=True)
                result["configs"].append({"name": name, "epochs": epochs, "error": repr(e)})
                continue
            summary = summarise(runs)
            result["configs"].append({"name": name, "epochs": epochs, **summary, "runs": runs})
            print(
                f"{name} x{epochs}: final {summary['final_accuracy']:.4f}, "
                f"train {summary['train_seconds']:.2f} s, to 99.0% {summary['0.99']}, "
                f"to 99.5% {summary['0.995']}",
                flush=True,
            )
            out.write_text(json.dumps(result, indent=1))  # keep what is done if killed
    return result


def run_fashion(device: str, budget: float, out: Path) -> dict:
    mirror = default_mirror()
    result: dict = {"plan": "fashion", "device": device, "runs": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tta-fashion-") as tmp:
        for name, args in FASHION:
            if time.perf_counter() - start > budget:
                result["runs"].append({"name": name, "skipped": "budget"})
                continue
            run_dir = Path(tmp) / name.replace(" ", "_").replace("-", "").replace("=", "_")
            cmd, env = imrec_train("fashion-mnist", [*args, "--device", device], run_dir, mirror)
            try:
                wall, rss, _ = run_measured(cmd, Path(tmp) / f"{run_dir.name}.log", env)
            except SystemExit as e:
                result["runs"].append({"name": name, "error": str(e)[-2000:]})
                print(f"{name}: FAILED\n{e}", flush=True)
                continue
            report, rows = read_run(run_dir)
            entry = {
                "name": name,
                "wall_seconds": round(wall, 2),
                "train_seconds": round(sum(r.get("train_seconds", 0.0) for r in rows), 2),
                "epochs": len(rows),
                "test_accuracy": report["test"]["accuracy"],
                "peak_rss_mb": round(rss),
            }
            result["runs"].append(entry)
            print(entry, flush=True)
            out.write_text(json.dumps(result, indent=1))
            shutil.rmtree(run_dir, ignore_errors=True)
    return result


def markdown(result: dict, command: str, info: dict[str, str]) -> str:
    plan = result["plan"]
    start, end = f"<!-- time_to_accuracy:{plan}:start -->", f"<!-- time_to_accuracy:{plan}:end -->"
    where = info.get("gpu") or info["cpu"]
    lines = [
        start,
        f"## Time to accuracy ({plan}): {where}",
        "",
        f"Command: `{command}`",
        "",
        f"- commit `{git_commit()}`, {now()}",
        *(f"- {k}: {v}" for k, v in info.items()),
    ]
    if plan == "fashion":
        rows = [
            [r["name"], r.get("epochs", ""), r.get("wall_seconds", r.get("error", r.get("skipped"))),
             r.get("train_seconds", ""), r.get("test_accuracy", ""), r.get("peak_rss_mb", "")]
            for r in result["runs"]
        ]  # fmt: skip
        lines += [
            "",
            "Whole `imrec train fashion-mnist ...` processes (data from the cache, report and",
            "figures included).",
            "",
            *md_table(
                ["recipe", "epochs", "wall s", "train s", "test accuracy", "peak RSS MB"],
                rows,
                "lrrrrr",
            ),
        ]
    else:
        lines += [
            f"- seeds {result['seeds']}; untimed warm-up run "
            + (f"{result['warmup_seconds']} s" if "warmup_seconds" in result else "skipped"),
            "",
            "Training seconds = optimiser steps only (see the script's docstring); 'to 99.0%' /",
            "'to 99.5%' = median over seeds of the training time at the first epoch whose test",
            "accuracy reached it (— = not every seed reached it).",
            "",
        ]
        rows = []
        for c in result["configs"]:
            if "runs" not in c:
                rows.append([c["name"], c["epochs"], c.get("error", c.get("skipped")), "", "", ""])
                continue
            t99, t995 = c["0.99"], c["0.995"]
            accs = " / ".join(f"{r['test_accuracy'][-1]:.4f}" for r in c["runs"])
            rows.append([
                c["name"], c["epochs"], accs, f"{c['train_seconds']:.2f}",
                "—" if t99 is None else f"{t99:.2f}", "—" if t995 is None else f"{t995:.2f}",
            ])  # fmt: skip
        lines += md_table(
            ["recipe", "epochs", "final test accuracy per seed", "train s", "to 99.0% s",
             "to 99.5% s"],
            rows,
            "lrrrrr",
        )  # fmt: skip
        lines.append("")
        for t in TARGETS:
            best = [c for c in result["configs"] if c.get(str(t)) is not None]
            if best:
                c = min(best, key=lambda c: c[str(t)])
                lines.append(
                    f"- fastest to {t:.1%}: **{c[str(t)]:.2f} s** of training ({c['name']}, "
                    f"{c['epochs']}-epoch schedule)"
                )
            else:
                lines.append(f"- {t:.1%}: not reached by any configuration")
    lines.append(end)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", choices=[*PLANS, "fashion"], default="cpu")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 (cpu), 0 1")
    p.add_argument("--budget", type=float, default=1e9, help="seconds; later configs skipped")
    p.add_argument("--json", type=Path, default=Path("time_to_accuracy.json"))
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("IMREC_DATA_MIRROR", str(default_mirror()))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here")
    seeds = args.seeds or ([0] if args.plan in ("cpu", "smoke") else [0, 1])
    if args.plan == "fashion":
        result = run_fashion(args.device, args.budget, args.json)
    else:
        result = run_plan(args.plan, args.device, seeds, args.budget, args.json)
    args.json.write_text(json.dumps(result, indent=1))
    command = f"python benchmarks/time_to_accuracy.py --plan {args.plan} --device {args.device}"
    if args.seeds:
        command += " --seeds " + " ".join(map(str, args.seeds))
    section = markdown(result, command, device_info(args.device))
    start, end = section.splitlines()[0], section.splitlines()[-1]
    write_section(args.md, section, start, end)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
