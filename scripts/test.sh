#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --train   # the training, export and .pt-backend tests need ultralytics
export YOLO_OFFLINE=1
.venv/bin/ruff check vehicle scripts tests
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
