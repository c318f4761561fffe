"""Keep ultralytics off the network: the training and export scripts call `forbid_downloads` before using it.

ultralytics reaches for the network in places its offline switch does not cover: a dataset check looks for
Arial.ttf on GitHub (a HEAD request even with ``YOLO_OFFLINE=1``), the AMP check fetches yolo11n.pt, missing
packages are pip-installed. Our runs never plot, never use AMP on the CPU and ship their own requirements, so
those paths are switched off here; tests/test_train.py runs training with every outside connection refused.
"""

from __future__ import annotations

import os


def forbid_downloads() -> None:
    """Set ultralytics' offline switches and replace its font fetch with a no-op (call before training)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    import ultralytics.data.utils as data_utils

    # the font only labels plots, and our runs pass plots=False
    data_utils.check_font = lambda *args, **kwargs: None
