"""One registry of datasets for every task: each entry declares its task.

An entry matches a name in one of three ways (its ``kind``): exactly (``mnist``), as a family
with options after a colon (``digits-detect`` or ``digits-detect:train=500``), or as a prefix
followed by a path of the user's (``folder:PATH``, ``coco:PATH.json``, ``yolo:PATH``). The
task a dataset is for (``"classify"`` or ``"detect"``) is read from its entry, never guessed
from the name.

Example:
    >>> import imrec.data  # registers the built-in datasets
    >>> dataset_task("mnist"), dataset_task("digits-detect:train=50"), dataset_task("yolo:d")
    ('classify', 'detect', 'detect')
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from imrec.core.errors import DatasetError

KINDS = ("name", "family", "prefix")


@dataclass(frozen=True)
class Entry:
    """A dataset, or a pattern of datasets, and what it is for.

    ``load`` and ``fetch`` follow the calling convention of the task's loader
    (:func:`imrec.data.load_dataset` or :func:`imrec.data.detection.load_detection`);
    ``info`` is the task's description of the source (e.g. a
    :class:`~imrec.data.datasets.DatasetInfo`). ``shown`` is how listings write the name.
    """

    name: str
    task: str
    description: str
    load: Callable[..., Any] | None = None
    fetch: Callable[..., Any] | None = None
    info: Any = None
    kind: str = "name"
    shown: str = ""
    # ``load`` takes ``size=`` and prepares its images at that size from the original files
    # (the handwriting normal form, as ``imrec predict`` prepares a file), rather than having
    # its prepared images resized.
    sized: bool = False

    def matches(self, name: str) -> bool:
        if self.kind == "prefix":
            return name.startswith(self.name)
        if self.kind == "family":
            return name.split(":", 1)[0] == self.name
        return name == self.name


_ENTRIES: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    """Add ``entry``; a name taken by another entry is refused.

    Example:
        >>> register(Entry("mnist", "classify", "again"))
        Traceback (most recent call last):
        ...
        ValueError: dataset name 'mnist' is already taken
    """
    if entry.kind not in KINDS:
        raise ValueError(f"unknown dataset entry kind {entry.kind!r}; choose {KINDS}")
    taken = entry.name in _ENTRIES or (entry.kind == "name" and find(entry.name) is not None)
    if taken:
        raise ValueError(f"dataset name {entry.name!r} is already taken")
    _ENTRIES[entry.name] = entry
    return entry


def find(name: str) -> Entry | None:
    """The entry ``name`` belongs to (an exact name first, then families, then prefixes)."""
    if name in _ENTRIES and _ENTRIES[name].kind == "name":
        return _ENTRIES[name]
    for kind in ("family", "prefix"):
        for entry in _ENTRIES.values():
            if entry.kind == kind and entry.matches(name):
                return entry
    return None


def lookup(name: str, task: str | None = None) -> Entry:
    """The entry of ``name`` (for ``task``, when given), else a :class:`DatasetError` that
    says what is known.

    Example:
        >>> lookup("mnist").task
        'classify'
    """
    entry = find(name)
    if entry is not None and (task is None or entry.task == task):
        return entry
    if entry is not None:
        raise DatasetError(f"{name} is a {entry.task} dataset, not a {task} one")
    known = [e.name for e in entries(task) if e.kind != "prefix"]
    close = difflib.get_close_matches(name, known, n=3)
    maybe = f" Did you mean {', '.join(close)}?" if close else ""
    patterns = ", ".join(e.shown or e.name for e in entries(task) if e.kind == "prefix")
    raise DatasetError(
        f"unknown dataset {name!r}.{maybe} Known: {', '.join(sorted(known))}, or {patterns} "
        "(see `imrec data list`)."
    )


def entries(task: str | None = None) -> list[Entry]:
    """Every entry (of ``task``), in the order they were registered."""
    return [e for e in _ENTRIES.values() if task is None or e.task == task]


def dataset_task(name: str) -> str:
    """The task the dataset ``name`` is registered for.

    Example:
        >>> dataset_task("folder:~/my_digits")
        'classify'
    """
    return lookup(name).task


def parse_options(cls, name: str, example: str):
    """``cls(**options)`` from ``family:key=value,...`` (whole numbers, decimals or text, as the
    fields of the dataclass ``cls`` are typed); unknown keys and bad values raise
    :class:`DatasetError` that names ``example``.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Opts:
        ...     small: int = 0
        >>> parse_options(Opts, "chinese-mnist:small=2", "chinese-mnist:small=1")
        Opts(small=2)
    """
    _, _, opts = name.partition(":")
    # field types as written (``from __future__ import annotations``: strings) or as classes
    kinds = {f.name: getattr(f.type, "__name__", f.type) for f in fields(cls)}
    values: dict = {}
    for part in filter(None, opts.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in kinds:
            raise DatasetError(
                f"{name}: unknown option {part!r}; options: {', '.join(kinds)} (e.g. {example})"
            )
        kind = {"int": int, "float": float}.get(kinds[key], str)
        try:
            values[key] = kind(value)
        except ValueError as e:
            said = {int: "a whole number", float: "a number"}[kind]
            raise DatasetError(f"{name}: {key} must be {said}, got {value!r}") from e
    return cls(**values)
