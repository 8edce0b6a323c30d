"""The run report: ``report.json`` for programs, ``report.md`` for people.

The report dict is assembled by the training/evaluation code (dataset, model, split sizes,
metrics from :func:`imrec.classify.metrics.classification_metrics`, timing, figures, config).
Here it is only written and rendered. Every key is optional as far as rendering goes: a
section whose data is missing is left out, so a partial report (an interrupted run, an
evaluation without training) still renders.
"""

from __future__ import annotations

import json
from pathlib import Path

from imrec.core import report as parts
from imrec.core.checkpoint import atomic_write_text

MAX_SKIPPED = 50  # skipped files listed in the markdown; report.json keeps them all
MAX_CONFUSED = 10  # most confused (true, predicted) pairs shown
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
        >>> json_path, md_path = write_report(tmp, {"dataset": "mnist", "model": "cnn"})
        >>> md_path.read_text(encoding="utf-8").splitlines()[0]
        '# imrec report: mnist · cnn'
    """
    run_dir = Path(run_dir)
    json_path, md_path = run_dir / "report.json", run_dir / "report.md"
    text = json.dumps(report, indent=2, ensure_ascii=False, default=parts.json_default)
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
        parts.data(report),
        _metrics_table(report),
        _confidence(report),
        _ood(report),
        _per_class(report),
        _confused_pairs(report),
        parts.figures(report, run_dir),
        _skipped(report),
        parts.config(report),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


# ---------------------------------------------------------------- sections


def calibrated_ece(report: dict, split: str) -> float | None:
    """The calibration error on ``split`` after the run's fitted temperature (what ``imrec
    predict`` and the bundle apply); ``None`` when the run was not calibrated."""
    return ((report.get("confidence") or {}).get(split) or {}).get("ece_after")


def _ece(report: dict, split: str, metrics: dict) -> str:
    """The calibration error of the probabilities the model gives: after its temperature when
    the run was calibrated, the raw one beside."""
    after = calibrated_ece(report, split)
    if after is None:
        return f"ECE **{parts.fmt(metrics.get('ece'), 'num')}**"
    return (
        f"ECE **{parts.fmt(after, 'num')}** (calibrated; "
        f"{parts.fmt(metrics.get('ece'), 'num')} before its temperature)"
    )


def members_text(report: dict) -> str:
    """`` × N`` after the model's name when the run is an ensemble of N members, else ``""``."""
    return f" × {report['members']}" if report.get("members", 1) > 1 else ""


def _headline(report: dict) -> str:
    model = report.get("model") and f"{report['model']}{members_text(report)}"
    title = " · ".join(parts.text(v) for v in (report.get("dataset"), model) if v)
    lines = [f"# imrec report: {title}" if title else "# imrec report"]
    split, metrics = parts.main_split(report)
    if metrics:
        k = metrics.get("top_k", 5)
        scores = [
            f"{split} accuracy **{parts.fmt(metrics.get('accuracy'), 'pct')}**",
            f"macro F1 **{parts.fmt(metrics.get('macro_f1'), 'num')}**",
            f"top-{k} **{parts.fmt(metrics.get('top5'), 'pct')}**",
            _ece(report, split, metrics),
        ]
        lines += ["", " · ".join(scores)]
    facts = parts.headline_facts(report)
    if facts:
        lines += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts]
    return "\n".join(lines)


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
        values = " | ".join(parts.fmt(report[s].get(key), kind) for s in splits)
        lines.append(f"| {label} | {values} |")
    return "\n".join(lines)


def _confidence(report: dict) -> str:
    """Calibration and the unknown threshold (see imrec.classify.confidence)."""
    c = report.get("confidence")
    if not c:
        return ""
    lines = [
        "## Confidence",
        "",
        f"Temperature **{c['temperature']}**, fitted on {c['fitted_on']}; an image is unknown "
        f"when its {c['score']} score is below {parts.fmt(c['threshold'], 'num')} (set to accept "
        f"{parts.fmt(c['accept_rate'], 'pct')} of those images) or when it is blank.",
        "",
        "| | " + " | ".join(s for s in ("val", "test") if s in c) + " |",
        "|---|" + "---:|" * sum(s in c for s in ("val", "test")),
    ]
    rows = [
        ("NLL before / after", "nll_before", "nll_after", "num"),
        ("ECE before / after", "ece_before", "ece_after", "num"),
    ]
    splits = [s for s in ("val", "test") if s in c]
    for label, a, b, kind in rows:
        cells = [f"{parts.fmt(c[s][a], kind)} / {parts.fmt(c[s][b], kind)}" for s in splits]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, key in (
        ("accepted", "accepted"),
        ("accuracy of the accepted", "accuracy_of_accepted"),
    ):
        lines.append(
            f"| {label} | " + " | ".join(parts.fmt(c[s][key], "pct") for s in splits) + " |"
        )
    lines.append("| blank images | " + " | ".join(str(c[s]["blank"]) for s in splits) + " |")
    return "\n".join(lines)


