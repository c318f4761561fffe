"""``patrol`` as a real subprocess: exit codes, one clear stderr line, and a failed start leaves the outbox alone."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import converted_coco_model, shared_path
from tests.drives import gopro_drive, without_video
from tests.integration.test_crash import crafted_detections, open_state_readonly
from vehicle.app import ReplayOptions, replay

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "scripts" / "patrol.toml"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) ")


def patrol(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """Run ``patrol ARGS`` with this interpreter; never downloads anything."""
    full_env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "vehicle.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=full_env, cwd=REPO_ROOT)


def error_lines(stderr: str) -> list[str]:
    """stderr without the logging module's own timestamped lines: what a user reads as *the* error."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def assert_one_error_line(res: subprocess.CompletedProcess, code: int, *must_contain: str) -> str:
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = error_lines(res.stderr)
    assert len(lines) == 1, lines
    assert "Traceback" not in res.stderr
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


# -- configuration: exit 2 ----------------------------------------------------------------------------------------

def test_check_config_accepts_the_installed_template() -> None:
    if not (REPO_ROOT / "models" / "patrol-detector.onnx").is_file():
        pytest.skip("models/patrol-detector.onnx (the shipped model the template names) is not in this checkout")
    res = patrol("check-config", str(TEMPLATE))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"config": str(TEMPLATE), "vehicle_id": "car-001", "ok": True, "for": "run"}


BAD = [
    ("unknown key", "[camera]\nsorce = '/dev/video0'\n", "camera.sorce"),
    ("wrong type", "[gps]\nmax_fix_age_s = 'soon'\n", "gps.max_fix_age_s"),
    ("port out of range", "[mqtt]\nport = 0\n", "mqtt.port"),
    ("bad vehicle_id", "vehicle_id = 'car #7'\n", "vehicle_id"),
    ("password without username", "[mqtt]\npassword = 'x'\n", "without a username"),
]


@pytest.mark.parametrize(("case", "text", "key"), BAD, ids=[b[0] for b in BAD])
def test_check_config_rejects_with_exit_2_and_one_line(tmp_path: Path, case: str, text: str, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    line = assert_one_error_line(patrol("check-config", str(cfg)), 2, str(cfg), key)
    assert line.startswith("patrol: config error: ")


def test_check_config_names_a_missing_model_file(tmp_path: Path) -> None:
    cfg = tmp_path / "patrol.toml"
    cfg.write_text(f'[camera]\nsource = "/dev/video0"\n[detector]\nmodel_file = "{tmp_path / "absent.onnx"}"\n')
    assert_one_error_line(patrol("check-config", str(cfg)), 2, "detector.model_file", "absent.onnx")


@pytest.mark.parametrize(("toml", "key"), [
    ("", "camera.source"),
    ('[camera]\nsource = "/dev/video0"\n[dedup.radius_m]\nexposed_garbage = -5\n', "dedup.radius_m.exposed_garbage"),
    ('[camera]\nsource = "/dev/video0"\n[dedup.min_frames]\nnot_a_category = 3\n', "dedup.min_frames.not_a_category"),
    ('[camera]\nsource = "/dev/video0"\n[location]\nmin_range_m = 10\nmax_range_m = 5\n', "location"),
    ('[camera]\nsource = "/dev/video0"\n[detector.class_map]\nfoo = "bar"\n', "detector.class_map.foo"),
    ('[camera]\nsource = "/dev/video0"\ncalibration_file = "nope.toml"\n', "camera.calibration_file"),
    ('[camera]\nsource = "/dev/video0"\n[gps]\nsource = "nope.nmea"\n', "gps.source"),
    ('[camera]\nsource = "/dev/video0"\n[gps]\nsource = "patrol.toml"\n', "no usable NMEA sentence"),  # not a GPS log
    ('[camera]\nsource = "/dev/video0"\n[mqtt]\nusername = "car"\npassword = "${PATROL_TEST_UNSET_VAR}"\n',
     "mqtt.password"),
    ('[camera]\nsource = "/dev/video0"\n[mqtt.tls]\nenabled = true\nca_file = "nope.pem"\n', "mqtt.tls.ca_file"),
    ('[camera]\nsource = "/dev/video0"\n[mqtt.tls]\nenabled = true\ncert_file = "patrol.toml"\n',
     "mqtt.tls.cert_file: patrol.toml with key (in the same file): not a usable client certificate"),
    ('[camera]\nsource = "/dev/video0"\n[mqtt.tls]\nenabled = true\nkey_file = "patrol.toml"\n',
     "mqtt.tls.cert_file: required with mqtt.tls.key_file"),
    ('[camera]\nsource = "/dev/video0"\n[mqtt]\nhost = ""\n', "mqtt.host"),
    ('data_dir = "/proc/patrol"\n[camera]\nsource = "/dev/video0"\n', "data_dir: /proc/patrol cannot be written"),
])
def test_check_config_catches_what_run_would_reject(tmp_path: Path, toml: str, key: str) -> None:
    if not (REPO_ROOT / "models" / "patrol-detector.onnx").is_file():
        pytest.skip("the shipped model is missing")
    cfg = tmp_path / "patrol.toml"
    cfg.write_text(toml)
    assert_one_error_line(patrol("check-config", str(cfg)), 2, key, str(cfg))


def test_run_with_a_bad_config_exits_2_before_starting_anything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'data_dir = "{data}"\n[camera]\nsource = "/dev/video0"\n[mqtt]\nport = 99999\n')
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(0.2)
        res = patrol("run", "--config", str(cfg), env={"NOTIFY_SOCKET": str(sock_path)})
        assert_one_error_line(res, 2, "mqtt.port", str(cfg))
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # no READY (nor anything else) was sent to systemd
    assert not data.exists()  # no data folder, no outbox, no camera opened


