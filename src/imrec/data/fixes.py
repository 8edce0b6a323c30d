"""Lists of images to leave out (``--exclude``) or to label again (``--relabel``), as the data
doctor writes them (:mod:`imrec.classify.doctor`) and training applies them.

A list names its dataset and the dataset's checksum, and each image by where it sits in its
source (``part`` and ``index`` for the built-ins, ``file`` for folders: see
:attr:`imrec.data.ImageSet.origin`), so it holds whatever the validation fraction and the
seed, and is refused for data that changed. Nothing is ever deleted or moved: applying a
list leaves the images out of, or relabels them in, the loaded splits only.

The file (JSON)::

    {"imrec": "fixes", "version": 1, "kind": "exclude" | "relabel",
     "dataset": "mnist", "checksum": "<sha256 of the data>", "made_by": "...",
     "items": [{"part": "test", "index": 8, "split": "test", "label": "5",
                "suggested": "3", "why": "label issue: ...", "accept": true}, ...]}

Items of a relabel list take their new label from ``suggested``; only items with
``"accept": true`` are applied (review the list and set the others to false).

Example:
    >>> from imrec.data import load_dataset
    >>> data = load_dataset("digits")
    >>> first = int(data.test.origin[0])
    >>> items = [{"part": "all", "index": first, "label": data.classes[data.test.labels[0]],
    ...           "why": "example"}]
    >>> path = write_fixes(tmp / "exclude.json", "exclude", data, items)
    >>> fixed = apply_fixes(data, exclude=path)
    >>> len(data.test) - len(fixed.test), fixed.fixes["excluded"]
    (1, {'test': 1})
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from imrec.data.sources import DatasetError
from imrec.data.types import ClassificationData, ImageSet

FIXES_VERSION = 1
KINDS = ("exclude", "relabel")


def item_key(item: dict) -> tuple:
    """How an item is matched: by file for folders, else by source part and index."""
    if item.get("file"):
        return ("file", str(item["file"]))
    if "part" not in item or "index" not in item:
        raise DatasetError(f"a fixes item needs 'file', or 'part' and 'index': {item}")
    return (str(item["part"]), int(item["index"]))


def split_keys(data: ClassificationData, split: ImageSet) -> list[tuple]:
    """The key of every sample of ``split`` (see :func:`item_key`)."""
    if split.origin is None:
        raise DatasetError(
            f"{data.name}: its images have no fixed place in a source (drawn or merged data), "
            "so they cannot be named in a fixes list"
        )
    if data.files is not None:
        return [("file", data.files[i]) for i in split.origin.tolist()]
    return [(split.part, i) for i in split.origin.tolist()]


def write_fixes(path: str | Path, kind: str, data: ClassificationData, items: list[dict]) -> Path:
    """Write a fixes list for ``data`` atomically; return its path."""
    from imrec.core.version import __version__

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    doc = {
        "imrec": "fixes",
        "version": FIXES_VERSION,
        "kind": kind,
        "dataset": data.name,
        "checksum": data.checksum,
        "made_by": f"imrec {__version__} doctor",
        "items": [{"accept": True, **item} for item in items],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_fixes(path: str | Path, kind: str, data: ClassificationData) -> list[dict]:
    """The accepted items of the fixes list at ``path``, checked against ``data``.

    Raises:
        DatasetError: no such file, not a fixes list, the wrong kind, or written for other
            data (another dataset, or the same one whose files changed since).
    """
    path = Path(path).expanduser()
    flag = f"--{kind}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{flag} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{flag} {path}: not a readable JSON fixes list ({e})") from None
    if not isinstance(doc, dict) or doc.get("imrec") != "fixes":
        raise DatasetError(f"{flag} {path}: not a fixes list (write one with `imrec doctor`)")
    if doc.get("kind") != kind:
        raise DatasetError(
            f"{flag} {path}: this is a {doc.get('kind')!r} list; pass it as --{doc.get('kind')}"
        )
    if doc.get("dataset") != data.name:
        raise DatasetError(
            f"{flag} {path}: written for dataset {doc.get('dataset')!r}, not {data.name!r}"
        )
    if doc.get("checksum") != data.checksum:
        raise DatasetError(
            f"{flag} {path}: written for {data.name} with checksum "
            f"{str(doc.get('checksum'))[:12]}…, but the data now has {data.checksum[:12]}…: "
            "it changed since the list was made; run `imrec doctor` again"
        )
    items = doc.get("items")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DatasetError(f"{flag} {path}: 'items' must be a list of objects")
    return [i for i in items if i.get("accept", True) is True]


def apply_fixes(
    data: ClassificationData,
    *,
    exclude: str | Path | None = None,
    relabel: str | Path | None = None,
) -> ClassificationData:
    """``data`` without the excluded images and with the relabelled ones' new labels, in every
    split where they are; ``fixes`` on the result says how many and why, and the split note
    says it too.

    Raises:
        DatasetError: a list that does not fit the data (see :func:`read_fixes`), an item no
            split holds, or a relabel to a class the dataset does not have.
    """
    if exclude is None and relabel is None:
        return data
    splits = {"train": data.train, "val": data.val, "test": data.test}
    keys = {name: split_keys(data, s) for name, s in splits.items()}
    where = {k: (name, i) for name, ks in keys.items() for i, k in enumerate(ks)}
    summary: dict = {}
    new_labels = {name: s.labels.clone() for name, s in splits.items()}
    if relabel is not None:
        changed: Counter = Counter()
        for item in read_fixes(relabel, "relabel", data):
            name, i = _find(where, item, relabel, data)
            target = str(item.get("suggested", ""))
            if target not in data.classes:
                raise DatasetError(
                    f"--relabel {relabel}: {_name(item)} is to become {target!r}, which is not "
                    f"a class of {data.name}"
                )
            new_labels[name][i] = data.classes.index(target)
            changed[name] += 1
        summary["relabel_file"], summary["relabelled"] = str(relabel), dict(changed)
    drop: dict[str, list[int]] = {name: [] for name in splits}
    reasons: Counter = Counter()
    if exclude is not None:
        for item in read_fixes(exclude, "exclude", data):
            name, i = _find(where, item, exclude, data)
            drop[name].append(i)
            reasons[str(item.get("why", "")).split(":")[0] or "unstated"] += 1
        summary["exclude_file"] = str(exclude)
        summary["excluded"] = {n: len(set(d)) for n, d in drop.items() if d}
        summary["reasons"] = dict(reasons)
    fixed = {}
    for name, s in splits.items():
        s = ImageSet(s.images, new_labels[name], s.groups, s.origin, s.part)
        if drop[name]:
            keep = torch.ones(len(s), dtype=torch.bool)
            keep[sorted(set(drop[name]))] = False
            s = s.subset(keep)
        fixed[name] = s
    return replace(
        data,
        **fixed,
        split_note=data.split_note.rstrip(". ") + ". " + describe_fixes(summary),
        fixes=summary,
    )


def describe_fixes(summary: dict) -> str:
    """One sentence for the report: what a run's fixes lists changed."""
    parts = []
    if "excluded" in summary:
        n = sum(summary["excluded"].values())
        per = ", ".join(f"{k} {v}" for k, v in summary["excluded"].items()) or "none"
        why = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items())
        parts.append(
            f"{n} images left out as {summary['exclude_file']} lists ({per}; why: {why or '-'})"
        )
    if "relabelled" in summary:
        n = sum(summary["relabelled"].values())
        per = ", ".join(f"{k} {v}" for k, v in summary["relabelled"].items()) or "none"
        parts.append(f"{n} images relabelled as {summary['relabel_file']} says ({per})")
    return "Data fixes: " + "; ".join(parts) + "."


def _name(item: dict) -> str:
    return item.get("file") or f"{item.get('part')}[{item.get('index')}]"


def _find(where: dict, item: dict, path, data: ClassificationData) -> tuple[str, int]:
    try:
        return where[item_key(item)]
    except KeyError:
        raise DatasetError(
            f"{path}: {_name(item)} is in no split of {data.name} as loaded here"
        ) from None
