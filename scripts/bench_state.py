"""Benchmark sections (c) deduplication cost and (d) outbox throughput; see `scripts/bench.py`.

Both run on real SQLite files opened exactly as the car opens them (`vehicle.outbox.Outbox`: WAL,
``synchronous=FULL``; the dedup index shares the outbox's connection).
"""

from __future__ import annotations

import gc
import math
import random
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.bench_pipeline import BenchError  # noqa: E402
from vehicle.categories import Taxonomy  # noqa: E402
from vehicle.config import DedupConfig  # noqa: E402
from vehicle.dedup import M_PER_DEG_LAT, DedupIndex, Sighting, policy_from_taxonomy  # noqa: E402
from vehicle.outbox import Outbox, OutgoingMessage  # noqa: E402

CITY_LAT, CITY_LON = 33.13, -117.33  # Carlsbad, where the GoPro walk was filmed
CITY_SIDE_M = 20_000.0
# Rough mix of what a patrol car reports: garbage and parking dominate, manholes are rare.
CATEGORY_WEIGHTS = {
    "exposed_garbage": 20, "illegal_parking": 20, "overflowing_bin": 10, "road_damage": 10, "street_vending": 6,
    "piled_materials": 6, "bulky_waste": 6, "disorderly_bikes": 6, "out_of_store_business": 4,
    "street_umbrella": 3, "street_drying": 3, "outdoor_advertising": 3, "damaged_manhole": 3,
}
EVENT_PAYLOAD_BYTES = 1500  # a real event's JSON is about this size


def _city_points(rng: random.Random, n: int) -> list[tuple[float, float]]:
    """``n`` points over a 20 km square: half clustered around 200 hot spots (markets, stations), half spread."""
    m_per_deg_lon = 111_320.0 * math.cos(math.radians(CITY_LAT))
    hot = [(rng.uniform(-0.5, 0.5) * CITY_SIDE_M, rng.uniform(-0.5, 0.5) * CITY_SIDE_M) for _ in range(200)]
    out = []
    for i in range(n):
        if i % 2:
            hx, hy = hot[rng.randrange(len(hot))]
            x, y = hx + rng.gauss(0, 300), hy + rng.gauss(0, 300)
        else:
            x, y = rng.uniform(-0.5, 0.5) * CITY_SIDE_M, rng.uniform(-0.5, 0.5) * CITY_SIDE_M
        out.append((CITY_LAT + y / M_PER_DEG_LAT, CITY_LON + x / m_per_deg_lon))
    return out