@pytest.mark.parametrize("command", ["run", "record"])
def test_a_missing_camera_source_is_a_config_error_for_run_and_record(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "patrol.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[camera]\nsource = "absent.mp4"\n')
    args = ["--config", str(cfg)] + (["--out", str(tmp_path / "drive")] if command == "record" else [])
    assert_one_error_line(patrol(command, *args), 2, "camera.source", "absent.mp4 not found")
    assert not (tmp_path / "drive").exists() and not (tmp_path / "data").exists()


def test_record_without_gpsd_records_nothing_and_fails(tmp_path: Path) -> None:
    video = shared_path("drives", "udacity-highway", "test_video.mp4")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "patrol.toml"
    cfg.write_text(f'[camera]\nsource = "{video}"\n[gps]\ngpsd_port = {port}\n')
    res = patrol("record", "--config", str(cfg), "--out", str(tmp_path / "drive"))
    # Frames before a fix could only carry the system clock's time, and never be placed: nothing is recorded, and
    # no half-made drive folder blocks a retry.
    assert_one_error_line(res, 1, "no frame was recorded: no GPS report came", f"127.0.0.1:{port} never answered")
    assert "0 frames in 0 segment(s)" in res.stdout
    assert not (tmp_path / "drive").exists()


def _record_from_an_absent_camera(tmp_path: Path, *extra: str) -> subprocess.Popen:
    cfg = tmp_path / "patrol.toml"
    cfg.write_text('[camera]\nsource = "/dev/video99"\nwatchdog_timeout_s = 1\n')  # no such device here
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-m", "vehicle.cli", "record", "--config", str(cfg), "--out",
                             str(tmp_path / "drive"), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO_ROOT)


