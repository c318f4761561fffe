"""What `patrol eval` shows and writes: the progress bar, GeoJSON of events, truth and track, and the HTML report.

The report is one self-contained file (plots as base64 PNG, no scripts, no tiles).

matplotlib (the ``eval`` extra) draws the plots with the Agg backend; without it the report still has every
table and says that the plots need matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vehicle.geometry import wgs84_to_enu

if TYPE_CHECKING:  # evaluate imports this module: names for annotations only
    from vehicle.evaluate import EventEvaluation, Track
    from vehicle.metrics import PointSet

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.good{color:#080}.bad{color:#b00;font-weight:bold}.note{color:#666;font-size:12px}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}
"""


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _fmt(v: object, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], classes: Sequence[Sequence[str]] | None = None
           ) -> str:
    out = ["<table><tr>", *(f"<th>{html.escape(h)}</th>" for h in header), "</tr>"]
    for r, row in enumerate(rows):
        out.append("<tr>")
        for c, v in enumerate(row):
            cls = classes[r][c] if classes else ""
            out.append(f'<td class="{cls}">{_fmt(v)}</td>' if cls else f"<td>{_fmt(v)}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n")


# -- progress --------------------------------------------------------------------------------------------------


class Progress:
    """A one-line text progress bar on stderr (``done/total``, percent, elapsed); silent when disabled.

    On a terminal it redraws one line in place; into a file or pipe it writes a whole line every 10 s instead, so
    logs stay readable.
    """

    def __init__(self, label: str, total: int | None, enabled: bool = True, width: int = 30):
        self.label, self.total, self.enabled, self.width = label, total, enabled, width
        self.started = time.monotonic()
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def update(self, done: int, force: bool = False) -> None:
        """Redraw at most 5 times a second (on a terminal) or every 10 s (elsewhere)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < (0.2 if self._tty else 10.0)):
            return
        self._last = now
        el = now - self.started
        if self.total:
            frac = min(max(done / self.total, 0.0), 1.0)
            bar = "#" * int(frac * self.width)
            text = f"{self.label} [{bar:<{self.width}}] {frac * 100:5.1f}% {done}/{self.total} {el:.0f}s"
        else:
            text = f"{self.label} {done} {el:.0f}s"
        if self._tty:
            print("\r" + text, end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self, done: int | None = None) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self.update(self.total if done is None and self.total else (done or 0), force=True)
            if self._tty:
                print(file=sys.stderr, flush=True)


def events_geojson(ev: EventEvaluation, truth: PointSet) -> dict:
    """The events as a FeatureCollection, each with how it matched (``eval_match``, ``eval_truth_id``,
    ``eval_error_m``)."""
    feats = []
    for i, doc in enumerate(ev.event_docs):
        j = int(ev.match.object_of_event[i])
        kind = "false" if j < 0 else "duplicate" if ev.match.duplicate[i] else "matched"
        props = dict(doc["properties"])
        props.update(eval_match=kind, eval_truth_id=truth.ids[j] if j >= 0 else None,
                     eval_error_m=None if kind != "matched" else round(float(ev.match.error_m[j]), 3))
        feats.append({"type": "Feature", "id": doc["id"], "geometry": doc["geometry"], "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def truth_geojson(ev: EventEvaluation, truth_features: list[dict]) -> dict:
    """The real objects, each marked found or missed (``eval_found``, ``eval_error_m``)."""
    feats = []
    for j, f in enumerate(truth_features):
        props = dict(f.get("properties") or {})
        found = bool(ev.match.event_of_object[j] >= 0)
        props.update(eval_found=found, eval_error_m=round(float(ev.match.error_m[j]), 3) if found else None)
        feats.append({**f, "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def track_geojson(track: Track) -> dict:
    """The driven track as one LineString Feature."""
    coords = [[round(float(x), 8), round(float(y), 8)] for x, y in zip(track.lon_deg, track.lat_deg, strict=True)]
    return {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"km": round(
        track.length_km, 3)}, "geometry": {"type": "LineString", "coordinates": coords}}]}


# -- events ----------------------------------------------------------------------------------------------------

BAR = {"recall": (">=", 0.95), "duplicate_rate": ("<=", 0.02), "error_near_median_m": ("<=", 2.5)}

_EVENT_COLUMNS = ("category", "objects", "events", "matched", "duplicates", "false_events", "precision", "recall",
                  "duplicate_rate", "error_median_m", "error_p90_m", "error_near_median_m")


def _bar_class(key: str, value: object) -> str:
    if key not in BAR or value is None:
        return ""
    op, limit = BAR[key]
    ok = value >= limit if op == ">=" else value <= limit
    return "good" if ok else "bad"


def _map_plot(plt, evals, truth, track) -> str:
    lat0, lon0 = float(track.lat_deg[0]), float(track.lon_deg[0])
    te, tn = wgs84_to_enu(lat0, lon0, track.lat_deg, track.lon_deg)
    oe, on = wgs84_to_enu(lat0, lon0, truth.lat_deg, truth.lon_deg)
    figs = []
    for ev in evals:
        fig, ax = plt.subplots(figsize=(9, 7))
        ax.plot(te, tn, "-", color="#999", lw=0.8, label="track (logged)")
        found = ev.match.event_of_object >= 0
        ax.plot(np.atleast_1d(oe)[found], np.atleast_1d(on)[found], "o", ms=4, mfc="none", color="#2a2",
                label="object found")
        ax.plot(np.atleast_1d(oe)[~found], np.atleast_1d(on)[~found], "o", ms=6, color="#d22", label="object missed")
        if len(ev.events):
            ee, en = wgs84_to_enu(lat0, lon0, ev.events.lat_deg, ev.events.lon_deg)
            ee, en = np.atleast_1d(ee), np.atleast_1d(en)
            dup, false = ev.match.duplicate, ev.match.object_of_event < 0
            ax.plot(ee[dup], en[dup], "x", color="#e80", label="duplicate event")
            ax.plot(ee[false], en[false], "^", color="#a0a", label="false event")
        ax.set_aspect("equal")
        ax.set_xlabel("east, m")
        ax.set_ylabel("north, m")
        ax.set_title(f"{ev.label}: objects and events (local metres, no map tiles)")
        ax.legend(loc="best", fontsize=8)
        figs.append(_png(fig))
    return "".join(figs)


def _error_plot(plt, evals) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for ev in evals:
        err = np.sort(ev.match.error_m[np.isfinite(ev.match.error_m)])
        if err.size:
            ax.plot(err, np.arange(1, err.size + 1) / err.size, label=f"{ev.label} (n={err.size})")
    ax.set_xlabel("location error, m")
    ax.set_ylabel("fraction of matched objects")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no matched object in any run: nothing to label
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no event matched a real object", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Location error (cumulative)")
    return _png(fig)


def write_events_report(path: Path, doc: dict, evals: list[EventEvaluation], truth: PointSet,
                        track: Track) -> None:
    """Write the events (or A/B) report: headline numbers against the bar, per-category rows, throughput,
    A/B deltas, a map of objects and events, and the location-error distribution."""
    runs = doc["runs"]
    ab = len(runs) == 2
    body = [f"<p>Drive <code>{html.escape(doc['drive'])}</code>, truth <code>{html.escape(doc['truth'])}</code>: "
            f"{len(truth)} objects. Match radius {doc['match_radius_m']} m (same category, nearest first); "
            f"'near' = objects within {doc['near_m']} m of the driven track.</p>"]
    body.append("<h2>Headline</h2>")
    header = ["metric", *(r["label"] for r in runs)] + (["B − A"] if ab else []) + ["bar"]
    rows, classes = [], []
    keys = ("objects", "events", "matched", "duplicates", "false_events", "precision", "recall", "duplicate_rate",
            "error_median_m", "error_p90_m", "error_near_median_m", "near_objects")
    for k in keys:
        vals = [r["overall"][k] for r in runs]
        bar = BAR.get(k)
        row = [k, *vals] + ([doc["deltas"].get(k)] if ab else []) + [f"{bar[0]} {bar[1]}" if bar else ""]
        rows.append(row)
        classes.append(["", *(_bar_class(k, v) for v in vals)] + ([""] if ab else []) + [""])
    for k in ("km_driven", "events_per_km"):
        rows.append([k, *(r[k] for r in runs)] + ([doc["deltas"].get(k)] if ab else []) + [""])
        classes.append([""] * len(rows[-1]))
    for k in ("fps", "realtime_factor", "frames", "wall_s"):
        vals = [None if r["throughput"] is None else r["throughput"][k] for r in runs]
        rows.append([k, *vals] + ([doc["deltas"].get(k)] if ab else []) + [""])
        classes.append([""] * len(rows[-1]))
    body.append(_table(header, rows, classes))
    body.append("<p class='note'>precision = matched events / events; recall = found objects / objects; "
                "duplicate rate = extra events for an already matched object / events about real objects; "
                "fps and real-time factor are the replay's (drive seconds per wall second).</p>")
    for r in runs:
        body.append(f"<h2>Per category: {html.escape(r['label'])}</h2>")
        rows = [[c[k] for k in _EVENT_COLUMNS] for c in r["per_category"]]
        classes = [[_bar_class(k, c[k]) for k in _EVENT_COLUMNS] for c in r["per_category"]]
        body.append(_table(_EVENT_COLUMNS, rows, classes))
    plt = _plt()
    if plt is None:
        body.append("<p class='note'>Plots need matplotlib (pip install 'patrol-vehicle[eval]').</p>")
    else:
        body.append("<h2>Location error</h2>" + _error_plot(plt, evals))
        body.append("<h2>Map</h2>" + _map_plot(plt, evals, truth, track))
    title = "Event evaluation" if not ab else f"A/B: {runs[0]['label']} vs {runs[1]['label']}"
    path.write_text(_page(title, body), encoding="utf-8")


# -- detections ------------------------------------------------------------------------------------------------


def write_detections_report(path: Path, doc: dict, names: Sequence[str], results: list, cm: np.ndarray) -> None:
    """Write the detection report: per-class P, R, AP50, AP50-95, PR curves and the confusion matrix."""
    body = [f"<p>{doc['images']} images, {doc['boxes']} labelled boxes; predictions from "
            f"<code>{html.escape(doc['predictions'])}</code>. COCO definitions: IoU 0.50:0.05:0.95, 101-point "
            f"interpolation, at most {doc['max_dets']} detections per image and class. P and R at the score of "
            f"best F1 (IoU 0.50).</p>"]
    header = ["class", "labels", "P", "R", "AP50", "AP50-95", "score at best F1"]
    rows = [[c["name"], c["labels"], c["precision"], c["recall"], c["ap50"], c["ap50_95"], c["best_f1_score"]]
            for c in doc["classes"]]
    rows.append(["all (mean)", doc["boxes"], doc["mean"]["precision"], doc["mean"]["recall"], doc["mean"]["ap50"],
                 doc["mean"]["ap50_95"], None])
    body.append("<h2>Per class</h2>" + _table(header, rows))
    plt = _plt()
    if plt is None:
        body.append("<p class='note'>Plots need matplotlib (pip install 'patrol-vehicle[eval]').</p>")
    else:
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in results:
            if r.gt:
                ax.plot(np.linspace(0, 1, 101), r.precision_curve, label=f"{names[r.class_id]} AP50={r.ap50:.3f}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision (interpolated)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("PR curves, IoU 0.50")
        body.append("<h2>PR curves</h2>" + _png(fig))
        labels = [*names, "background"]
        n = len(labels)
        fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
        ax.imshow(cm, cmap="Blues")
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.set_title(f"Confusion matrix (score >= {doc['confusion_score']}, IoU >= {doc['confusion_iou']})")
        body.append("<h2>Confusion matrix</h2>" + _png(fig))
    cm_rows = [[labels_i, *cm[i].tolist()] for i, labels_i in enumerate([*names, "background"])]
    body.append(_table(["predicted \\ true", *names, "background"], cm_rows))
    path.write_text(_page("Detection evaluation", body), encoding="utf-8")
