#!/usr/bin/env bash
# Set up a development / replay machine: system packages (Mosquitto, gpsd) and a Python venv in .venv.
#
#   bash scripts/setup.sh            # runtime + test tools
#   bash scripts/setup.sh --train    # also ultralytics + torch (large; for training and export only)
#
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_train=0
for arg in "$@"; do
  case "$arg" in
    --train) want_train=1 ;;
    --dev) ;;  # accepted for clarity: the test tools are always installed
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

# System packages the tests and the demo use: a real MQTT broker, a real gpsd + gpsfake.
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v gpsd >/dev/null 2>&1 || [ -x /usr/sbin/gpsd ] || need+=(gpsd)
command -v gpsfake >/dev/null 2>&1 || need+=(gpsd-clients)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup.sh: installing system packages: ${need[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  # dpkg's per-file chatter goes to a log, shown only when the install fails
  apt_log=$(mktemp -t patrol-apt.XXXXXX)
  if ! { "${sudo_cmd[@]}" apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
           "${need[@]}"; } >"$apt_log" 2>&1; then
    tail -n 40 "$apt_log" >&2
    echo "setup.sh: apt-get install ${need[*]} failed (whole log: $apt_log)" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi
# The Debian packages start their own daemons on a fresh machine; the tests start private ones on free ports.

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# pip's own chatter (build-backend notices) goes to a log, shown only when an install fails
pip_log=.venv/pip-install.log
pip_quiet() {
  if ! .venv/bin/python -m pip install -q "$@" >"$pip_log" 2>&1; then
    tail -n 40 "$pip_log" >&2
    echo "setup.sh: pip install $* failed (whole log: $pip_log)" >&2
    exit 1
  fi
}
pip_quiet --upgrade pip
extras="dev,centre"
[ "$want_train" -eq 1 ] && extras="$extras,train"
pip_quiet -e ".[${extras}]"
.venv/bin/python -c "import cv2, onnxruntime, paho.mqtt, numpy; print('setup.sh: ok: opencv', cv2.__version__, \
'onnxruntime', onnxruntime.__version__)"