def test_record_ends_on_time_and_says_so_when_the_camera_never_opens(tmp_path: Path) -> None:
    proc = _record_from_an_absent_camera(tmp_path, "--duration-s", "2")
    out, err = proc.communicate(timeout=60)  # it used to retry the camera for ever, deaf to --duration-s
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_error_line(res, 1, "camera.source: /dev/video99: no frame was recorded")
    assert "0 frames in 0 segment(s)" in out
    assert "cannot open" in err  # the retries were logged, as warnings
    assert not (tmp_path / "drive").exists()  # a retry with the same --out is not blocked


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_record_stops_on_a_signal_while_the_camera_is_unavailable(tmp_path: Path, sig: int) -> None:
    proc = _record_from_an_absent_camera(tmp_path)
    deadline = time.monotonic() + 30
    while not (tmp_path / "drive" / "gps.json").exists():  # started: the drive folder is being written
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(sig)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10, "the signal did not end the recording promptly"
    assert proc.returncode == 1 and "no frame was recorded" in err, err


def test_record_refuses_a_gps_log_as_its_source(tmp_path: Path) -> None:
    cfg = tmp_path / "patrol.toml"
    cfg.write_text('[camera]\nsource = "/dev/video99"\n[gps]\nsource = "gps.nmea"\n')
    res = patrol("record", "--config", str(cfg), "--out", str(tmp_path / "drive"))
    assert_one_error_line(res, 2, "gps.source", "gpsd")
    assert not (tmp_path / "drive").exists()


def test_run_with_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    assert_one_error_line(patrol("run", "--config", str(tmp_path / "nope.toml")), 2, "not found")


# -- bad input: exit 1, outbox untouched ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def filled_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(drive, config, detections, state dir) where a first replay left 13 events + photos in the outbox."""
    tmp = tmp_path_factory.mktemp("cli")
    drive = gopro_drive(tmp / "drives")
    detections = tmp / "detections.jsonl"
    crafted_detections(drive, detections)
    cfg = tmp / "patrol.toml"
    cfg.write_text(f'vehicle_id = "car-cli"\n[gps]\nstopped_speed_mps = 0.3\n[mqtt]\nenabled = false\n'
                   f'[detector]\nmodel_file = "{tmp / "missing.onnx"}"\n')
    counters = replay(ReplayOptions(drive, cfg, detections=detections, state_dir=tmp / "state"))
    assert counters.events == 13
    return drive, cfg, detections, tmp / "state"


def outbox_rows(state: Path) -> list[tuple]:
    conn = open_state_readonly(state / "state.sqlite")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT seq, kind, key, size_bytes, payload FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()


def model_config(tmp: Path) -> Path:
    """A replay config with the shipped model and no broker."""
    cfg = tmp / "with-model.toml"
    model = REPO_ROOT / "models" / "patrol-detector.onnx"
    cfg.write_text(f'[mqtt]\nenabled = false\n[detector]\nmodel_file = "{model}"\n')
    return cfg


def bad_drive(tmp: Path, drive: Path, what: str) -> Path:
    out = tmp / f"drive-{what}"
    shutil.copytree(drive, out)
    if what == "junk-video":
        (out / "video" / "000000.mp4").write_bytes(random.Random(7).randbytes(64_000))  # not a video (seeded)
    elif what == "no-fix":
        # A real receiver's log (Holux GM-210, from gpsd's regression tests) that never got a fix.
        shutil.copyfile(shared_path("gps", "gpsd-testlogs", "holux-gm-210.log"), out / "gps.nmea")
    return out


def test_missing_model_file_is_one_line_and_keeps_the_outbox(tmp_path: Path, filled_state) -> None:
    drive, cfg, _, state = filled_state
    before = outbox_rows(state)
    assert sum(r[1] == "event" for r in before) == 13
    res = patrol("replay", str(drive), "--config", str(cfg), "--state", str(state))
    assert_one_error_line(res, 2, "detector.model_file", "missing.onnx", "model file not found")
    assert outbox_rows(state) == before


def test_unreadable_video_is_one_line_and_keeps_the_outbox(tmp_path: Path, filled_state) -> None:
    drive, cfg, detections, state = filled_state
    before = outbox_rows(state)
    bad = bad_drive(tmp_path, drive, "junk-video")
    res = patrol("replay", str(bad), "--config", str(cfg), "--state", str(state), "--detections", str(detections))
    assert_one_error_line(res, 1, str(bad / "video" / "000000.mp4"), "cannot open video")
    assert outbox_rows(state) == before


