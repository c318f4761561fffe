"""What the `patrol` sub-commands share at the command line: number types (a bad value is an argparse usage
error naming the option, exit 2, instead of a traceback deep in OpenCV or a report built on nonsense) and the
one-line shape of every error message."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path


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


def one_line(error: object) -> str:
    """An error message as one line: a control character in a user's value (a key, a path) is shown escaped,
    never as a line break that would split the message or forge a line in the journal."""
    text = str(error)
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once resolved, or another name (a link) for it."""
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