def _ood(report: dict) -> str:
    """Unknown answers against other images (``imrec eval --ood``; imrec.classify.ood)."""
    o = report.get("ood")
    if not o:
        return ""
    i = o["in_distribution"]
    lines = [
        "## Unknown answers against other images",
        "",
        f"Score **{o['score']}**, threshold {parts.fmt(o['threshold'], 'num')}. The model's own "
        f"{i['n']:,} images: {parts.fmt(i['accepted'], 'pct')} accepted, "
        f"{parts.fmt(i['accuracy_of_accepted'], 'pct')} of those right "
        f"({parts.fmt(i['accuracy'], 'pct')} of all).",
        "",
        "| other set | images | AUROC | rejected at the threshold | accepted at 95% TPR | "
        "AUROC of each score | most accepted |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, s in o["sets"].items():
        by = ", ".join(f"{k} {v:.3f}" for k, v in s["auroc_by_score"].items())
        most = ", ".join(
            f"{parts.cell(m['class'])} {m['accepted']:.0%}" for m in s.get("most_accepted", [])[:5]
        )
        lines.append(
            f"| {parts.cell(name)} | {s['n']:,} | {s['auroc']:.4f} | {parts.fmt(s['rejected'], 'pct')} "
            f"| {parts.fmt(s['fpr_at_95_tpr'], 'pct')} | {by} | {most} |"
        )
    return "\n".join(lines)


PER_CLASS_ROWS = 100  # beyond it (thousands of characters), the worst classes; the rest in JSON


def _per_class(report: dict) -> str:
    split, metrics = parts.main_split(report)
    per_class = (metrics or {}).get("per_class") or {}
    if not per_class:
        return ""
    # A class with no images in the split is listed only when images were given to it (a model
    # of 3,755 characters scored on 15 of them: the other 3,740 would be rows of zeros).
    shown = [
        (name, row)
        for name, row in per_class.items()
        if row.get("support") != 0 or (row.get("predicted") or 0) > 0
    ]
    empty = len(per_class) - len(shown)
    shown.sort(key=_class_order)
    lines = [
        f"## Per class ({split}, worst F1 first)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in shown[:PER_CLASS_ROWS]:
        cells = [parts.fmt(row.get(k), "num") for k in ("precision", "recall", "f1")]
        cells.append(parts.fmt(row.get("support"), "int"))
        lines.append(f"| {parts.cell(name)} | " + " | ".join(cells) + " |")
    notes = []
    if len(shown) > PER_CLASS_ROWS:
        rest = [row.get("f1") for _, row in shown[PER_CLASS_ROWS:] if row.get("support")]
        spread = f" (F1 {min(rest):.4f} to {max(rest):.4f})" if rest else ""
        notes.append(
            f"The other {len(shown) - PER_CLASS_ROWS:,} classes{spread} are in report.json "
            f"(`metrics.{split}.per_class`)."
        )
    if any(row.get("support") == 0 for _, row in shown):
        notes.append(
            f"Classes with support 0 have no {split} images but were predicted; they are listed "
            "last and left out of the macro averages."
        )
    if empty:
        known = all("predicted" in row for row in per_class.values())  # older reports lack it
        never = " and were never predicted" if known else ""
        notes.append(f"{empty:,} more of the model's classes have no {split} images{never}.")
    return "\n".join(lines + (["", " ".join(notes)] if notes else []))


def _class_order(item: tuple[str, dict]) -> tuple:
    # worst F1 first; classes without samples cannot be judged, so they go last
    # (the empty but predicted ones, most often predicted first)
    name, row = item
    f1 = row.get("f1")
    if row.get("support") == 0:
        return (True, -(row.get("predicted") or 0), str(name))
    return (False, f1 if isinstance(f1, int | float) else 2.0, str(name))


def _confused_pairs(report: dict) -> str:
    split, metrics = parts.main_split(report)
    confusion = (metrics or {}).get("confusion")
    sparse = (metrics or {}).get("confused_pairs")
    if not confusion and sparse is None:
        return ""
    if confusion:
        names = _class_names(report, metrics, len(confusion))
        pairs = [
            (count, t, p)
            for t, row in enumerate(confusion)
            for p, count in enumerate(row)
            if t != p and count > 0
        ]
        totals = [sum(row) for row in confusion]
    else:
        names = _class_names(report, metrics, len(report.get("classes") or []))
        pairs = [(count, t, p) for t, p, count in sparse]
        per_class = metrics.get("per_class") or {}
        totals = [(per_class.get(n) or {}).get("support", 0) for n in names]
    pairs.sort(key=lambda c: (-c[0], c[1], c[2]))
    lines = [f"## Most confused pairs ({split})", ""]
    if not pairs:
        return "\n".join(lines + ["No mistakes."])
    lines += ["| true | predicted as | count | share of true class |", "|---|---|---:|---:|"]
    for count, t, p in pairs[:MAX_CONFUSED]:
        share = count / max(totals[t], 1)
        lines.append(f"| {parts.cell(names[t])} | {parts.cell(names[p])} | {count} | {share:.1%} |")
    return "\n".join(lines)


def _class_names(report: dict, metrics: dict, k: int) -> list[str]:
    """Names for the confusion matrix's K rows: the report's classes, else per_class order."""
    for names in (report.get("classes"), list(metrics.get("per_class") or {})):
        if names and len(names) == k:
            return [str(n) for n in names]
    return [str(i) for i in range(k)]


def _skipped(report: dict) -> str:
    skipped = report.get("skipped") or []
    if not skipped:
        return ""
    lines = [f"## Skipped files ({len(skipped)})", ""]
    for item in skipped[:MAX_SKIPPED]:
        item = item if isinstance(item, dict) else {"path": item}
        reason = f": {parts.text(item['reason'])}" if item.get("reason") else ""
        lines.append(f"- {parts.code(item.get('path', '?'))}{reason}")
    if len(skipped) > MAX_SKIPPED:
        lines += ["", f"… and {len(skipped) - MAX_SKIPPED} more, listed in report.json."]
    return "\n".join(lines)


# ---------------------------------------------------------------- helpers
