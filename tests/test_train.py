"""scripts/train.py: trains offline (no connection leaves the machine), resumes an interrupted run, and fails
clearly on missing files. Tiny real runs: 16 real training images at 64 px, a few epochs."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, shared_path
from vehicle.categories import Taxonomy

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("build_dataset", REPO_ROOT / "scripts" / "build_dataset.py")
build_dataset = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("build_dataset", build_dataset)
_spec.loader.exec_module(build_dataset)

# Loaded into every child through PYTHONPATH: any connection (or name lookup) to a host that is not this
# machine is refused and written down, so the test sees what ultralytics would have fetched.
NO_NETWORK = '''
import os, socket
_log = os.environ["NETWORK_ATTEMPTS_FILE"]
def _local(host):
    return str(host) in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "") or str(host).startswith("/")
def _refuse(what):
    with open(_log, "a") as fh:
        fh.write(what + "\\n")
    raise OSError("network disabled by the test: " + what)
_connect = socket.socket.connect
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if not _local(host):
        _refuse(f"connect {address!r}")
    return _connect(self, address)
socket.socket.connect = connect
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *a, **k):
    if not _local(host):
        _refuse(f"getaddrinfo {host!r}")
    return _getaddrinfo(host, *a, **k)
socket.getaddrinfo = getaddrinfo
'''


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 training and 4 validation images of both real sources, in the 13-category layout."""
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics not installed (pip install -e '.[train]')")
    shared_path("imagery", "garbage-cn")
    shared_path("imagery", "road-br")
    items = build_dataset.collect_all(build_dataset.load_sources(), build_dataset.shared_root(), Taxonomy.load())
    chosen = []
    for source in ("garbage-cn", "road-br"):
        for split, n in (("train", 8), ("val", 2)):
            chosen += [it for it in items if it.source == source and it.split == split and it.class_ids][:n]
    return build_dataset.write_dataset(chosen, tmp_path_factory.mktemp("tiny") / "data", Taxonomy.load())


def _env(tmp: Path) -> dict[str, str]:
    guard = tmp / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    return dict(os.environ, PYTHONPATH=f"{guard}{os.pathsep}{REPO_ROOT}", NETWORK_ATTEMPTS_FILE=str(tmp / "net.log"),
                YOLO_CONFIG_DIR=str(tmp / "ultralytics-settings"), PYTHONUNBUFFERED="1")


def _train_cmd(data: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "--profile", "cpu", "--data", str(data),
            "--runs-dir", str(runs), "--name", "tiny", "--imgsz", "64", "--batch", "4", *extra]


def _epochs_done(run: Path) -> int:
    results = run / "results.csv"
    return max(0, len(results.read_text().splitlines()) - 1) if results.is_file() else 0


def test_trains_from_the_model_yaml_without_touching_the_network(tiny_dataset: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    proc = subprocess.run(_train_cmd(tiny_dataset, tmp_path / "runs", "--fresh", "--epochs", "2"), env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    net_log = tmp_path / "net.log"
    assert not net_log.exists(), f"training reached for the network: {net_log.read_text()}"
    run = tmp_path / "runs" / "tiny"
    assert _epochs_done(run) == 2
    assert (run / "weights" / "last.pt").is_file()
    assert "patrol-fastest.yaml" in proc.stdout  # started from the yaml (backbone from ../shared), no download


def _saved_epoch(weights: Path) -> int:
    """Epochs completed in the run's checkpoint (ultralytics stores the 0-based index of the last one); when the
    kill landed while ``last.pt`` was being written, that of its safe copy, which the resume then uses."""
    import torch

    try:
        ckpt = torch.load(weights / "last.pt", map_location="cpu", weights_only=False)
    except RuntimeError:  # truncated zip
        ckpt = torch.load(weights / "last.safe.pt", map_location="cpu", weights_only=False)
    return int(ckpt["epoch"]) + 1


def _kill_when(cmd: list[str], env: dict[str, str], ready: Callable[[], bool]) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` (the machine goes away)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_an_interrupted_run_resumes_where_it_stopped(tiny_dataset: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    runs = tmp_path / "runs"
    run = runs / "tiny"
    _kill_when(_train_cmd(tiny_dataset, runs, "--fresh", "--epochs", "4"), env, lambda: _epochs_done(run) >= 2)
    rows_before = _epochs_done(run)
    saved = _saved_epoch(run / "weights")
    assert 1 <= saved <= rows_before < 4  # the kill may land between an epoch's results row and its checkpoint
    # the same command again (without --fresh): it must resume, not start over
    again = subprocess.run(_train_cmd(tiny_dataset, runs, "--epochs", "4"), env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the interrupted run" in again.stdout
    epochs = [int(line.split(",")[0]) for line in (run / "results.csv").read_text().splitlines()[1:]]
    # rows written before the kill, then every epoch after the checkpoint, once each, up to the last
    assert epochs == list(range(1, rows_before + 1)) + list(range(saved + 1, 5))
    assert not (tmp_path / "net.log").exists()


def test_a_checkpoint_damaged_mid_write_resumes_from_its_safe_copy(tiny_dataset: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    runs = tmp_path / "runs"
    run = runs / "tiny"
    last, safe = run / "weights" / "last.pt", run / "weights" / "last.safe.pt"
    _kill_when(_train_cmd(tiny_dataset, runs, "--fresh", "--epochs", "3"), env, safe.is_file)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # what a kill during the write leaves
    again = subprocess.run(_train_cmd(tiny_dataset, runs, "--epochs", "3"), env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{last} is damaged" in again.stdout
    assert "resuming the interrupted run" in again.stdout
    epochs = [int(line.split(",")[0]) for line in (run / "results.csv").read_text().splitlines()[1:]]
    assert epochs[-1] == 3 and sorted(set(epochs)) == [1, 2, 3]


def test_missing_files_are_one_clear_line(tmp_path: Path) -> None:
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics not installed (pip install -e '.[train]')")
    env = _env(tmp_path)
    cases = [
        (["--data", str(tmp_path / "none.yaml")], f"train: {tmp_path / 'none.yaml'}: dataset yaml not found"),
        (["--init", str(tmp_path / "w.pt")], f"train: {tmp_path / 'w.pt'}: --init weights not found"),
        (["--model", "yolo11n.pt"], "train: yolo11n.pt: --model takes a model yaml; start from weights with --init"),
    ]
    for args, message in cases:
        proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "--runs-dir",
                               str(tmp_path / "runs"), *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [message]