@pytest.mark.parametrize("cached", [True, False])
def test_an_unreadable_video_stops_a_replay_before_it_commits_or_creates_anything(
        tmp_path: Path, filled_state, cached: bool) -> None:
    drive, cfg, detections, _ = filled_state
    bad = bad_drive(tmp_path, drive, "junk-video")
    state, out = tmp_path / "new-state", tmp_path / "events.jsonl"
    extra = ["--detections", str(detections)] if cached else []
    if not cached:  # the shipped model, to get as far as the video
        cfg = model_config(tmp_path)
    res = patrol("replay", str(bad), "--config", str(cfg), "--state", str(state), "--out", str(out), *extra)
    assert_one_error_line(res, 1, str(bad / "video" / "000000.mp4"), "cannot open video")
    # With cached detections the video only gives the photos: it used to be opened after every event was committed.
    assert not state.exists() and (not out.exists() or out.read_text() == "")


def test_replay_refuses_outputs_that_would_destroy_an_input_or_each_other(tmp_path: Path, filled_state) -> None:
    drive, cfg, detections, _ = filled_state
    cached = tmp_path / "cached.jsonl"
    shutil.copyfile(detections, cached)
    events = tmp_path / "events.jsonl"
    kept = '{"type": "Feature", "id": "kept", "properties": {}}\n'
    events.write_text(kept)  # an earlier run's events
    before = cached.read_bytes()
    with_model = model_config(tmp_path)  # --save-detections runs the model
    for config, args, why in (
        (cfg, ["--detections", str(cached), "--out", str(cached)], "--out is also --detections"),
        (cfg, ["--detections", str(cached), "--out", str(drive / "gps.nmea")], "--out is also the drive's GPS log"),
        (with_model, ["--out", str(events), "--save-detections", str(tmp_path / "." / "events.jsonl")],
         "--save-detections is also --out"),
        (with_model, ["--save-detections", str(drive / "calibration.toml")], "is also the drive's calibration"),
        (with_model, ["--save-detections", str(events)], "not a detections file"),
    ):
        state = tmp_path / "state"
        res = patrol("replay", str(drive), "--config", str(config), "--state", str(state), *args)
        assert_one_error_line(res, 1, why)
        assert not state.exists(), args  # refused before anything was created
    other = tmp_path / "other-detections.jsonl"
    shutil.copyfile(detections, other)
    res = patrol("replay", str(drive), "--config", str(cfg), "--detections", str(cached), "--out", str(other))
    assert_one_error_line(res, 1, "not an events file (its first line is not an event)")
    assert cached.read_bytes() == before and other.read_bytes() == before
    assert events.read_text() == kept
    res = patrol("replay", str(drive), "--config", str(cfg), "--detections", str(cached), "--state", str(drive))
    assert_one_error_line(res, 1, "--state is inside the drive")
    assert not (drive / "state.sqlite").exists()
    new_out = tmp_path / "new-events.jsonl"  # a start that fails later leaves no empty events file behind
    res = patrol("replay", str(drive), "--config", str(with_model), "--out", str(new_out), "--save-detections",
                 "/proc/patrol-detections.jsonl")
    assert_one_error_line(res, 1, "/proc/patrol-detections.jsonl")
    assert not new_out.exists()
    # Events are appended: anything that is not an events file would be spoilt (the drive's manifest, the config).
    for target in (drive / "manifest.json", cfg):
        before_target = target.read_bytes()
        res = patrol("replay", str(drive), "--config", str(cfg), "--detections", str(cached), "--out", str(target))
        assert_one_error_line(res, 1, str(target), "not an events file")
        assert target.read_bytes() == before_target


