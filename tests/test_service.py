"""systemd integration: sd_notify on a real unix datagram socket, a real ``patrol run`` notifying READY and
WATCHDOG, the unit file checked by ``systemd-analyze verify`` and the install script by ``shellcheck``."""

from __future__ import annotations

import configparser
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import shared_path
from tests.onnx_fixtures import constant_yolo_model, yolo_rows
from vehicle.service import SystemdNotifier

REPO_ROOT = Path(__file__).resolve().parent.parent
UNIT = REPO_ROOT / "scripts" / "patrol.service"
INSTALL = REPO_ROOT / "scripts" / "install.sh"


class NotifySocket:
    """What systemd listens on: a unix datagram socket; collects the messages sent to it."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)

    def drain(self, seconds: float = 0.3) -> list[str]:
        out: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                out.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path):
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def test_notifier_sends_ready_watchdog_status_and_stopping(notify_socket: NotifySocket, monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    n = SystemdNotifier()
    assert n.enabled and n.watchdog_interval_s == 15.0  # pet at half of WatchdogSec
    n.ready("vehicle car-1: running")
    n.watchdog()
    n.watchdog()  # rate-limited: the second one within a second is not sent
    n.status("frames=10 events=1 outbox=2")
    n.stopping()
    assert notify_socket.drain() == ["READY=1\nSTATUS=vehicle car-1: running", "WATCHDOG=1",
                                     "STATUS=frames=10 events=1 outbox=2", "STOPPING=1"]


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"patrol-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        SystemdNotifier("@" + name).ready()
        assert sock.recv(100) == b"READY=1"


def test_notifier_without_systemd_does_nothing(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SystemdNotifier()
    assert not n.enabled
    n.ready()
    n.watchdog()  # no socket, no error


def test_notifier_survives_systemd_going_away(tmp_path: Path) -> None:
    n = SystemdNotifier(str(tmp_path / "gone.sock"))  # nobody listens there
    n.ready()
    n.status("still running")


def test_patrol_run_notifies_ready_then_watchdog_from_the_frame_loop(tmp_path: Path,
                                                                      notify_socket: NotifySocket) -> None:
    video = shared_path("drives", "gopro-max-walk", "video.mp4")
    nmea = shared_path("drives", "gopro-max-walk", "gps.nmea")
    model = constant_yolo_model(tmp_path / "m.onnx", yolo_rows([(320, 440, 60, 40)], [[0.0, 0.9]]))
    cfg = tmp_path / "patrol.toml"
    cfg.write_text(
        f'vehicle_id = "car-svc"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[camera]\nsource = "{video}"\ncalibration_file = "{REPO_ROOT / "calibration" / "gopro-max-walk.toml"}"\n'
        f'[gps]\nsource = "{nmea}"\n[detector]\nmodel_file = "{model}"\n'
        "[mqtt]\nenabled = false\nstatus_interval_s = 0.5\n"
    )
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="1000000", YOLO_OFFLINE="1",
               PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "vehicle.cli", "run", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    messages: list[tuple[float, str]] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            got = notify_socket.drain(0.2)
            messages += [(time.monotonic(), m) for m in got]
            if proc.poll() is not None and not got:
                break
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    # The video file ends, the run ends cleanly.
    assert proc.returncode == 0, err
    kinds = [m.split("=", 1)[0] for _, m in messages]
    assert kinds[0] == "READY", messages[:3]
    assert kinds[-1] == "STOPPING"
    pets = [t for t, m in messages if m == "WATCHDOG=1"]
    assert len(pets) >= 3  # the 10 s video takes several seconds: petted throughout
    assert max(b - a for a, b in itertools.pairwise(pets)) < 2.0  # well within WatchdogSec
    statuses = [m for _, m in messages if m.startswith("STATUS=frames=")]
    assert statuses, messages
    frames = [int(s.split("frames=")[1].split()[0]) for s in statuses]
    assert frames == sorted(frames) and frames[-1] > 0
    assert "run: frames=315" in err


# -- the unit file ----------------------------------------------------------------------------------------------

def unit_sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


def test_unit_is_a_watched_sandboxed_notify_service() -> None:
    u = unit_sections()
    s = u["Service"]
    assert s["Type"] == "notify" and s["Restart"] == "on-failure"
    assert int(s["WatchdogSec"]) > 0 and s["User"] == "patrol"
    assert s["ExecStart"].endswith("patrol run --config /etc/patrol/patrol.toml")
    assert s["ProtectSystem"] == "strict" and "/var/lib/patrol" in s["ReadWritePaths"].split()
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectHome"):
        assert s[key] == "yes", key
    assert s["RestartPreventExitStatus"] == "2"  # an invalid config stops it instead of looping
    assert s["DevicePolicy"] == "closed" and "char-video4linux rw" in unit_values("DeviceAllow")


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian/Ubuntu package 'systemd')")
    # verify also checks that ExecStart's binary exists: point it at this checkout's patrol instead of /opt.
    patrol_bin = Path(sys.executable).parent / "patrol"
    if not patrol_bin.exists():
        pytest.skip(f"{patrol_bin} missing (pip install -e . creates it)")
    unit = tmp_path / "patrol.service"
    unit.write_text(UNIT.read_text().replace("/opt/patrol/venv/bin/patrol", str(patrol_bin)))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even on unknown keys or bad values: any message at all is a finding.
    assert res.returncode == 0 and res.stderr.strip() == "" and res.stdout.strip() == "", res.stderr


def test_verify_would_catch_a_misspelt_key(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian/Ubuntu package 'systemd')")
    unit = tmp_path / "patrol.service"
    unit.write_text(UNIT.read_text().replace("/opt/patrol/venv/bin/patrol", str(Path(sys.executable)))
                    .replace("WatchdogSec=", "WatchdogSecs="))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "WatchdogSecs" in res.stderr


# -- the install script -----------------------------------------------------------------------------------------

def test_install_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (Debian/Ubuntu package 'shellcheck')")
    scripts = [INSTALL, *(p for p in [REPO_ROOT / "scripts" / "uninstall.sh"] if p.exists())]
    res = subprocess.run([shellcheck, "--severity=style", *map(str, scripts)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout


def test_install_script_dry_run_lists_every_step(tmp_path: Path) -> None:
    # --dry-run prints the commands instead of running them: the one part of a Jetson install that runs here.
    res = subprocess.run(["bash", str(INSTALL), "--dry-run"], capture_output=True, text=True, timeout=60,
                         cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for step in ("useradd", "/opt/patrol/venv", "/etc/patrol/patrol.toml", "/var/lib/patrol",
                 "/etc/systemd/system/patrol.service", "systemctl daemon-reload", "check-config"):
        assert step in out, step
