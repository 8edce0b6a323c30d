"""The run report: ``report.json`` for programs, ``report.md`` for people.

The report dict is assembled by the training/evaluation code (dataset, model, split sizes,
metrics from :func:`imrec.engine.metrics.classification_metrics`, timing, figures, config).
Here it is only written and rendered. Every key is optional as far as rendering goes: a
section whose data is missing is left out, so a partial report (an interrupted run, an
evaluation without training) still renders.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from imrec.engine.checkpoint import atomic_write_text

MISSING = "—"
MAX_SKIPPED = 50  # skipped files listed in the markdown; report.json keeps them all
MAX_CONFUSED = 10  # most confused (true, predicted) pairs shown
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")
METRIC_ROWS = (  # (key in the metrics dict, label, how to format)
    ("accuracy", "accuracy", "pct"),
    ("top5", "top-k accuracy", "pct"),
    ("macro_f1", "macro F1", "num"),
    ("macro_precision", "macro precision", "num"),
    ("macro_recall", "macro recall", "num"),
    ("weighted_f1", "weighted F1", "num"),
    ("ece", "ECE (calibration error)", "num"),
    ("nll", "NLL (cross-entropy)", "num"),
    ("n", "images scored", "int"),
)


def write_report(run_dir: Path, report: dict) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``run_dir``, each atomically.

    Each file goes through a temporary file in ``run_dir`` and a rename, so a reader (or a
    crash) never sees half a report. Images named in ``report["files"]`` are embedded in the
    markdown only if they exist in ``run_dir``.

    Args:
        run_dir: the run folder; created if missing.
        report: the report dict (see the module docstring). Paths, numpy values and
            dataclasses in it are converted to plain JSON.

    Returns:
        The paths of ``report.json`` and ``report.md``.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> json_path, md_path = write_report(run, {"dataset": "mnist", "model": "cnn"})
        >>> md_path.read_text(encoding="utf-8").splitlines()[0]
        '# imrec report: mnist · cnn'
    """
    run_dir = Path(run_dir)
    json_path, md_path = run_dir / "report.json", run_dir / "report.md"
    text = json.dumps(report, indent=2, ensure_ascii=False, default=_json_default)
    atomic_write_text(json_path, text + "\n")
    atomic_write_text(md_path, render_markdown(report, run_dir=run_dir))
    return json_path, md_path


def render_markdown(report: dict, *, run_dir: Path | None = None) -> str:
    """Render a report dict as markdown for a person to read.

    Sections, each left out when its data is missing: headline, data and split, metrics per
    split, per-class table (worst F1 first), most confused class pairs, figures, skipped
    files, and the resolved config (collapsed).

    Args:
        report: the report dict; any key may be missing.
        run_dir: if given, figures are embedded only when the file exists there.

    Returns:
        The markdown text, ending with a newline.

    Example:
        >>> md = render_markdown({"dataset": "mnist", "test": {"accuracy": 0.9912}})
        >>> "**99.12%**" in md
        True
    """
    sections = [
        _headline(report),
        _data(report),
        _metrics_table(report),
        _per_class(report),
        _confused_pairs(report),
        _figures(report, run_dir),
        _skipped(report),
        _config(report),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


# ---------------------------------------------------------------- sections


def _headline(report: dict) -> str:
    title = " · ".join(_text(report[k]) for k in ("dataset", "model") if report.get(k))
    lines = [f"# imrec report: {title}" if title else "# imrec report"]
    split, metrics = _main_split(report)
    if metrics:
        k = metrics.get("top_k", 5)
        scores = [
            f"{split} accuracy **{_fmt(metrics.get('accuracy'), 'pct')}**",
            f"macro F1 **{_fmt(metrics.get('macro_f1'), 'num')}**",
            f"top-{k} **{_fmt(metrics.get('top5'), 'pct')}**",
            f"ECE **{_fmt(metrics.get('ece'), 'num')}**",
        ]
        lines += ["", " · ".join(scores)]
    facts = _headline_facts(report)
    if facts:
        lines += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts]
    return "\n".join(lines)


