"""Benchmark sections (a) bare inference, (b) the whole pipeline and (e) the RSS soak; see `scripts/bench.py`.

(a) runs in the calling process on frames decoded into memory beforehand. (b) and (e) run in a child process
(``python -m scripts.bench_pipeline ...``, one JSON line on stdout) so that their peak RSS is the pipeline's
own, not the bench's (which holds the pre-decoded frames). The child wires the run exactly as
`vehicle.app.replay` does (same builders), around a real Mosquitto started by the parent and a real
subscriber; the only additions are timers: a subclass of `Pipeline` and of `DedupIndex` that time the real
methods, and a wrapper around the drive's frame iterator that times decoding and remembers each frame's
capture time (``Frame.mono``) so that an event arriving at the subscriber gives frame-to-publish latency.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from vehicle.dedup import DedupIndex  # noqa: E402
from vehicle.events import make_event_id  # noqa: E402
from vehicle.pipeline import Pipeline  # noqa: E402

SHARED = Path(os.environ.get("PATROL_SHARED", ROOT.parent / "shared")).resolve()
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DRIVES = ("gopro-max-walk", "udacity-highway")


class BenchError(ValueError):
    """The bench cannot run as asked (missing model, data or tool); the message says what."""


# -- helpers shared by the sections ---------------------------------------------------------------------------

def rss_mb() -> float:
    """Resident set size of this process now, MB (from /proc: no psutil needed)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB.

    From /proc's VmHWM, not ``getrusage``: Linux carries ``ru_maxrss`` across fork + exec, so a child started
    by a big parent would report the parent's peak (measured: 417 MB for a bare ``python -c``).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6  # kB -> MB, as rss_mb
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (linear), None for no values."""
    return float(np.percentile(values, q)) if values else None


def make_drive(name: str, out: Path) -> Path:
    """A drive folder built from ../shared by `scripts/make_sample_drives.py` (the video copied byte for byte)."""
    src = {"gopro-max-walk": SHARED / "drives" / "gopro-max-walk" / "video.mp4",
           "udacity-highway": SHARED / "drives" / "udacity-highway" / "test_video.mp4"}[name]
    if not src.is_file():
        raise BenchError(f"{src}: missing (the bench reads real drives from ../shared beside the repo)")
    from scripts.make_sample_drives import make_gopro, make_udacity

    return (make_gopro if name == "gopro-max-walk" else make_udacity)(out)


def load_frames(drive_dir: Path, n_frames: int) -> list:
    """The first ``n_frames`` frames of a drive, decoded into memory (`vehicle.frames.Frame`)."""
    from vehicle.drive import open_drive

    frames = list(itertools.islice(open_drive(drive_dir).frames(), n_frames))
    if not frames:
        raise BenchError(f"{drive_dir}: no decodable frame")
    return frames


# -- (a) bare inference ---------------------------------------------------------------------------------------

def bare_inference(detector, images: list[np.ndarray], warmup: int = 3) -> dict:
    """Preprocess + ONNX session on every image, nothing else; frames per second.

    Args:
        detector: a `vehicle.detector.OnnxDetector` (the same class and settings the pipeline uses).
        images: BGR frames already in memory.
        warmup: untimed runs on the first image first (the pipeline run gets the same).
    """
    for _ in range(warmup):
        detector.infer(detector.preprocess(images[0])[0])
    t0 = time.perf_counter()
    for img in images:
        tensor, _ = detector.preprocess(img)
        detector.infer(tensor)
    dt = time.perf_counter() - t0
    return {"frames": len(images), "seconds": round(dt, 3), "fps": len(images) / dt,
            "ms_per_frame": 1e3 * dt / len(images)}


# -- a real broker and subscriber -----------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    """A fresh anonymous Mosquitto on a free port (yields the port); stopped afterwards."""
    if not Path(MOSQUITTO).exists():
        raise BenchError("mosquitto not installed (scripts/setup.sh installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n"
                    f"log_dest file {workdir / 'mosquitto.log'}\nmax_queued_messages 100000\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"mosquitto did not start on port {port}: {proc.stderr.read().decode()[-300:]}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class EventSubscriber:
    """A real MQTT 5 subscriber on ``patrol/v1/+/events`` noting each event's arrival (monotonic clock)."""

    def __init__(self, port: int):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.arrivals: list[tuple[float, dict]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-sub",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe("patrol/v1/+/events", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise BenchError(f"bench subscriber could not subscribe on port {port}")

    def _on_message(self, client, userdata, msg) -> None:
        t = time.monotonic()
        with self._lock:
            self.arrivals.append((t, json.loads(msg.payload)))

    def count(self) -> int:
        """Events received so far."""
        with self._lock:
            return len(self.arrivals)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


# -- (b) and (e): the pipeline, timed -------------------------------------------------------------------------

@dataclass
class StageTimes:
    """Seconds spent in each stage (each on its own thread) plus what is needed for latency."""

    decode_s: float = 0.0
    post_s: float = 0.0
    locate_s: float = 0.0
    dedup_s: float = 0.0
    events_s: float = 0.0
    frame_mono: dict[int, float] = field(default_factory=dict)  # frame index -> Frame.mono
    queued_mono: dict[str, float] = field(default_factory=dict)  # event id -> committed to the outbox


class TimedDedup(DedupIndex):
    """The real index; `update` timed."""

    times: StageTimes

    def update(self, sightings, now_utc):
        t0 = time.perf_counter()
        try:
            return super().update(sightings, now_utc)
        finally:
            self.times.dedup_s += time.perf_counter() - t0


class TimedPipeline(Pipeline):
    """The real pipeline; its post-processing steps timed (relies on the private step names)."""

    times: StageTimes

    def _post(self, frame, fd):
        t0 = time.perf_counter()
        super()._post(frame, fd)
        self.times.post_s += time.perf_counter() - t0

    def _sightings(self, fd, pose):
        t0 = time.perf_counter()
        try:
            return super()._sightings(fd, pose)
        finally:
            self.times.locate_s += time.perf_counter() - t0

    def _queue_events(self, confirmations, frame, fd, pose):
        t0 = time.perf_counter()
        super()._queue_events(confirmations, frame, fd, pose)
        self.times.events_s += time.perf_counter() - t0
        now = time.monotonic()
        for c, _ in confirmations:
            self.times.queued_mono[make_event_id(self.p.vehicle_id, c.obj.object_id, c.publication)] = now


def timed_frames(drive, n_frames: int, loop_until_mono: float | None, times: StageTimes,
                 counters) -> Iterator:
    """The drive's frames (the first ``n_frames``), decode timed; looped until ``loop_until_mono`` if given.

    Loops renumber frames so that indices keep rising (as in one long drive); frame times repeat the drive's,
    so the GPS track still covers them.
    """
    offset = 0
    while True:
        it = iter(drive.frames(counters))
        n = 0
        while n < n_frames:
            if loop_until_mono is not None and time.monotonic() >= loop_until_mono:
                return
            t0 = time.perf_counter()
            frame = next(it, None)
            times.decode_s += time.perf_counter() - t0
            if frame is None:
                break
            if offset:
                frame = replace(frame, index=frame.index + offset)
            times.frame_mono[frame.index] = frame.mono
            if len(times.frame_mono) > 2048:  # the soak must not measure the bench's own bookkeeping growing
                times.frame_mono = dict(itertools.islice(times.frame_mono.items(), 1024, None))
            n += 1
            yield frame
        if loop_until_mono is None or time.monotonic() >= loop_until_mono or n == 0:
            return
        offset += n


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``interval_s`` into ``samples`` as (seconds since start, MB)."""

    def __init__(self, interval_s: float):
        super().__init__(name="rss-sampler", daemon=True)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while True:
            self.samples.append((round(time.monotonic() - self.t0, 2), round(rss_mb(), 2)))
            if self._stop_event.wait(self.interval_s):
                self.samples.append((round(time.monotonic() - self.t0, 2), round(rss_mb(), 2)))
                return

    def stop(self) -> None:
        """Take a last sample and end."""
        self._stop_event.set()
        self.join(5)


def bench_config(model: Path, port: int, data_dir: Path, score_threshold: float | None,
                 class_map: dict[str, str]):
    """The default `Config`, pointed at the model, the bench broker and a scratch data folder."""
    from vehicle.config import Config

    det: dict = {"model_file": str(model), "class_map": class_map}
    if score_threshold is not None:
        det["score_threshold"] = score_threshold
    return Config(vehicle_id="bench-car", data_dir=str(data_dir), detector=det,
                  mqtt={"host": "127.0.0.1", "port": port})


def run_pipeline(model: Path, drive_dir: Path, n_frames: int, port: int, work: Path, soak_s: float | None = None,
                 sample_s: float = 1.0, score_threshold: float | None = None,
                 class_map: dict[str, str] | None = None, flush_timeout_s: float = 60.0,
                 power_safe: bool = False) -> dict:
    """Replay ``n_frames`` of a drive through the whole pipeline (looped for ``soak_s`` if given); measurements.

    Built as `vehicle.app.replay` builds it: same builders, same config defaults, real broker on ``port``,
    the outbox crash-safe only as a replay's is (``power_safe`` True: power-safe, as the car's live run).
    """
    from vehicle import app
    from vehicle.categories import Taxonomy
    from vehicle.config import resolve_path
    from vehicle.drive import open_drive
    from vehicle.frames import SourceCounters
    from vehicle.geometry import CameraCalibration
    from vehicle.gps import load_track
    from vehicle.pipeline import PipelineParts

    sampler = RssSampler(sample_s)
    sampler.start()
    cfg = bench_config(model, port, work / "data", score_threshold, class_map or {})
    base = ROOT
    drive = open_drive(drive_dir)
    taxonomy = Taxonomy.load(resolve_path(cfg.detector.categories_file, base))
    calibration = CameraCalibration.load(drive.calibration_file)
    g = cfg.gps
    track = load_track(drive.gps_file, max_fix_age_s=g.max_fix_age_s, stopped_speed_mps=g.stopped_speed_mps,
                       max_gap_s=g.max_interpolation_gap_s)
    state_dir = work / "state"
    stage, ref, obj_ref, covered = app._detectors(cfg, base, state_dir, taxonomy)
    outbox, plain_dedup = app._state(cfg, base, taxonomy, state_dir, power_safe=power_safe)
    times = StageTimes()
    dedup = TimedDedup(outbox.connection, plain_dedup.policy)
    dedup.times = times
    sub = EventSubscriber(port)
    publisher = app._publisher(cfg, base, outbox.path)
    source_counters = SourceCounters()
    loop_until = None if soak_s is None else time.monotonic() + soak_s
    frames = timed_frames(drive, n_frames, loop_until, times, source_counters)
    parts = PipelineParts(
        vehicle_id=cfg.vehicle_id, frames=frames, detect=stage, cached=None, pose_at=track.pose_at,
        calibration=calibration, dedup=dedup, outbox=outbox, model_ref=ref, object_model_ref=obj_ref,
        photos_dir=state_dir / "photos",
        min_range_m=cfg.location.min_range_m, max_range_m=cfg.location.max_range_m, no_fix_policy=g.no_fix_policy,
        jpeg_quality=cfg.photo.jpeg_quality, photo_max_width_px=cfg.photo.max_width_px,
        publish_snapshots=cfg.mqtt.publish_snapshots, frame_queue_size=cfg.runtime.frame_queue_size,
        result_queue_size=cfg.runtime.result_queue_size, on_events=publisher.wake,
        # a looped soak replays the same frame times again and again: no resume mark (which needs time order)
        progress_key=None if soak_s else f"replay:{drive.root.resolve()}:model",
    )
    reporter = app.StatusReporter(cfg.mqtt.status_interval_s, publisher, outbox, covered, source_counters)
    parts.on_frame = reporter
    pipeline = TimedPipeline(parts)
    pipeline.times = times
    reporter.pipeline = pipeline
    # The same warm-up as the bare-inference run gets, on the drive's first frame, before the clock starts.
    first = next(iter(drive.frames()))
    for _ in range(3):
        stage.detector.infer(stage.detector.preprocess(first.image)[0])
    del first
    t0 = time.perf_counter()
    pipeline.counters.started_mono = time.monotonic()
    counters = pipeline.run()
    wall_s = time.perf_counter() - t0
    sampler.stop()  # RSS while the pipeline runs: the teardown below frees memory and would bend the slope
    publisher.publish_status(reporter.status().to_json())
    flushed = publisher.flush(flush_timeout_s)
    deadline = time.monotonic() + 10
    while sub.count() < counters.events and time.monotonic() < deadline:
        time.sleep(0.05)
    publisher.stop()
    sub.close()
    outbox.close()
    frame_lat, pub_lat = [], []
    for t, doc in sub.arrivals:
        props = doc.get("properties", {})
        fm = times.frame_mono.get(props.get("frame_index"))
        if fm is not None:
            frame_lat.append(1e3 * (t - fm))
        qm = times.queued_mono.get(doc.get("id"))
        if qm is not None:
            pub_lat.append(1e3 * (t - qm))
    n = max(counters.frames, 1)
    return {
        "frames": counters.frames,
        "seconds": round(wall_s, 3),
        "fps": counters.frames / wall_s if wall_s > 0 else 0.0,
        "detections": counters.detections,
        "sightings": counters.sightings,
        "events": counters.events,
        "events_received": len(sub.arrivals),
        "flushed": flushed,
        "mqtt_max_messages_per_s": cfg.mqtt.max_messages_per_s,
        "power_safe": power_safe,
        "latency_ms": {"p50": percentile(frame_lat, 50), "p99": percentile(frame_lat, 99), "n": len(frame_lat)},
        "publish_ms": {"p50": percentile(pub_lat, 50), "p99": percentile(pub_lat, 99), "n": len(pub_lat)},
        "stage_ms_per_frame": {
            "decode": 1e3 * times.decode_s / n,
            "preprocess_inference": 1e3 * counters.inference_s / n,
            "post": 1e3 * times.post_s / n,
            "post_locate": 1e3 * times.locate_s / n,
            "post_dedup": 1e3 * times.dedup_s / n,
            "post_events": 1e3 * times.events_s / n,
            # the rest of post: mostly the per-frame commit of dedup writes (an fsync), pose lookup, status
            "post_other": 1e3 * (times.post_s - times.locate_s - times.dedup_s - times.events_s) / n,
        },
        "inference_busy": counters.inference_s / wall_s if wall_s > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "rss_samples": sampler.samples,
        "providers": stage.detector.providers,
    }


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: run the pipeline once and print its measurements as one JSON line."""
    ap = argparse.ArgumentParser(description="one timed pipeline run (used by scripts/bench.py)")
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--drive-dir", required=True, type=Path)
    ap.add_argument("--frames", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--soak-s", type=float, default=None)
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--score-threshold", type=float, default=None)
    ap.add_argument("--class-map", default="{}", help="JSON object: model class -> category")
    ap.add_argument("--power-safe", action="store_true", help="outbox power-safe (the car's live setting)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        result = run_pipeline(args.model, args.drive_dir, args.frames, args.port, Path(tmp), args.soak_s,
                              args.sample_s, args.score_threshold, json.loads(args.class_map),
                              power_safe=args.power_safe)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
