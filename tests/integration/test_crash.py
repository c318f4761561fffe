"""Crash safety: ``kill -9`` a real ``patrol replay`` at random moments, restart it on the same state, and check
that every event the car accepted reaches a real Mosquitto, none twice for one object, and the state opens.

The replay uses the real GoPro walk (video decoded, evidence photos encoded and published) with a crafted
``--detections`` file: one object per category, each visible for a few frames, one after the other, so events
are produced all along the replayed segment and kills land before, between and inside their commits.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import pytest

from tests.brokers import Broker, Collector
from tests.drives import gopro_drive
from vehicle.categories import Taxonomy
from vehicle.config import REPO_ROOT
from vehicle.drive import open_drive
from vehicle.events import events_topic, make_event_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VEHICLE_ID = "car-crash"
KILLS = 20
SEED = 20261203
SEGMENT_FRAMES = 150  # the first 5 s of the walk: enough for 13 events, short enough for 20 restarts
WINDOW_FRAMES = 11  # a new object every 11 frames
VISIBLE_FRAMES = 5  # each seen in 5 frames (every category needs 2 or 3 to be confirmed)
FOOT_Y_PX = 440.0  # below the horizon of the GoPro calibration: the ground point is a few metres ahead


def crafted_detections(drive: Path, out: Path, frames: int = SEGMENT_FRAMES, window: int = WINDOW_FRAMES,
                       visible: int = VISIBLE_FRAMES) -> int:
    """Write a detections file over the first ``frames`` frames of ``drive``; returns how many objects it shows.

    Object k (category k of the taxonomy) is seen in frames ``[k*window, k*window + visible)``. Categories
    differ, so no two objects can merge, whatever the walker's position: the expected event count is exact.
    """
    d = open_drive(drive)
    seg = d.segments[0]
    cap = cv2.VideoCapture(str(seg.file))
    fps = cap.get(cv2.CAP_PROP_FPS)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    names = [c.name for c in Taxonomy.load(REPO_ROOT / "models" / "categories.yaml").categories]
    objects = min(len(names), (frames - visible) // window + 1)
    lines = [json.dumps({"header": {"format": "patrol-detections", "version": 1,
                                    "model": {"name": "crafted", "sha256": "c" * 64}}})]
    for i in range(frames):
        k, offset = divmod(i, window)
        dets = []
        if k < objects and offset < visible:
            cx = w * (0.3 + 0.4 * (k % 2))  # left and right of centre, alternating
            dets.append({"category": names[k], "score": 0.9, "xyxy": [cx - 40, FOOT_Y_PX - 50, cx + 40, FOOT_Y_PX]})
        t = seg.frame_times_utc[i] if seg.frame_times_utc else seg.start_utc + i / fps
        lines.append(json.dumps({"frame": i, "time_utc": t, "size_wh": [w, h], "detections": dets}))
    out.write_text("\n".join(lines) + "\n")
    return objects


def write_config(tmp: Path, port: int, name: str = "patrol.toml") -> Path:
    """A car config publishing to the test broker at a high rate (the crash test is not about pacing)."""
    cfg = tmp / name
    cfg.write_text(
        f'vehicle_id = "{VEHICLE_ID}"\ndata_dir = "{tmp / "data"}"\n'
        "[gps]\nstopped_speed_mps = 0.3\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nmax_messages_per_s = 500\nmax_inflight = 50\n'
    )
    return cfg


def replay_cmd(drive: Path, cfg: Path, state: Path, detections: Path, out: Path, *extra: str) -> list[str]:
    """The paced ``patrol replay`` command line, run with this interpreter."""
    return [sys.executable, "-m", "vehicle.cli", "replay", str(drive), "--config", str(cfg), "--state", str(state),
            "--detections", str(detections), "--out", str(out), "--realtime", *extra]


def child_env() -> dict[str, str]:
    """The environment for a ``patrol`` child process: the repo importable, nothing downloaded."""
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    return env


def open_state_readonly(db: Path) -> sqlite3.Connection:
    """The state database opened read-only (what a checker may do between runs without changing it)."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def first_commit_time(db: Path, proc: subprocess.Popen, timeout_s: float = 60.0) -> float | None:
    """Monotonic time at which ``proc`` first commits to ``db`` (None if it exits first).

    A read-only connection's ``PRAGMA data_version`` changes when another connection commits: the run's
    first processed frame, since restarting on an existing state writes nothing before that.
    """
    deadline = time.monotonic() + timeout_s
    while not db.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.005)
    conn = open_state_readonly(db)
    try:
        base = conn.execute("PRAGMA data_version").fetchone()[0]
        while proc.poll() is None and time.monotonic() < deadline:
            if conn.execute("PRAGMA data_version").fetchone()[0] != base:
                return time.monotonic()
            time.sleep(0.005)
        return None
    finally:
        conn.close()


