#!/usr/bin/env bash
# Install the patrol car's onboard service on an NVIDIA Jetson (JetPack 5 or 6, Ubuntu 20.04 / 22.04).
#
#   sudo scripts/install.sh [--onnxruntime-wheel FILE_OR_URL] [--start]
#   scripts/install.sh --dry-run          # print every step instead of running it
#
# What it does (again safe to run for an upgrade: the config in /etc/patrol is never overwritten):
#   1. apt packages: python3-venv, gpsd (the GNSS receiver), v4l-utils (camera checks)
#   2. a system user 'patrol' (no login, no home) in the 'video' (camera) and 'render' (GPU) groups
#   3. this checkout's code, models and calibrations -> /opt/patrol/app
#   4. a virtual environment /opt/patrol/venv with the package installed editable (models/ and calibration/
#      are then found beside it). ONNX Runtime: PyPI's aarch64 wheel is CPU-only; for the GPU (CUDA and
#      TensorRT execution providers) pass the onnxruntime-gpu wheel matching your JetPack with
#      --onnxruntime-wheel (NVIDIA's Jetson builds: https://elinux.org/Jetson_Zoo#ONNX_Runtime, or
#      pypi.jetson-ai-lab.dev). The venv sees the system site-packages, where JetPack puts TensorRT.
#   5. /etc/patrol/patrol.toml from scripts/patrol.toml (every key with its default and a comment)
#   6. /var/lib/patrol (outbox, dedup index, photos, TensorRT engine cache), owned by patrol
#   7. the systemd unit /etc/systemd/system/patrol.service, enabled; `patrol check-config` runs first
#
# After installing: set vehicle_id, [mqtt] host/port/username/password_file and [mqtt.tls] in
# /etc/patrol/patrol.toml, then:  sudo systemctl start patrol && journalctl -u patrol -f
set -euo pipefail

PREFIX=/opt/patrol
APP_DIR="$PREFIX/app"
VENV="$PREFIX/venv"
CONF_DIR=/etc/patrol
CONF_FILE="$CONF_DIR/patrol.toml"
DATA_DIR=/var/lib/patrol
UNIT_FILE=/etc/systemd/system/patrol.service
SERVICE_USER=patrol
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

DRY_RUN=0
START=0
ORT_WHEEL=""

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --start) START=1 ;;
        --onnxruntime-wheel)
            [ $# -ge 2 ] || { echo "install.sh: --onnxruntime-wheel needs a file or URL" >&2; exit 2; }
            ORT_WHEEL="$2"
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# Run a command, or only print it with --dry-run.
run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

say() {
    printf '==> %s\n' "$*"
}

if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo), or with --dry-run to see the steps" >&2
    exit 1
fi
if [ ! -f /etc/nv_tegra_release ]; then
    say "note: /etc/nv_tegra_release not found: this does not look like a Jetson (installing anyway)"
fi
for f in pyproject.toml scripts/patrol.toml scripts/patrol.service models/categories.yaml; do
    [ -f "$SRC_DIR/$f" ] || { echo "install.sh: $SRC_DIR/$f missing: run from a patrol checkout" >&2; exit 1; }
done

say "1/7 system packages"
run apt-get update
run apt-get install -y --no-install-recommends python3-venv python3-pip gpsd gpsd-clients v4l-utils

say "2/7 service user '$SERVICE_USER'"
groups="video"
if getent group render >/dev/null; then
    groups="$groups,render"
fi
if id "$SERVICE_USER" >/dev/null 2>&1; then
    run usermod --append --groups "$groups" "$SERVICE_USER"
else
    run useradd --system --user-group --groups "$groups" --home-dir "$DATA_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "patrol car service" "$SERVICE_USER"
fi

say "3/7 code, models and calibrations -> $APP_DIR"
run install -d -m 0755 "$PREFIX" "$APP_DIR"
for item in pyproject.toml vehicle models calibration scripts README.md LICENSE; do
    if [ -e "$SRC_DIR/$item" ]; then
        run cp -a "$SRC_DIR/$item" "$APP_DIR/"
    fi
done
run chown -R root:root "$APP_DIR"

say "4/7 virtual environment $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    run python3 -m venv --system-site-packages "$VENV"
fi
run "$VENV/bin/pip" install --upgrade pip
run "$VENV/bin/pip" install -e "$APP_DIR"
if [ -n "$ORT_WHEEL" ]; then
    # Replace PyPI's CPU-only onnxruntime by NVIDIA's GPU build (both provide the 'onnxruntime' module).
    run "$VENV/bin/pip" uninstall -y onnxruntime
    run "$VENV/bin/pip" install "$ORT_WHEEL"
else
    say "note: CPU-only ONNX Runtime installed; for the GPU rerun with --onnxruntime-wheel (see the header)"
fi

say "5/7 configuration $CONF_FILE"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
if [ -e "$CONF_FILE" ]; then
    say "keeping the existing $CONF_FILE (the new template is $APP_DIR/scripts/patrol.toml)"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$SRC_DIR/scripts/patrol.toml" "$CONF_FILE"
fi

say "6/7 data directory $DATA_DIR"
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA_DIR"

say "7/7 systemd unit $UNIT_FILE"
run install -m 0644 "$SRC_DIR/scripts/patrol.service" "$UNIT_FILE"
run systemctl daemon-reload
if command -v systemd-analyze >/dev/null; then
    run systemd-analyze verify "$UNIT_FILE"
fi
# Check the config as the service user, with the files it can read: a bad one never reaches systemd.
if run runuser -u "$SERVICE_USER" -- "$VENV/bin/patrol" check-config "$CONF_FILE"; then
    run systemctl enable patrol.service
    if [ "$START" -eq 1 ]; then
        run systemctl restart patrol.service
    fi
    say "installed. Edit $CONF_FILE (vehicle_id, [mqtt]), then: systemctl start patrol; journalctl -u patrol -f"
else
    say "installed but NOT enabled: fix $CONF_FILE (the line above names the key), then: systemctl enable --now patrol"
    exit 2
fi
