"""Checks of the numbers a user gives (flags, keyword arguments, ``config.json``): each refused
value is named by its flag, with the values it may take, before any work starts.

Example:
    >>> check_number(0, "--top-k", AT_LEAST_1, whole=True)
    Traceback (most recent call last):
    ...
    ValueError: --top-k must be 1 or more, got 0
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """The values a number may take: from ``lo`` to ``hi`` (None: no bound), each bound
    excluded when ``lo_open`` / ``hi_open``.

    Example:
        >>> Range(0, 1, hi_open=True).describe(), Range(0, 1, hi_open=True).admits(1.0)
        ('in [0, 1)', False)
        >>> Range(1).describe(), Range(0, lo_open=True).describe()
        ('1 or more', 'above 0')
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def admits(self, value: float) -> bool:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        lo, hi = _shown(self.lo), _shown(self.hi)
        if self.hi is None:
            return f"above {lo}" if self.lo_open else f"{lo} or more"
        if self.lo is None:
            return f"below {hi}" if self.hi_open else f"{hi} or less"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"in {left}{lo}, {hi}{right}"


def _shown(bound: float | None) -> str:
    """A bound as a person writes it: 40000000, not 4e+07; 0.5 as 0.5."""
    if bound is None:
        return ""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


AT_LEAST_1 = Range(1)  # counts of at least one (epochs, batch sizes, labels listed)
AT_LEAST_0 = Range(0)  # counts and amounts that may be none
ABOVE_0 = Range(0, lo_open=True)
SHARE = Range(0, 1, hi_open=True)  # [0, 1): a share that cannot be all
PART = Range(0, 1, lo_open=True, hi_open=True)  # (0, 1): a part that is neither none nor all
UNIT = Range(0, 1)  # [0, 1]: a score or an overlap


def check_number(
    value,
    flag: str,
    within: Range | None = None,
    whole: bool = False,
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error`` naming ``flag`` unless ``value`` is a finite number (a whole one when
    ``whole``; never a bool) inside ``within``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{flag} must be a number, got {value!r}")
    if whole and not isinstance(value, numbers.Integral):
        raise error(f"{flag} must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise error(f"{flag} must be a finite number, got {value!r}")
    if within is not None and not within.admits(value):
        raise error(f"{flag} must be {within.describe()}, got {value!r}")


def check_top_k(top_k) -> None:
    """``top_k`` (``--top-k``): how many labels a prediction lists, 1 or more."""
    check_number(top_k, "top_k (--top-k)", AT_LEAST_1, whole=True)


def check_box_options(score_thresh, nms_iou, max_det) -> None:
    """A detector's kept boxes: scores from ``score_thresh`` (``--conf``) in [0, 1], overlaps
    suppressed above ``nms_iou`` (``--iou``) in [0, 1], at most ``max_det`` (``--max-det``),
    1 or more."""
    check_number(score_thresh, "score_thresh (--conf)", UNIT)
    check_number(nms_iou, "nms_iou (--iou)", UNIT)
    check_number(max_det, "max_det (--max-det)", AT_LEAST_1, whole=True)