def time_to_last_event(db: Path, proc: subprocess.Popen, events: int) -> float:
    """Monotonic time at which the run's dedup index first shows ``events`` published objects."""
    conn = open_state_readonly(db)
    try:
        while proc.poll() is None:
            try:
                n = conn.execute("SELECT COUNT(*) FROM dedup_objects WHERE publications > 0").fetchone()[0]
            except sqlite3.OperationalError:  # the dedup table is created just after the outbox's
                n = 0
            if n >= events:
                break
            time.sleep(0.005)
        return time.monotonic()
    finally:
        conn.close()


def inspect_state(db: Path, scratch: Path) -> tuple[str, set[str], set[str]]:
    """``(integrity, queued event ids, accepted event ids)`` of a state file after a kill.

    Accepted events are those the dedup index records as published (they were committed in the same
    transaction as their outbox rows); queued ones are still waiting in the outbox. The file and its WAL are
    copied first: after a kill the WAL needs recovering, which a read-only connection cannot do, and the checker
    must not change the state the next run opens. A kill before the schema was written leaves no tables: empty.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "state.sqlite"
    for suffix in ("", "-wal", "-shm"):
        (scratch / f"state.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copyfile(db, copy)
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, scratch / "state.sqlite-wal")
    conn = sqlite3.connect(copy, timeout=10)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        queued: set[str] = set()
        accepted: set[str] = set()
        if "outbox" in tables:
            queued = {r[0] for r in conn.execute("SELECT key FROM outbox WHERE kind = 'event'")}
        if "dedup_objects" in tables:
            for object_id, publications in conn.execute(
                    "SELECT object_id, publications FROM dedup_objects WHERE publications > 0"):
                accepted |= {make_event_id(VEHICLE_ID, object_id, n) for n in range(1, publications + 1)}
        if "outbox_counters" in tables:
            conn.execute("SELECT COUNT(*) FROM outbox_counters").fetchone()  # every table reads
        return integrity, queued, accepted
    finally:
        conn.close()


def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.brokers import running_broker

    drive = gopro_drive(tmp_path / "drives")
    detections = tmp_path / "detections.jsonl"
    objects = crafted_detections(drive, detections)
    assert objects == 13

    with running_broker(tmp_path / "broker") as broker:
        broker: Broker
        cfg = write_config(tmp_path, broker.port)
        collector = Collector(broker, topic=events_topic(VEHICLE_ID), client_id="crash-centre")
        state = tmp_path / "state"
        db = state / "state.sqlite"
        out = tmp_path / "events.jsonl"
        try:
            # The reference: one uninterrupted run over a fresh state. Every run is paced (--realtime), so how much
            # of the drive a run gets through before its kill depends on the kill moment, not on how loaded the
            # machine is; only start-up (imports, opening the state) varies with the load.
            ref_state = tmp_path / "ref-state"
            t_spawn = time.monotonic()
            proc = subprocess.Popen(replay_cmd(drive, cfg, ref_state, detections, tmp_path / "ref.jsonl"),
                                    env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            t_first = first_commit_time(ref_state / "state.sqlite", proc)
            assert t_first is not None, proc.communicate(timeout=120)[1]
            boot_s = t_first - t_spawn
            accepting_s = time_to_last_event(ref_state / "state.sqlite", proc, objects) - t_first
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            ref_events = [json.loads(line) for line in (tmp_path / "ref.jsonl").read_text().splitlines()]
            assert len(ref_events) == objects
            assert len({e["properties"]["category"] for e in ref_events}) == objects  # one event per object
            assert collector.wait_for(lambda c: len(c.messages) >= objects, 20)
            collector.messages.clear()

            rng = random.Random(SEED)
            # Seeded kill moments: a few during start-up (before any commit), the rest while a run works. A
            # restart resumes after the newest frame the killed run committed, so each work kill comes a short
            # random time after the run's first commit: every run gets a little further (on average 4/5 of the
            # drive is covered by all work kills together), and the drive needs many runs. Once nothing is left
            # to process, further kills land during start-up.
            startup_kills = 4
            work_kills = KILLS - startup_kills

            def startup_delay() -> float:
                return rng.uniform(0.05, 0.9) * boot_s

            plan = [("startup", startup_delay()) for _ in range(startup_kills)]
            plan += [("work", rng.uniform(0.0, 1.6 * accepting_s / work_kills)) for _ in range(work_kills)]
            queued_seen: set[str] = set()
            accepted_seen: set[str] = set()
            progress: list[tuple[str, float, int]] = []  # (phase, kill delay, events accepted so far)
            while sum(p != "completed" for p, _, _ in progress) < KILLS and len(progress) < 3 * KILLS:
                phase, delay = plan.pop(0) if plan else ("startup", startup_delay())
                proc = subprocess.Popen(replay_cmd(drive, cfg, state, detections, out), env=child_env(),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                t0 = None
                if phase == "startup":
                    time.sleep(delay)
                else:
                    t0 = first_commit_time(db, proc)
                    if t0 is not None:
                        time.sleep(max(0.0, t0 + delay - time.monotonic()))
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                else:  # it ended first (nothing left to do, or a quick start): no kill; try again, earlier
                    plan.insert(0, ("startup", rng.uniform(0.02, 0.5) * min(delay, boot_s)))
                    phase = "completed"
                proc.wait(10)
                if db.exists():
                    integrity, queued, accepted = inspect_state(db, tmp_path / "inspect")
                    assert integrity == "ok", f"state after kill at {phase} +{delay:.2f} s: {integrity}"
                    queued_seen |= queued
                    accepted_seen |= accepted
                progress.append((phase, round(delay, 2), len(accepted_seen)))
            print("\n(kill moment, events accepted so far):", progress)
            # Finally let it complete on the same state.
            final = subprocess.run(replay_cmd(drive, cfg, state, detections, out), env=child_env(),
                                   capture_output=True, text=True, timeout=120)
            assert final.returncode == 0, final.stderr
            integrity, queued, accepted = inspect_state(db, tmp_path / "inspect")
            assert integrity == "ok"
            assert queued == set(), f"{len(queued)} events still in the outbox after the final run"
            accepted_seen |= accepted
            collector.wait_for(lambda c: {json.loads(m.payload)["id"] for m in c.messages} >= accepted_seen, 20)
        finally:
            collector.close()

    received = [json.loads(m.payload) for m in collector.messages]
    delivered = Counter(e["id"] for e in received)
    objects_of_id: dict[str, set[str]] = {}
    ids_of_object: dict[str, set[str]] = {}
    ids_of_category: dict[str, set[str]] = {}
    for e in received:
        objects_of_id.setdefault(e["id"], set()).add(e["properties"]["object_id"])
        ids_of_object.setdefault(e["properties"]["object_id"], set()).add(e["id"])
        ids_of_category.setdefault(e["properties"]["category"], set()).add(e["id"])
    lost = (accepted_seen | queued_seen) - set(delivered)
    duplicated = sum(len(ids) - 1 for ids in ids_of_category.values())  # two events for one crafted object
    redelivered = sum(n - 1 for n in delivered.values())  # the same event_id again: at-least-once, allowed
    kills = sum(p != "completed" for p, _, _ in progress)
    with capsys.disabled():  # the counts are part of the bar: shown even when the test passes
        print(f"\ncrash test: kills={kills} events produced={len(accepted_seen)} (uninterrupted run: "
              f"{len(ref_events)}) delivered={len(delivered)} redelivered(same id)={redelivered} "
              f"duplicated={duplicated} lost={len(lost)}")
    assert kills >= KILLS
    assert not lost, f"accepted but never delivered: {sorted(lost)}"
    assert all(len(objs) == 1 for objs in objects_of_id.values()), "one event_id used for two objects"
    assert all(len(ids) == 1 for ids in ids_of_object.values()), "one object published under two event ids"
    assert duplicated == 0, {c: ids for c, ids in ids_of_category.items() if len(ids) > 1}
    assert set(delivered) == accepted_seen  # nothing delivered that the car did not accept
    # The same events as one uninterrupted run over a fresh state: one per crafted object, same categories.
    assert len(delivered) == len(ref_events)
    assert sorted(ids_of_category) == sorted(e["properties"]["category"] for e in ref_events)
    # Object and event ids are deterministic, so the interrupted runs published exactly the reference's ids.
    assert set(delivered) == {e["id"] for e in ref_events}
