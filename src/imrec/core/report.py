"""Pieces of the markdown report that every task's report uses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from imrec.core import timing

MISSING = "—"


FIGURE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


def headline_facts(report: dict) -> list[tuple[str, str]]:
    """(label, value) rows for the headline table, only for what the report holds."""
    facts = []
    if report.get("dataset"):
        checksum = report.get("dataset_checksum")
        suffix = f" (checksum `{short(checksum)}`)" if checksum else ""
        facts.append(("dataset", text(report["dataset"]) + suffix))
    if report.get("model"):
        params = report.get("params")
        suffix = f" ({count(params)} parameters)" if params is not None else ""
        facts.append(("model", text(report["model"]) + suffix))
    training = training_summary(report)
    if training:
        facts.append(("training", training))
    rate = throughput(report.get("timing") or {})
    if rate:
        facts.append(("inference", rate))
    if (report.get("timing") or {}).get("phases"):
        facts.append(("where the time went", timing.describe(report["timing"])))
    if report.get("imrec_version"):
        facts.append(("imrec", text(report["imrec_version"])))
    return facts


def training_summary(report: dict) -> str:
    parts = []
    if report.get("train_seconds") is not None:
        parts.append(duration(report["train_seconds"]))
    if report.get("epochs_run") is not None:
        limit = report.get("time_limit") or {}
        asked = limit.get("epochs_asked")
        if asked is not None and limit.get("epochs_planned", asked) < asked:
            cut = (
                ""
                if limit.get("schedule_ended", True)
                else (
                    "; the last epoch ran slower than planned, so the learning rate stopped short "
                    "of its schedule's end"
                )
            )
            parts.append(
                f"{report['epochs_run']} of the {asked} epochs asked (a time limit of "
                f"{limit['minutes']:g} min{cut})"
            )
        else:
            parts.append(f"{report['epochs_run']} epochs")
    top = report.get("val_top") or {}
    if report.get("best_epoch") is not None and top.get("epoch") not in (
        None,
        report["best_epoch"],
    ):
        parts.append(
            f"kept epoch {report['best_epoch']} (the last whose val score is within "
            f"{100 * top['margin']:.1f} points, two standard errors, of the best: epoch "
            f"{top['epoch']}'s)"
        )
    elif report.get("best_epoch") is not None:
        parts.append(f"best epoch {report['best_epoch']} (chosen on val)")
    if report.get("device"):
        parts.append(f"on {text(report['device'])}")
    return ", ".join(parts)


def throughput(timing: dict) -> str:
    if timing.get("images_per_second") is None:
        return ""
    details = []
    if timing.get("batch_size") is not None:
        details.append(f"batch {timing['batch_size']}")
    if timing.get("device"):
        details.append(text(timing["device"]))
    suffix = f" ({', '.join(details)})" if details else ""
    return f"{fmt(timing['images_per_second'], 'int')} images/s{suffix}"


def data(report: dict) -> str:
    lines = ["## Data"]
    if report.get("split"):
        lines += ["", f"Split: {text(report['split'])}"]
    sizes = report.get("sizes") or {}
    if sizes:
        lines += ["", "| split | images |", "|---|---:|"]
        lines += [f"| {cell(name)} | {fmt(n, 'int')} |" for name, n in sizes.items()]
    details = input_summary(report)
    if details:
        lines += ["", details]
    lines += _domain_and_recipe(report)
    if report.get("split_scored") == "all":  # `imrec eval RUN --data OTHER --split all`
        n = (report.get("test") or {}).get("n")
        count = f" ({fmt(n, 'int')})" if n is not None else ""
        lines += [
            "",
            f"Scored: every image of {text(report.get('dataset') or 'the dataset')}{count}, its "
            "training, validation and test splits together (`--split all`): the metrics' test "
            "column is these images, held out only if the model never trained on this dataset.",
        ]
    elif report.get("test"):
        lines += [
            "",
            "The test split was never used for any choice: model selection, early stopping "
            "and every setting were decided on the training and validation splits only, and "
            "the test split was scored once at the end.",
        ]
    return "\n".join(lines) if len(lines) > 1 else ""


def _domain_and_recipe(report: dict) -> list[str]:
    """How the domain, the preparation and the training length were chosen, when known.

    Example:
        >>> _domain_and_recipe({"domain": {"name": "handwriting", "note": "set by --domain",
        ...     "ink": {"form": 2}}, "config": {"notes": ["3 epochs"]}})
        ['', 'Domain: handwriting (set by --domain); images in the handwriting normal form (version 2)', '', 'Recipe: 3 epochs']
    """
    lines = []
    dom = report.get("domain") or {}
    if dom.get("name"):
        line = f"Domain: {text(dom['name'])}"
        if dom.get("note"):
            line += f" ({text(dom['note'])})"
        ink = dom.get("ink") or {}
        if ink.get("form"):
            line += f"; images in the handwriting normal form (version {ink['form']})"
        if ink.get("soften"):
            side = max((report.get("input") or {}).get("size") or [0])
            sigma = f" by {float(ink['soften']) * side:.2f} px" if side else ""
            line += f"; real images softened{sigma} (a Gaussian) as the renders are blurred"
        lines += ["", line]
    for note in (report.get("config") or {}).get("notes", []):
        lines += ["", f"Recipe: {text(note)}"]
    return lines


def input_summary(report: dict) -> str:
    parts = []
    if report.get("classes"):
        parts.append(f"{len(report['classes'])} classes")
    inp = report.get("input") or {}
    if inp.get("size"):
        parts.append("input " + "×".join(str(s) for s in inp["size"]))
    if inp.get("channels") is not None:
        parts.append(f"{inp['channels']} channel(s)")
    for key in ("mean", "std"):
        if inp.get(key) is not None:
            parts.append(f"{key} {rounded_list(inp[key])}")
    return (", ".join(parts) + ".") if parts else ""


def figures(report: dict, run_dir: Path | None) -> str:
    files = report.get("files") or {}
    lines = []
    for name, path in files.items():
        if run_dir is not None and not (Path(run_dir) / path).exists():
            continue
        link = Path(path).as_posix().replace(" ", "%20")
        if Path(path).suffix.lower() in FIGURE_IMAGE_SUFFIXES:
            lines += [f"### {text(name)}", "", f"![{text(name)}]({link})", ""]
        else:
            lines += [f"- [{text(name)}]({link})", ""]
    return "\n".join(["## Figures", ""] + lines).rstrip() if lines else ""


def config(report: dict) -> str:
    if not report.get("config"):
        return ""
    text = json.dumps(report["config"], indent=2, ensure_ascii=False, default=json_default)
    fence = "````" if "```" in text else "```"
    return "\n".join(
        [
            "## Config",
            "",
            "<details>",
            "<summary>Resolved config</summary>",
            "",
            f"{fence}json",
            text,
            fence,
            "",
            "</details>",
        ]
    )


def main_split(report: dict) -> tuple[str, dict]:
    """The split the headline and tables describe: test, or val when there is no test."""
    for split in ("test", "val"):
        if isinstance(report.get(split), dict) and report[split]:
            return split, report[split]
    return "", {}


def fmt(value, kind: str) -> str:
    """Format a number as 'pct' (93.42%), 'num' (0.9342) or 'int' (1,234); '—' if missing."""
    if value is None or isinstance(value, bool):
        return MISSING
    if not isinstance(value, int | float):
        return cell(value)
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "int":
        return f"{round(value):,}"
    return f"{value:.4f}"


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def count(n) -> str:
    """Parameter count as 11.69 M / 850.2 k."""
    if not isinstance(n, int | float):
        return text(n)
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def rounded_list(values) -> str:
    if isinstance(values, list | tuple):
        return "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values) + "]"
    return text(values)


def short(checksum) -> str:
    text = str(checksum)
    return text if len(text) <= 20 else text[:16] + "…"


def text(value) -> str:
    """One line of plain text (names, devices, reasons)."""
    return " ".join(str(value).split())


def cell(value) -> str:
    """Text that is safe inside a markdown table cell."""
    return text(value).replace("|", "\\|")


def code(value) -> str:
    """Inline code span; a longer fence when the text holds a backtick."""
    shown = text(value)
    fence = "``" if "`" in shown else "`"
    return f"{fence} {shown} {fence}" if fence == "``" else f"`{shown}`"


def json_default(obj):
    """Plain JSON for the few non-JSON values a report may carry."""
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    raise TypeError(f"cannot write {type(obj).__name__} to report.json")
