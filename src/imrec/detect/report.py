"""The detection report: the same ``report.json`` / ``report.md`` pair as classification.

``report.md`` leads with COCO mAP@[.5:.95], mAP@.5 and mAP@.75 on the test split, then the
data (with what was wrong in the annotations), the metrics of val and test, AP per class
(worst first), figures and the config. Shared sections come from :mod:`imrec.core.report`.
"""

from __future__ import annotations

import json
from pathlib import Path

from imrec.core import report as parts
from imrec.core.checkpoint import atomic_write_text

ROWS = (
    ("map", "mAP@[.5:.95]"),
    ("map50", "mAP@.5"),
    ("map75", "mAP@.75"),
    ("map_small", "mAP small (< 32² px)"),
    ("map_medium", "mAP medium"),
    ("map_large", "mAP large (> 96² px)"),
    ("mar_100", "mean recall, 100 detections"),
)
MAX_CLASSES = 40


def write_detection_report(run_dir: Path, report: dict) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``run_dir`` atomically."""
    run_dir = Path(run_dir)
    text = json.dumps(report, indent=2, ensure_ascii=False, default=parts.json_default)
    atomic_write_text(run_dir / "report.json", text + "\n")
    atomic_write_text(run_dir / "report.md", render_detection_markdown(report, run_dir=run_dir))
    return run_dir / "report.json", run_dir / "report.md"


def render_detection_markdown(report: dict, *, run_dir: Path | None = None) -> str:
    """Markdown for a person; any key may be missing.

    Example:
        >>> md = render_detection_markdown({"dataset": "d", "test": {"map": 0.5, "map50": 0.9}})
        >>> "mAP@.5 **0.9000**" in md
        True
    """
    sections = [
        _headline(report),
        parts.data(report),
        _annotations(report),
        _metrics(report),
        _per_class(report),
        parts.figures(report, run_dir),
        parts.config(report),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _headline(report: dict) -> str:
    title = " · ".join(parts.text(report[k]) for k in ("dataset", "model") if report.get(k))
    lines = [f"# imrec detection report: {title}" if title else "# imrec detection report"]
    split, m = parts.main_split(report)
    if m:
        lines += [
            "",
            f"{split} mAP@[.5:.95] **{parts.fmt(m.get('map'), 'num')}** · "
            f"mAP@.5 **{parts.fmt(m.get('map50'), 'num')}** · mAP@.75 **{parts.fmt(m.get('map75'), 'num')}**",
        ]
        plain = m.get("at_0.5")
        if plain:
            lines += [
                "",
                f"At score ≥ {plain.get('score_thresh', 0.5)} and IoU ≥ {plain.get('iou', 0.5)}: "
                f"{plain.get('true_positives')} objects found, {plain.get('false_positives')} "
                f"false detections, {plain.get('missed')} missed.",
            ]
    facts = parts.headline_facts(report)
    timing = report.get("timing") or {}
    if timing.get("single_image_per_second") is not None:
        facts.append(
            (
                "one image at a time",
                f"{parts.fmt(timing['single_image_per_second'], 'int')} images/s",
            )
        )
    if facts:
        lines += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts]
    return "\n".join(lines)


def _annotations(report: dict) -> str:
    a = report.get("annotations")
    if not a:
        return ""
    boxes = report.get("boxes") or {}
    lines = ["## Annotations", ""]
    if boxes:
        lines.append("Boxes: " + ", ".join(f"{k} {v}" for k, v in boxes.items()) + ".")
    counts = [
        ("clipped to the image", a.get("clipped")),
        ("empty, dropped", a.get("dropped_empty")),
        ("negative size, dropped", a.get("dropped_negative")),
        ("crowd, ignored", a.get("crowd")),
        ("images without boxes", a.get("images_without_boxes")),
    ]
    problems = [f"{n} {label}" for label, n in counts if n]
    lines += [
        "",
        "Problems found and handled: " + (", ".join(problems) if problems else "none") + ".",
    ]
    for ex in (a.get("examples") or [])[:10]:
        lines.append(f"- {parts.text(ex)}")
    return "\n".join(lines)


def _metrics(report: dict) -> str:
    splits = [s for s in ("val", "test") if isinstance(report.get(s), dict) and report[s]]
    if not splits:
        return ""
    lines = ["## Metrics (COCO, pycocotools)", "", "| metric | " + " | ".join(splits) + " |"]
    lines.append("|---|" + "---:|" * len(splits))
    for key, label in ROWS:
        values = [parts.fmt(report[s].get(key), "num") for s in splits]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _per_class(report: dict) -> str:
    _, m = parts.main_split(report)
    per = (m or {}).get("per_class") or {}
    if not per:
        return ""
    rows = sorted(per.items(), key=lambda kv: (kv[1].get("ap") is None, kv[1].get("ap") or 0.0))
    lines = [
        "## AP per class (worst first)",
        "",
        "| class | AP | AP50 | AP75 | boxes | detections |",
    ]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name, c in rows[:MAX_CLASSES]:
        lines.append(
            f"| {parts.cell(name)} | {parts.fmt(c.get('ap'), 'num')} | {parts.fmt(c.get('ap50'), 'num')} | "
            f"{parts.fmt(c.get('ap75'), 'num')} | {c.get('gt', '')} | {c.get('detections', '')} |"
        )
    if len(rows) > MAX_CLASSES:
        lines += ["", f"… {len(rows) - MAX_CLASSES} more classes in report.json."]
    return "\n".join(lines)