def _bulk_load(index: DedupIndex, n: int, rng: random.Random, categories: list[str], weights: list[int],
               t0_utc: float) -> list[tuple[str, float, float]]:
    """Insert ``n`` published objects straight into the index's table (cells computed by the index itself)."""
    conn = index.conn
    index._xy_m(CITY_LAT, CITY_LON)  # fixes the index's reference latitude, as the first sighting would
    objs = []
    rows = []
    for (lat, lon), cat in zip(_city_points(rng, n), rng.choices(categories, weights, k=n), strict=True):
        cx, cy = index._cell(lat, lon, _gate_m(index, cat))
        seen = t0_utc - rng.uniform(0, 30 * 86400)
        rows.append((uuid.uuid4().hex, cat, index._cell_key(cx, cy), lat, lon, 0.01, 1, 5, "[0.6, 0.7, 0.8]",
                     seen - 60, seen, 0, seen - 30, 1))
        objs.append((cat, lat, lon))
        if len(rows) >= 50_000:
            rows.sort()  # primary keys in order: the B-tree grows at its end instead of splitting everywhere
            conn.executemany("INSERT INTO dedup_objects VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            rows = []
    if rows:
        rows.sort()
        conn.executemany("INSERT INTO dedup_objects VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.commit()
    conn.execute("ANALYZE")
    # The rows above mirror the index's private cell layout: prove that it finds them, or stop.
    for cat, lat, lon in objs[:: max(1, n // 50)]:
        probe = Sighting(cat, lat, lon, True, 5.0, 0.5, t0_utc, -1, (0.0, 0.0, 1.0, 1.0))
        if index._nearest(probe, index.policy.for_category(cat).radius_m)[0] is None:
            raise BenchError("bulk-loaded objects are not found by DedupIndex (its cell layout changed; "
                             "update _gate_m in scripts/bench_state.py)")
    return objs


def _gate_m(index: DedupIndex, category: str) -> float:
    """The grid cell size the index files a category under (its re-acquisition gate)."""
    return index.policy.for_category(category).radius_m * getattr(index.policy, "reacquire_factor", 1.0)


def _drive_frames(rng: random.Random, stored: list[tuple[str, float, float]], categories: list[str],
                  weights: list[int], sightings: int, now: float) -> list[list[Sighting]]:
    """Sightings as a patrol car makes them: driving a straight street at 15 m/s, 30 frames a second, past
    problems every ~25 m (5-12 m to the side, half of them already stored from earlier passes); each is seen,
    with 1 m of scatter, in every frame while it is 5-30 m ahead."""
    m_per_deg_lon = 111_320.0 * math.cos(math.radians(CITY_LAT))
    lat0, lon0 = stored[0][1], stored[0][2]
    heading = rng.uniform(0, 2 * math.pi)
    fx, fy = math.sin(heading), math.cos(heading)  # east, north per metre of travel
    route = []  # (along_m, category, east_m, north_m)
    along = 30.0
    while len(route) < sightings:  # plenty: at most ~1 new object per 25 m
        side = rng.choice((-1, 1)) * rng.uniform(5, 12)
        cat = rng.choices(categories, weights)[0]
        route.append((along, cat, along * fx + side * fy, along * fy - side * fx))
        along += rng.uniform(15, 35)
    frames: list[list[Sighting]] = []
    n, pos, frame, i0 = 0, 0.0, 2_000_000, 0
    while n < sightings:
        batch = []
        while i0 < len(route) and route[i0][0] < pos + 5:
            i0 += 1  # passed
        for along_m, cat, e, nn in route[i0:]:
            if along_m > pos + 30:
                break
            lat = lat0 + (nn + rng.gauss(0, 0.7)) / M_PER_DEG_LAT
            lon = lon0 + (e + rng.gauss(0, 0.7)) / m_per_deg_lon
            batch.append(Sighting(cat, lat, lon, True, along_m - pos, rng.uniform(0.4, 0.95), now, frame,
                                  (100.0, 100.0, 200.0, 200.0)))
        frames.append(batch)
        n += len(batch)
        pos += 0.5
        frame += 1
        now += 1 / 30
    return frames


def _random_frames(rng: random.Random, objs: list[tuple[str, float, float]], categories: list[str],
                   weights: list[int], sightings: int, per_frame: int, now: float) -> list[list[Sighting]]:
    """Worst case: every sighting somewhere else in the city; half within a metre of a stored object."""
    misses = _city_points(rng, sightings)
    frames, frame = [], 1_000_000
    for start in range(0, sightings, per_frame):
        batch = []
        for i in range(start, min(start + per_frame, sightings)):
            if i % 2:
                cat, lat, lon = objs[rng.randrange(len(objs))]
                lat += rng.uniform(-0.5, 0.5) / M_PER_DEG_LAT
            else:
                lat, lon = misses[i]
                cat = rng.choices(categories, weights)[0]
            batch.append(Sighting(cat, lat, lon, True, rng.uniform(3, 30), rng.uniform(0.4, 0.95), now, frame,
                                  (100.0, 100.0, 200.0, 200.0)))
        frames.append(batch)
        frame += 1
        now += 1 / 30
    return frames


def _time_frames(index: DedupIndex, outbox: Outbox, frames: list[list[Sighting]]) -> tuple[float, float, float, int]:
    update_s = commit_s = update_cpu_s = 0.0
    confirmations = 0
    for batch in frames:
        c0, t0 = time.thread_time(), time.perf_counter()
        confirmations += len(index.update(batch, batch[0].time_utc if batch else 0.0))
        t1 = time.perf_counter()
        update_cpu_s += time.thread_time() - c0
        outbox.connection.commit()
        commit_s += time.perf_counter() - t1
        update_s += t1 - t0
    return update_s, update_cpu_s, commit_s, confirmations


def dedup_cost(work: Path, sizes: list[int], sightings: int = 4000, per_frame: int = 4, seed: int = 7) -> list[dict]:
    """Microseconds per detection in `DedupIndex.update` with each number of stored objects.

    Two workloads. ``drive`` (the floor's measure): sightings as a car makes them, each problem seen in many
    consecutive frames while the car passes, half of the problems already stored. ``random`` (the worst case,
    reported beside it): every sighting at a random place in the city, half within a metre of a stored object.
    The transaction is committed after each frame, as the pipeline does; the commit (an fsync) is timed apart
    from ``update``. Wall time is the floor's measure; the thread's CPU time is reported too, since a shared
    machine inflates wall time.
    """
    taxonomy = Taxonomy.load(ROOT / "models" / "categories.yaml")
    policy = policy_from_taxonomy(taxonomy, DedupConfig())
    categories = [c for c in CATEGORY_WEIGHTS if taxonomy.get(c) is not None] or list(taxonomy.names)
    weights = [CATEGORY_WEIGHTS.get(c, 1) for c in categories]
    results = []
    for n in sizes:
        rng = random.Random(seed + n)
        path = work / f"dedup-{n}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        outbox = Outbox(path)
        index = DedupIndex(outbox.connection, policy)
        now = time.time()
        t_load = time.perf_counter()
        objs = _bulk_load(index, n, rng, categories, weights, now)
        load_s = time.perf_counter() - t_load
        drive = _drive_frames(rng, objs, categories, weights, sightings, now)
        r_frames = _random_frames(rng, objs, categories, weights, sightings, per_frame, now + 3600)
        # The bench holds every stored object and sighting as Python objects (the car does not: they live in
        # SQLite); left to the garbage collector, its full passes over those millions of objects land in the
        # timed loop and measure the bench, not the index (~10 us at 1e6 frozen, 20-40 us not).
        gc.collect()
        gc.freeze()
        try:
            update_s, update_cpu_s, commit_s, _ = _time_frames(index, outbox, drive)
            drive_sightings = sum(len(b) for b in drive)
            stored_after_drive = index.count()
            r_update_s, r_update_cpu_s, _, _ = _time_frames(index, outbox, r_frames)
        finally:
            gc.unfreeze()
        results.append({
            "objects": n,
            "load_s": round(load_s, 2),
            "sightings": sightings,
            "us_per_detection": 1e6 * update_s / drive_sightings,
            "cpu_us_per_detection": 1e6 * update_cpu_s / drive_sightings,  # this thread's CPU: less noisy than wall
            "commit_ms_per_frame": 1e3 * commit_s / max(1, len(drive)),
            "random_us_per_detection": 1e6 * r_update_s / sightings,
            "random_cpu_us_per_detection": 1e6 * r_update_cpu_s / sightings,
            "stored_after_drive": stored_after_drive,
            "stored_after": index.count(),
        })
        outbox.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    return results


def outbox_throughput(work: Path, events: int = 20_000, batch_sizes: tuple[int, ...] = (1, 10, 50),
                      lease_limit: int = 100) -> list[dict]:
    """Durable events per second through the outbox, for each put batch size.

    A producer puts batches the way the pipeline does (``put(commit=False)``, commit, ``enforce_bounds``)
    while a sender thread on its own connection leases and acks (``ack_many``) as `vehicle.mqtt` does. The
    rate is events / time until the last one was acknowledged.
    """
    payload = (b'{"type":"Feature","id":"' + b"x" * (EVENT_PAYLOAD_BYTES - 40) + b'"}')[:EVENT_PAYLOAD_BYTES]
    out = []
    for batch in batch_sizes:
        n_events = min(events, 1000 * batch)  # one fsync per batch: small batches get fewer events
        path = work / f"outbox-{batch}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        producer = Outbox(path)
        acked = 0
        done = threading.Event()
        error: list[BaseException] = []

        def sender(path: Path = path, n_events: int = n_events, done: threading.Event = done,
                   error: list[BaseException] = error) -> None:
            nonlocal acked
            try:
                with Outbox(path) as ob:
                    while acked < n_events:
                        msgs = ob.lease(lease_limit)
                        if not msgs:
                            time.sleep(0.001)
                            continue
                        ob.ack_many(m.seq for m in msgs)
                        acked += len(msgs)
            except BaseException as exc:  # reported on the main thread
                error.append(exc)
            finally:
                done.set()

        t0 = time.perf_counter()
        th = threading.Thread(target=sender, name="bench-sender", daemon=True)
        th.start()
        for start in range(0, n_events, batch):
            msgs = [OutgoingMessage("patrol/v1/bench-car/events", payload, "event", f"ev-{batch}-{i}")
                    for i in range(start, min(start + batch, n_events))]
            producer.put(msgs, commit=False)
            producer.connection.commit()
            producer.enforce_bounds()
        put_s = time.perf_counter() - t0
        done.wait(600)
        total_s = time.perf_counter() - t0
        th.join(5)
        producer.close()
        if error:
            raise error[0]
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        out.append({"batch": batch, "events": n_events, "acked": acked, "put_events_per_s": n_events / put_s,
                    "events_per_s": n_events / total_s})
    return out
