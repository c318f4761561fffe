#!/usr/bin/env bash
# Set up, build the sample drives from ../shared, and replay the real GoPro street walk through the whole
# onboard pipeline (13-category model + the general-object model with the parking rule), printing each event
# as one JSON line on stdout (set-up and progress go to stderr, so `demo.sh > events.jsonl` keeps only events).
# No broker is needed: events also land in the replay's outbox (see the last line).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
export YOLO_OFFLINE=1
if [ ! -d ../shared ]; then
  echo "demo.sh: ../shared (the project's real data) must sit beside the repository" >&2
  exit 1
fi
.venv/bin/python scripts/make_sample_drives.py >&2
if [ ! -f models/external/yolo-fastest-1.1-xl.onnx ]; then
  .venv/bin/python scripts/convert_darknet.py >&2   # public-domain COCO model from ../shared, converted locally
fi
.venv/bin/patrol replay var/drives/gopro-max-walk --config scripts/sample/gopro-walk.toml --no-mqtt --out -
