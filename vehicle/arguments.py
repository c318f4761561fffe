"""Command-line number types shared by the `patrol` sub-commands: a bad value is an argparse usage error
(one line naming the option, exit 2) instead of a traceback deep in OpenCV or a report built on nonsense."""

from __future__ import annotations

import math
from collections.abc import Callable


def number(low: float, high: float, *, low_open: bool = False, unit: str = "") -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            raise ValueError(text)
        return value

    bracket = "(" if low_open else "["
    parse.__name__ = f"number in {bracket}{low:g}, {high:g}]{' ' + unit if unit else ''}"
    return parse


def seconds(minimum: float) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of seconds, at least ``minimum``."""
    return number(minimum, 1e9, unit="s")
