"""The data doctor's report for a person: ``doctor.md`` and its PNG galleries."""

from __future__ import annotations

from pathlib import Path

import torch

from imrec.classify.viz import save_image_grid
from imrec.data import ClassificationData


def _image(data: ClassificationData, item: dict) -> torch.Tensor:
    return getattr(data, item["split"]).images[item["position"]]


def _grid(path: Path, data: ClassificationData, items: list[dict], titles: list[str], title: str):
    images = torch.stack([_image(data, i) for i in items]) if items else torch.zeros(0, 1, 8, 8)
    return save_image_grid(
        images.to(torch.uint8), path, nrow=min(8, max(1, len(items))), titles=titles, title=title
    )


def galleries(folder: Path, data: ClassificationData, report: dict, n: int) -> dict[str, str]:
    """Write the galleries into ``folder``; return ``{what: file name}``."""
    files = {}
    for split, found in report["labels"].items():
        worst = [i for i in found["ranking"] if i["flagged"]][:n] or found["ranking"][: min(n, 8)]
        name = f"labels-{split}.png"
        _grid(
            folder / name,
            data,
            worst,
            [f"{i['label']}→{i['suggested']} {i['score']:.2f}" for i in worst],
            f"{split}: worst label quality (given→suggested, quality)",
        )
        files[f"labels_{split}"] = name
    pairs, titles = [], []
    for g in report["duplicates"]["groups"][: max(1, n // 2)]:
        for item in g["items"][:2]:
            pairs.append(item)
            mark = "≠" if g["conflicting_labels"] else ""
            titles.append(f"{g['kind']}{mark} {item['split']} {item['label']}")
    _grid(folder / "duplicates.png", data, pairs, titles, "duplicate groups (first two of each)")
    files["duplicates"] = "duplicates.png"
    odd = [i for s in report["examined"] for i in report["outliers"].get(s, [])[: max(1, n // 3)]]
    _grid(
        folder / "outliers.png",
        data,
        odd,
        [f"{i['split']} {i['label']} {i['score']:.3f}" for i in odd],
        "most out-of-distribution images (lowest score)",
    )
    files["outliers"] = "outliers.png"
    integ = report["integrity"]
    shown = [(i, "blank") for i in integ["blank"][:8]]
    for prop, items in integ.get("properties", {}).items():
        shown += [(i, prop) for i in items[:4]]
    shown += [(i, "tiny") for i in integ.get("tiny", [])[:4]]
    _grid(
        folder / "integrity.png",
        data,
        [i for i, _ in shown],
        [f"{why} {i['split']}" for i, why in shown],
        "odd images (blank, dark, light, blurry, low information, odd size)",
    )
    files["integrity"] = "integrity.png"
    return files


def _name(item: dict) -> str:
    if "file" in item:
        return f"`{item['file']}`"
    return f"{item['split']} ({item['part']} #{item['index']})"


def render(report: dict, top: int) -> str:
    """``doctor.md``: a summary first, then each check with its worst ``top`` entries."""
    sizes = report["sizes"]
    lines = [
        f"# imrec doctor: {report['dataset']}",
        "",
        f"{sizes['train']:,} training, {sizes['val']:,} validation and {sizes['test']:,} test "
        f"images, {len(report['classes'])} classes; examined: {', '.join(report['examined'])}. "
        f"{report['split']}. Checksum `{report['checksum'][:16]}…`; {report['seconds']} s.",
        "",
        "## Summary",
        "",
        "| check | found |",
        "|---|---:|",
    ]
    integ, dup = report["integrity"], report["duplicates"]
    lines += [
        f"| unreadable files | {len(integ['unreadable'])} |",
        f"| blank images | {len(integ['blank'])} |",
    ]
    for prop, items in integ.get("properties", {}).items():
        lines.append(f"| {prop.replace('_', ' ')} | {len(items)} |")
    lines.append(f"| tiny files (< 16 px) | {len(integ.get('tiny', []))} |")
    c = dup["counts"]
    lines += [
        f"| exact duplicate groups | {c['exact_groups']} |",
        f"| near duplicate groups (correlation ≥ {dup['near_threshold']}) | {c['near_groups']} |",
        f"| duplicate groups across splits (leakage) | {c['across_splits']} |",
        f"| duplicate groups with conflicting labels | {c['conflicting']} |",
    ]
    for split, found in report["labels"].items():
        lines.append(f"| label issues in {split} | {found['flagged']} ({found['share']:.2%}) |")
    if report.get("groups"):
        lines.append(
            f"| writers in two splits | {len(report['groups']['in_two_or_more_splits'])} |"
        )
    lines.append(
        f"| class imbalance (largest / smallest training class) | {report['imbalance']['ratio']} |"
    )
    lines += [
        "",
        "Galleries: "
        + ", ".join(f"[{k}]({v})" for k, v in report["files"].items() if v.endswith(".png")),
        "",
    ]
    lines += _integrity(integ, top)
    lines += _duplicates(dup, top)
    lines += _labels(report, top)
    lines += _outliers(report, top)
    lines += _imbalance(report)
    return "\n".join(lines).rstrip() + "\n"


def _integrity(integ: dict, top: int) -> list[str]:
    lines = ["## Integrity", ""]
    if integ["unreadable"]:
        kinds = ", ".join(f"{k} {n}" for k, n in integ["unreadable_kinds"].items())
        lines += [f"Unreadable files ({kinds}), left out of every split:", ""]
        lines += [f"- `{i['path']}`: {i['reason']}" for i in integ["unreadable"][:top]]
        lines.append("")
    if integ["traits"]:
        lines += ["Shared by most images (traits of the data, not issues): " + "; ".join(
            f"{k.replace('_', ' ')} {v.split(':')[0]}" for k, v in integ["traits"].items()
        ) + ".", ""]  # fmt: skip
    mix = integ["grey_colour"]
    lines += [
        f"Grey {mix['grey']:,}, colour {mix['colour']:,}"
        + (": **mixed** (imrec converts them all to one channel count)" if mix["mixed"] else "."),
        "",
    ]
    for what, items in [
        ("blank", integ["blank"]),
        *integ["properties"].items(),
        ("tiny", integ.get("tiny", [])),
    ]:
        if items:
            lines += [f"**{what.replace('_', ' ')}** ({len(items)}): " + ", ".join(
                _name(i) for i in items[:top]
            ) + (" …" if len(items) > top else ""), ""]  # fmt: skip
    return lines


def _duplicates(dup: dict, top: int) -> list[str]:
    lines = ["## Duplicates", ""]
    if not dup["groups"]:
        return lines + ["None found.", ""]
    lines += [
        "| # | kind | labels | splits | images |",
        "|---:|---|---|---|---|",
    ]
    for n, g in enumerate(dup["groups"][:top], 1):
        labels = " / ".join(sorted({i["label"] for i in g["items"]}))
        mark = " **conflict**" if g["conflicting_labels"] else ""
        lines.append(
            f"| {n} | {g['kind']} | {labels}{mark} | {', '.join(g['splits'])} | "
            + ", ".join(_name(i) for i in g["items"][:6])
            + (" …" if len(g["items"]) > 6 else "")
            + " |"
        )
    return lines + [""]


def _labels(report: dict, top: int) -> list[str]:
    how = report["predictions"]
    folds = ""
    if "fold_model" in how:
        folds = (
            f" ({how['fold_model']}, {how['fold_epochs']} epochs; accuracy on the held-out "
            f"folds {', '.join(f'{a:.2%}' for a in how['fold_accuracy'])})"
        )
    lines = [
        "## Label issues",
        "",
        f"Out-of-sample probabilities: training split {how['train']}{folds}; validation and "
        f"test by {how['val_test']}. Flagged by cleanlab (find_label_issues, prune by noise "
        "rate), ranked by label quality (self-confidence: the probability of the given label).",
        "",
    ]
    for split, found in report["labels"].items():
        lines += [
            f"### {split}: {found['flagged']} flagged (out-of-sample accuracy "
            f"{found['out_of_sample_accuracy']:.2%})",
            "",
            "| rank | image | given | suggested | quality | flagged |",
            "|---:|---|---|---|---:|---|",
        ]
        for n, i in enumerate(found["ranking"][:top], 1):
            lines.append(
                f"| {n} | {_name(i)} | {i['label']} | {i['suggested']} | {i['score']:.4f} | "
                f"{'yes' if i['flagged'] else ''} |"
            )
        lines.append("")
    return lines


def _outliers(report: dict, top: int) -> list[str]:
    odd = report["outliers"]
    lines = [
        "## Outliers",
        "",
        f"cleanlab OutOfDistribution ({odd['method']}); lowest scores first.",
        "",
    ]
    for split in report["examined"]:
        items = odd.get(split, [])[: min(top, 20)]
        lines.append(
            f"- **{split}**: "
            + ", ".join(f"{_name(i)} ({i['label']}, {i['score']:.3f})" for i in items)
        )
    return lines + [""]


def _imbalance(report: dict) -> list[str]:
    imb = report["imbalance"]
    lines = ["## Classes", "", f"Largest over smallest training class: **{imb['ratio']}**.", ""]
    lines += ["| class | train | val | test |", "|---|---:|---:|---:|"]
    for c in report["classes"]:
        lines.append(
            f"| {c} | {imb['counts']['train'][c]} | {imb['counts']['val'][c]} | {imb['counts']['test'][c]} |"
        )
    groups = report.get("groups")
    if groups:
        leaks = groups["in_two_or_more_splits"]
        lines += ["", f"Writers: {groups['groups']}; in two or more splits: "
                  + (", ".join(f"{g} ({', '.join(s)})" for g, s in list(leaks.items())[:20]) or "none") + "."]  # fmt: skip
    return lines + [""]
