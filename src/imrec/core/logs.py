"""Quieting a library's logger for the length of one call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_logger(name: str = "", level: int = logging.ERROR) -> Iterator[None]:
    """Raise logger ``name`` (the root logger for ``""``) to ``level`` inside the block and
    put its own level back after, whatever happens inside.

    Example:
        >>> with quiet_logger("some.library"):
        ...     logging.getLogger("some.library").warning("not shown")
        >>> logging.getLogger("some.library").level
        0
    """
    log = logging.getLogger(name or None)
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)
