"""The durable outbox: order, idempotence, bounds, durability across reopen and kill -9, corruption."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vehicle.outbox import Outbox, OutboxError, OutgoingMessage

REPO_ROOT = Path(__file__).resolve().parent.parent
TOPIC = "patrol/v1/car-7/events"


def event(key: str, size: int = 100) -> OutgoingMessage:
    return OutgoingMessage(TOPIC, key.encode().ljust(size, b"."), "event", key)


def snapshot(tmp_path: Path, key: str, size: int = 1000) -> OutgoingMessage:
    f = tmp_path / f"{key}.jpg"
    f.write_bytes(bytes([len(key) % 256]) * size)
    return OutgoingMessage(f"patrol/v1/car-7/snapshots/{key}", None, "snapshot", key, payload_file=str(f))


def test_lease_returns_oldest_first_in_put_order(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([event("a"), event("b")])
    ob.put([event("c")])
    ob.put([event("d"), event("e")])
    leased = ob.lease(10)
    assert [m.key for m in leased] == ["a", "b", "c", "d", "e"]
    assert [m.seq for m in leased] == sorted(m.seq for m in leased)
    assert leased[0].payload == b"a".ljust(100, b".")
    assert leased[0].topic == TOPIC and leased[0].kind == "event" and leased[0].attempts == 0
    assert [m.key for m in ob.lease(2)] == ["a", "b"]
    assert [m.key for m in ob.lease(10, after_seq=leased[2].seq)] == ["d", "e"]
    assert len(ob.lease(10)) == 5  # lease does not remove
    ob.close()


def test_put_is_idempotent_on_kind_and_key(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([event("a"), event("b")])
    ob.put([event("a"), event("b"), event("c")])  # replayed
    ob.put([snapshot(tmp_path, "a")])  # same key, other kind: a different message
    assert [(m.kind, m.key) for m in ob.lease(10)] == [
        ("event", "a"), ("event", "b"), ("event", "c"), ("snapshot", "a")
    ]
    st = ob.stats()
    assert st.depth == 4
    assert st.bytes == 3 * 100 + 1000
    ob.close()


def test_ack_removes_and_stats_follow(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    snap = snapshot(tmp_path, "s1", size=777)
    ob.put([event("a", 50), event("b", 60), snap])
    seqs = {m.key: m.seq for m in ob.lease(10)}
    ob.ack(seqs["a"])
    st = ob.stats()
    assert (st.depth, st.bytes) == (2, 60 + 777)
    ob.ack_many([seqs["b"], seqs["s1"]])
    st = ob.stats()
    assert (st.depth, st.bytes, st.oldest_age_s) == (0, 0, 0.0)
    assert not Path(snap.payload_file).exists()  # delivered: the car does not keep the photo (its disk)
    ob.close()


def test_oldest_age_is_age_of_first_row(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([event("a")])
    time.sleep(0.3)
    ob.put([event("b")])
    assert 0.3 <= ob.stats().oldest_age_s < 5.0
    ob.close()


def test_snapshot_payload_is_read_from_its_file(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    snap = snapshot(tmp_path, "abc", size=321)
    ob.put([snap])
    (m,) = ob.lease(1)
    assert m.payload == Path(snap.payload_file).read_bytes() and len(m.payload) == 321
    assert m.payload_file == snap.payload_file
    ob.close()


def test_vanished_snapshot_file_is_dropped_and_counted_not_sent_empty(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    snap = snapshot(tmp_path, "gone")
    ob.put([event("a"), snap, event("b")])
    os.unlink(snap.payload_file)
    assert [m.key for m in ob.lease(10)] == ["a", "b"]
    st = ob.stats()
    assert (st.depth, st.dropped_snapshots, st.dropped_events) == (2, 1, 0)
    ob.close()


def test_bounds_evict_oldest_photos_first_then_events_and_count(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=2000)
    snaps = [snapshot(tmp_path, f"s{i}", size=1000) for i in range(3)]
    ob.put([event("e0"), snaps[0], event("e1"), snaps[1], event("e2"), snaps[2]])  # 300 + 3000 bytes
    assert ob.enforce_bounds() == 2  # 3300 -> 2300 -> 1300: the two oldest photos go
    assert [m.key for m in ob.lease(10)] == ["e0", "e1", "e2", "s2"]
    assert [Path(s.payload_file).exists() for s in snaps] == [False, False, True]
    st = ob.stats()
    assert (st.bytes, st.dropped_snapshots, st.dropped_events) == (1300, 2, 0)

    ob.put([event(f"f{i}", 100) for i in range(22)])  # 3500 bytes: the last photo (-> 2500), then 5 events
    assert ob.enforce_bounds() == 6
    assert [m.key for m in ob.lease(30)] == [f"f{i}" for i in range(2, 22)]
    st = ob.stats()
    assert (st.bytes, st.dropped_snapshots, st.dropped_events, st.dropped) == (2000, 3, 5, 8)
    assert ob.enforce_bounds() == 0
    ob.close()
    reopened = Outbox(tmp_path / "o.db", max_bytes=2000)  # the drop counters are persisted
    assert (reopened.stats().dropped_snapshots, reopened.stats().dropped_events) == (3, 5)
    reopened.close()


def test_reopen_keeps_rows_and_seq_keeps_growing(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path)
    ob.put([event("a"), event("b")])
    last = ob.lease(10)[-1].seq
    ob.close()
    ob = Outbox(path)
    assert [m.key for m in ob.lease(10)] == ["a", "b"]
    ob.ack_many([m.seq for m in ob.lease(10)])
    ob.close()
    ob = Outbox(path)
    ob.put([event("c")])
    (c,) = ob.lease(10)
    assert c.seq > last  # seq is never reused, even after the outbox emptied: a sender cursor stays valid
    ob.close()


def test_put_without_commit_shares_the_callers_transaction(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path)
    ob.connection.execute("CREATE TABLE dedup_state (object_id TEXT PRIMARY KEY)")
    ob.connection.commit()
    reader = Outbox(path)

    ob.connection.execute("INSERT INTO dedup_state VALUES ('obj-1')")
    ob.put([event("a")], commit=False)
    assert reader.lease(10) == []  # nothing visible before the caller commits
    ob.connection.rollback()
    assert ob.lease(10) == [] and ob.connection.execute("SELECT * FROM dedup_state").fetchall() == []

    ob.connection.execute("INSERT INTO dedup_state VALUES ('obj-2')")
    ob.put([event("b")], commit=False)
    ob.connection.commit()
    assert [m.key for m in reader.lease(10)] == ["b"]
    assert reader.connection.execute("SELECT * FROM dedup_state").fetchall() == [("obj-2",)]
    assert reader.stats().depth == 1
    ob.close()
    reader.close()


def test_park_keeps_a_refused_message_out_of_lease_until_unparked(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([event("a"), event("b")])
    a = ob.lease(1)[0]
    ob.park(a.seq, "Not authorized (0x87)")
    assert [m.key for m in ob.lease(10)] == ["b"]
    assert (ob.stats().depth, ob.stats().parked) == (2, 1)
    assert ob.unpark_all() == 1
    assert [m.key for m in ob.lease(10)] == ["a", "b"]
    assert ob.stats().parked == 0
    ob.record_attempts([a.seq])
    assert ob.lease(1)[0].attempts == 1
    ob.close()


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        (OutgoingMessage(TOPIC, b"x", "photo", "k"), "kind must be one of"),
        (OutgoingMessage(TOPIC, None, "event", "k"), "exactly one of payload and payload_file"),
        (OutgoingMessage(TOPIC, b"x", "snapshot", "k", payload_file="/x.jpg"), "exactly one of"),
    ],
)
def test_put_rejects_malformed_messages(tmp_path: Path, msg: OutgoingMessage, error: str) -> None:
    ob = Outbox(tmp_path / "o.db")
    with pytest.raises(ValueError, match=error):
        ob.put([msg])
    ob.close()


def test_put_of_a_missing_snapshot_file_names_it(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    missing = tmp_path / "nope.jpg"
    with pytest.raises(OutboxError, match=re.escape(str(missing))):
        ob.put([OutgoingMessage("t", None, "snapshot", "k", payload_file=str(missing))])
    ob.close()


def test_garbage_file_raises_outbox_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite at all " * 200)
    with pytest.raises(OutboxError, match=re.escape(str(path))):
        Outbox(path)


def test_torn_file_raises_outbox_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "torn.db"
    ob = Outbox(path)
    ob.put([event(f"e{i}", 900) for i in range(300)])
    ob.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ob.close()
    data = path.read_bytes()
    assert len(data) > 100_000
    path.write_bytes(data[:4096] + b"\x5a" * 4096 + data[8192 : len(data) // 2])  # a torn, half-written file
    with pytest.raises(OutboxError, match=re.escape(str(path))):
        Outbox(path)


def test_rejects_non_positive_bound(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Outbox(tmp_path / "o.db", max_bytes=0)


def test_kill_9_loses_nothing_that_put_returned(tmp_path: Path) -> None:
    """A writer killed with SIGKILL mid-stream: every batch whose put() returned is in the reopened outbox."""
    path = tmp_path / "o.db"
    writer = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from vehicle.outbox import Outbox, OutgoingMessage
        ob = Outbox({str(path)!r})
        for b in range(100000):
            ob.put([OutgoingMessage("t", b"x" * 500, "event", f"{{b}}-{{i}}") for i in range(50)])
            print(b, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    done = []
    assert proc.stdout is not None
    while len(done) < 40:
        line = proc.stdout.readline()
        assert line, "writer died early"
        done.append(int(line))
    proc.send_signal(signal.SIGKILL)
    tail = proc.stdout.read()  # batches acknowledged between our last read and the kill count too
    done += [int(x) for x in tail.split()]
    proc.wait(10)
    ob = Outbox(path)
    keys = {m.key for m in ob.lease(10**7)}
    expected = {f"{b}-{i}" for b in done for i in range(50)}
    assert expected <= keys
    assert ob.stats().depth == len(keys)
    with sqlite3.connect(path) as conn:  # and the file is consistent
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ob.close()