def _headline_facts(report: dict) -> list[tuple[str, str]]:
    """(label, value) rows for the headline table, only for what the report holds."""
    facts = []
    if report.get("dataset"):
        checksum = report.get("dataset_checksum")
        suffix = f" (checksum `{_short(checksum)}`)" if checksum else ""
        facts.append(("dataset", _text(report["dataset"]) + suffix))
    if report.get("model"):
        params = report.get("params")
        suffix = f" ({_count(params)} parameters)" if params is not None else ""
        facts.append(("model", _text(report["model"]) + suffix))
    training = _training_summary(report)
    if training:
        facts.append(("training", training))
    throughput = _throughput(report.get("timing") or {})
    if throughput:
        facts.append(("inference", throughput))
    if report.get("imrec_version"):
        facts.append(("imrec", _text(report["imrec_version"])))
    return facts


def _training_summary(report: dict) -> str:
    parts = []
    if report.get("train_seconds") is not None:
        parts.append(_duration(report["train_seconds"]))
    if report.get("epochs_run") is not None:
        parts.append(f"{report['epochs_run']} epochs")
    if report.get("best_epoch") is not None:
        parts.append(f"best epoch {report['best_epoch']} (chosen on val)")
    if report.get("device"):
        parts.append(f"on {_text(report['device'])}")
    return ", ".join(parts)


def _throughput(timing: dict) -> str:
    if timing.get("images_per_second") is None:
        return ""
    details = []
    if timing.get("batch_size") is not None:
        details.append(f"batch {timing['batch_size']}")
    if timing.get("device"):
        details.append(_text(timing["device"]))
    suffix = f" ({', '.join(details)})" if details else ""
    return f"{_fmt(timing['images_per_second'], 'int')} images/s{suffix}"


def _data(report: dict) -> str:
    lines = ["## Data"]
    if report.get("split"):
        lines += ["", f"Split: {_text(report['split'])}"]
    sizes = report.get("sizes") or {}
    if sizes:
        lines += ["", "| split | images |", "|---|---:|"]
        lines += [f"| {_cell(name)} | {_fmt(n, 'int')} |" for name, n in sizes.items()]
    details = _input_summary(report)
    if details:
        lines += ["", details]
    if report.get("test"):
        lines += [
            "",
            "The test split was never used for any choice: model selection, early stopping "
            "and every setting were decided on the training and validation splits only, and "
            "the test split was scored once at the end.",
        ]
    return "\n".join(lines) if len(lines) > 1 else ""


def _input_summary(report: dict) -> str:
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
            parts.append(f"{key} {_rounded_list(inp[key])}")
    return (", ".join(parts) + ".") if parts else ""


def _metrics_table(report: dict) -> str:
    splits = [s for s in ("val", "test") if report.get(s)]
    if not splits:
        return ""
    lines = ["## Metrics", "", "| metric | " + " | ".join(splits) + " |"]
    lines.append("|---|" + "---:|" * len(splits))
    for key, label, kind in METRIC_ROWS:
        if not any(key in report[s] for s in splits):
            continue
        if key == "top5":
            label = f"top-{report[splits[-1]].get('top_k', 5)} accuracy"
        values = " | ".join(_fmt(report[s].get(key), kind) for s in splits)
        lines.append(f"| {label} | {values} |")
    return "\n".join(lines)