def test_a_gps_log_from_another_day_is_warned_about(tmp_path: Path, filled_state) -> None:
    drive, cfg, detections, _ = filled_state
    other = tmp_path / "drive-other-day"
    shutil.copytree(drive, other)
    # A real 2010 drive in Switzerland: fixes, but none at the walk's time, so no frame can be placed by one.
    shutil.copyfile(shared_path("gps", "genivi-drives", "extracted", "NMEA_Logs",
                                "20100403_Z205_Switzerland_short.txt"), other / "gps.nmea")
    res = patrol("replay", str(other), "--config", str(cfg), "--detections", str(detections),
                 "--state", str(tmp_path / "state"))
    assert res.returncode == 0, res.stderr
    assert "frames=150 " in res.stderr and "no_fix_frames=150 " in res.stderr  # every cached frame
    assert "had a GPS fix: the video and" in res.stderr and "do not overlap in time" in res.stderr


def test_gps_log_without_a_fix_is_one_line_and_keeps_the_outbox(tmp_path: Path, filled_state) -> None:
    drive, cfg, detections, state = filled_state
    before = outbox_rows(state)
    bad = bad_drive(tmp_path, drive, "no-fix")
    res = patrol("replay", str(bad), "--config", str(cfg), "--state", str(state), "--detections", str(detections))
    assert_one_error_line(res, 1, "no fix", str(bad / "gps.nmea"))
    assert outbox_rows(state) == before


def test_a_frame_that_breaks_half_way_loses_no_event(tmp_path: Path, filled_state) -> None:
    """The first event's photo cannot be written (a file stands where the photo folder goes): the run stops
    with one line, nothing of that frame is committed, and the rerun publishes all 13 events."""
    drive, cfg, detections, _ = filled_state
    state = tmp_path / "state"
    state.mkdir()
    (state / "photos").write_text("in the way")
    args = ("replay", str(drive), "--config", str(cfg), "--state", str(state), "--detections", str(detections))
    assert_one_error_line(patrol(*args), 1, str(state / "photos"), "cannot write the evidence photo")
    conn = open_state_readonly(state / "state.sqlite")
    try:
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM dedup_objects WHERE publications > 0").fetchone()[0] == 0
    finally:
        conn.close()
    (state / "photos").unlink()
    res = patrol(*args, "--out", str(tmp_path / "events.jsonl"))
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 13


def test_two_runs_on_one_state_folder_are_refused(tmp_path: Path, filled_state) -> None:
    drive, cfg, detections, _ = filled_state
    state = tmp_path / "state"
    args = ["replay", str(drive), "--config", str(cfg), "--state", str(state), "--detections", str(detections)]
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    first = subprocess.Popen([sys.executable, "-m", "vehicle.cli", *args, "--realtime"], env=env, cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (state / "state.sqlite").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert_one_error_line(patrol(*args), 1, str(state), f"in use by another patrol process (pid {first.pid})")
    finally:
        first.kill()
        first.wait(30)
    assert patrol(*args).returncode == 0  # the lock goes with the process that held it


def test_a_replay_stopped_by_sigterm_says_so_and_resumes(tmp_path: Path, filled_state) -> None:
    drive, cfg, detections, _ = filled_state
    state, out = tmp_path / "state", tmp_path / "events.jsonl"
    args = ["replay", str(drive), "--config", str(cfg), "--state", str(state), "--detections", str(detections),
            "--out", str(out)]
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "vehicle.cli", *args, "--realtime"], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (state / "state.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "INTERRUPTED by SIGTERM (resume with --state)" in err
    assert time.monotonic() - signalled < 3.0  # no stage thread left waiting on an empty queue
    assert patrol(*args).returncode == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == 13 and len(set(ids)) == 13  # the two runs together: every event once


def test_a_stretch_without_detections_still_moves_the_resume_point(tmp_path: Path, filled_state) -> None:
    drive, cfg, detections, _ = filled_state
    lines = detections.read_text().splitlines()
    t0 = json.loads(lines[1])["time_utc"]
    empty = tmp_path / "empty.jsonl"  # every frame of the 10.5 s walk, nothing detected in any
    empty.write_text("\n".join([lines[0]] + [json.dumps({"frame": i, "time_utc": t0 + i * 1001 / 30000,
                                                          "size_wh": [848, 480], "detections": []})
                                              for i in range(315)]))
    state = tmp_path / "state"
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "vehicle.cli", "replay", str(drive), "--config", str(cfg),
                             "--state", str(state), "--detections", str(empty), "--realtime"], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (state / "state.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(8.0)  # paced: about 8 s of the drive done
    proc.kill()  # no clean stop: only what was committed counts
    proc.wait(30)
    conn = open_state_readonly(state / "state.sqlite")
    try:
        (mark,) = conn.execute("SELECT last_time_utc FROM pipeline_progress").fetchone()
    finally:
        conn.close()
    assert mark >= t0 + 5.0


def test_cached_detections_out_of_time_order_are_refused(tmp_path: Path, filled_state) -> None:
    drive, cfg, detections, _ = filled_state
    lines = detections.read_text().splitlines(keepends=True)
    backwards = tmp_path / "backwards.jsonl"
    backwards.write_text(lines[0] + "".join(reversed(lines[1:])))
    res = patrol("replay", str(drive), "--config", str(cfg), "--state", str(tmp_path / "state"),
                 "--detections", str(backwards))
    assert_one_error_line(res, 1, str(backwards), "does not come after frame")  # found when the file is read


def test_cached_detections_going_back_in_time_are_refused(tmp_path: Path, filled_state) -> None:
    """Without video the file's own times count: one that goes backwards would break resuming, so it stops."""
    drive, cfg, detections, _ = filled_state
    bare = without_video(drive, tmp_path / "bare-drive")
    lines = detections.read_text().splitlines()
    frames = [json.loads(line) for line in lines[1:]]
    frames[101]["time_utc"], frames[100]["time_utc"] = frames[100]["time_utc"], frames[101]["time_utc"]
    backwards = tmp_path / "backwards.jsonl"
    backwards.write_text("\n".join([lines[0]] + [json.dumps(f) for f in frames]) + "\n")
    res = patrol("replay", str(bare), "--config", str(cfg), "--state", str(tmp_path / "state"),
                 "--detections", str(backwards))
    assert_one_error_line(res, 1, str(backwards), "frame 101", "is older than the frame before it")


def test_cached_detections_of_another_camera_are_refused(tmp_path: Path, filled_state) -> None:
    drive, cfg, detections, _ = filled_state
    other = tmp_path / "other.jsonl"  # the same boxes, as if detected in another camera's 1280x720 frames
    other.write_text(detections.read_text().replace('"size_wh": [848, 480]', '"size_wh": [1280, 720]'))
    res = patrol("replay", str(drive), "--config", str(cfg), "--state", str(tmp_path / "state"),
                 "--detections", str(other))
    assert_one_error_line(res, 1, str(other), "detections are for 1280x720 frames, this drive's video is 848x480")


def test_missing_drive_folder_is_one_line(tmp_path: Path) -> None:
    assert_one_error_line(patrol("replay", str(tmp_path / "no-drive")), 1, "no-drive")


@pytest.mark.parametrize("args", [
    ("calibrate", "intrinsics", "--images", ".", "--board", "9x6", "--square-mm", "0", "--out", "x.toml"),
    ("calibrate", "intrinsics", "--images", ".", "--board", "9x6", "--square-mm", "nan", "--out", "x.toml"),
    ("calibrate", "intrinsics", "--images", ".", "--board", "9x6", "--square-mm", "-25", "--out", "x.toml"),
    ("calibrate", "mount", "--calibration", "c.toml", "--height-m", "inf", "--pitch-deg", "10"),
    ("eval", "events", "d", "--truth", "t.geojson", "--out", "o", "--match-radius-m", "-5"),
    ("eval", "events", "d", "--truth", "t.geojson", "--out", "o", "--near-m", "inf"),
    ("eval", "detections", "--images", ".", "--out", "o", "--conf", "nan"),
], ids=["square 0", "square nan", "square negative", "height inf", "radius negative", "near inf", "conf nan"])
def test_a_number_out_of_range_is_a_usage_error_naming_the_option(tmp_path: Path, args: tuple[str, ...]) -> None:
    res = subprocess.run([sys.executable, "-m", "vehicle.cli", *args], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)
    option = next(a for a, b in itertools.pairwise(args) if b in ("0", "nan", "-25", "inf", "-5"))
    assert res.returncode == 2, res.stderr
    assert f"argument {option}: invalid number in" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_eval_ab_needs_both_events_files_or_neither(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "vehicle.cli", "eval", "ab", str(tmp_path), "--truth", "t.geojson",
                          "--out", str(tmp_path / "o"), "--a-events", "a.jsonl"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == "patrol eval ab: error: --a-events and --b-events go together (give both or neither)"
    assert not (tmp_path / "o").exists()
    res = subprocess.run([sys.executable, "-m", "vehicle.cli", "eval", "ab", str(tmp_path), "--truth", "t.geojson",
                          "--out", str(tmp_path / "o"), "--a-events", "a.jsonl", "--b-events", "b.jsonl",
                          "--a-config", "new.toml"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--a-events is scored as it is: drop --a-config" in res.stderr
    assert not (tmp_path / "o").exists()


def test_check_config_accepts_a_client_certificate_only_with_its_own_key(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed (scripts/setup.sh installs it)")
    if not (REPO_ROOT / "models" / "patrol-detector.onnx").is_file():
        pytest.skip("the shipped model is missing")
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        f"/CN=car-{name}", "-keyout", str(tmp_path / f"{name}.key"),
                        "-out", str(tmp_path / f"{name}.crt")],
                       check=True, capture_output=True, timeout=60)
    cfg = tmp_path / "patrol.toml"
    base = f'data_dir = "{tmp_path / "data"}"\n[camera]\nsource = "/dev/video0"\n[mqtt.tls]\nenabled = true\n'
    cfg.write_text(base + 'cert_file = "a.crt"\nkey_file = "a.key"\n')
    ok = patrol("check-config", str(cfg))
    assert ok.returncode == 0, ok.stderr
    cfg.write_text(base + 'cert_file = "a.crt"\nkey_file = "b.key"\n')  # another car's key
    assert_one_error_line(patrol("check-config", str(cfg)), 2, "mqtt.tls.cert_file: a.crt with key b.key")


def test_a_drive_of_detections_alone_replays_at_its_pace_and_stops_promptly(tmp_path: Path, filled_state) -> None:
    """--realtime paces cached detections when the drive has no video (a 10.5 s walk takes about 10 s), and a
    SIGTERM ends it within a fraction of a second, not after a thread's join timeout."""
    drive, cfg, detections, _ = filled_state
    bare = without_video(drive, tmp_path / "bare-drive")
    state = tmp_path / "state"
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "vehicle.cli", "replay", str(bare), "--config", str(cfg),
                             "--state", str(state), "--detections", str(detections), "--realtime"], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (state / "state.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3.0)  # unpaced, the 315 cached frames would be done long before this
    assert proc.poll() is None, "the replay ended early: --realtime did not pace the cached detections"
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - signalled
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert took < 3.0, f"SIGTERM took {took:.1f} s"  # systemd's stop: the old shutdown waited out a 5 s join


def test_check_config_checks_a_replay_config_without_camera_or_gps() -> None:
    if not (REPO_ROOT / "models" / "patrol-detector.onnx").is_file():
        pytest.skip("the shipped model is missing")
    converted_coco_model()  # the sample's object detector (made by the demo, or here when run alone)
    sample = REPO_ROOT / "scripts" / "sample" / "gopro-walk.toml"  # the demo's: no camera, the drive's GPS
    assert_one_error_line(patrol("check-config", str(sample)), 2, "camera.source: required", "--replay")
    ok = patrol("check-config", "--replay", str(sample))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"config": str(sample), "vehicle_id": "demo-walk", "ok": True, "for": "replay"}