def _per_class(report: dict) -> str:
    split, metrics = _main_split(report)
    per_class = (metrics or {}).get("per_class") or {}
    if not per_class:
        return ""
    lines = [
        f"## Per class ({split}, worst F1 first)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in sorted(per_class.items(), key=_class_order):
        cells = [_fmt(row.get(k), "num") for k in ("precision", "recall", "f1")]
        cells.append(_fmt(row.get("support"), "int"))
        lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    if any(row.get("support") == 0 for row in per_class.values()):
        lines += [
            "",
            f"Classes with support 0 have no {split} images; they are listed last "
            "and left out of the macro averages.",
        ]
    return "\n".join(lines)


def _class_order(item: tuple[str, dict]) -> tuple:
    # worst F1 first; classes without samples cannot be judged, so they go last
    name, row = item
    f1 = row.get("f1")
    return (row.get("support") == 0, f1 if isinstance(f1, int | float) else 2.0, str(name))


def _confused_pairs(report: dict) -> str:
    split, metrics = _main_split(report)
    confusion = (metrics or {}).get("confusion")
    if not confusion:
        return ""
    names = _class_names(report, metrics, len(confusion))
    pairs = [
        (count, t, p)
        for t, row in enumerate(confusion)
        for p, count in enumerate(row)
        if t != p and count > 0
    ]
    pairs.sort(key=lambda c: (-c[0], c[1], c[2]))
    lines = [f"## Most confused pairs ({split})", ""]
    if not pairs:
        return "\n".join(lines + ["No mistakes."])
    lines += ["| true | predicted as | count | share of true class |", "|---|---|---:|---:|"]
    for count, t, p in pairs[:MAX_CONFUSED]:
        share = count / max(sum(confusion[t]), 1)
        lines.append(f"| {_cell(names[t])} | {_cell(names[p])} | {count} | {share:.1%} |")
    return "\n".join(lines)


def _class_names(report: dict, metrics: dict, k: int) -> list[str]:
    """Names for the confusion matrix's K rows: the report's classes, else per_class order."""
    for names in (report.get("classes"), list(metrics.get("per_class") or {})):
        if names and len(names) == k:
            return [str(n) for n in names]
    return [str(i) for i in range(k)]


def _figures(report: dict, run_dir: Path | None) -> str:
    files = report.get("files") or {}
    lines = []
    for name, path in files.items():
        if run_dir is not None and not (Path(run_dir) / path).exists():
            continue
        link = Path(path).as_posix().replace(" ", "%20")
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            lines += [f"### {_text(name)}", "", f"![{_text(name)}]({link})", ""]
        else:
            lines += [f"- [{_text(name)}]({link})", ""]
    return "\n".join(["## Figures", ""] + lines).rstrip() if lines else ""


def _skipped(report: dict) -> str:
    skipped = report.get("skipped") or []
    if not skipped:
        return ""
    lines = [f"## Skipped files ({len(skipped)})", ""]
    for item in skipped[:MAX_SKIPPED]:
        item = item if isinstance(item, dict) else {"path": item}
        reason = f": {_text(item['reason'])}" if item.get("reason") else ""
        lines.append(f"- {_code(item.get('path', '?'))}{reason}")
    if len(skipped) > MAX_SKIPPED:
        lines += ["", f"… and {len(skipped) - MAX_SKIPPED} more, listed in report.json."]
    return "\n".join(lines)


def _config(report: dict) -> str:
    if not report.get("config"):
        return ""
    text = json.dumps(report["config"], indent=2, ensure_ascii=False, default=_json_default)
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


# ---------------------------------------------------------------- helpers


def _main_split(report: dict) -> tuple[str, dict]:
    """The split the headline and tables describe: test, or val when there is no test."""
    for split in ("test", "val"):
        if isinstance(report.get(split), dict) and report[split]:
            return split, report[split]
    return "", {}


def _fmt(value, kind: str) -> str:
    """Format a number as 'pct' (93.42%), 'num' (0.9342) or 'int' (1,234); '—' if missing."""
    if value is None or isinstance(value, bool):
        return MISSING
    if not isinstance(value, int | float):
        return _cell(value)
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "int":
        return f"{round(value):,}"
    return f"{value:.4f}"


def _duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _count(n) -> str:
    """Parameter count as 11.69 M / 850.2 k."""
    if not isinstance(n, int | float):
        return _text(n)
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _rounded_list(values) -> str:
    if isinstance(values, list | tuple):
        return "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values) + "]"
    return _text(values)


def _short(checksum) -> str:
    text = str(checksum)
    return text if len(text) <= 20 else text[:16] + "…"


def _text(value) -> str:
    """One line of plain text (names, devices, reasons)."""
    return " ".join(str(value).split())


def _cell(value) -> str:
    """Text that is safe inside a markdown table cell."""
    return _text(value).replace("|", "\\|")


def _code(value) -> str:
    """Inline code span; a longer fence when the text holds a backtick."""
    text = _text(value)
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _json_default(obj):
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
