#!/usr/bin/env bash
# GPU training profile for a leased machine (the `device` tool: one H200, Python 3.12 + torch, no ultralytics,
# no network, only the repo travels; ../shared does not).
#
# 1. Here, once:   scripts/train_gpu.sh prepare
#      - downloads the wheels ultralytics needs into .whl/ (git-ignored via .git/info/exclude)
#      - writes a self-contained copy of the dataset (JPEGs shrunk to 512 px, quality 50: ~45 MiB) into
#        .gpu/patrol13, and checks that what travels stays under the device tool's 64 MiB per call. That limit
#        is why the leased run trains at 512 px, not the gpu profile's 640 (640 px copies are 75-105 MiB)
#      - polars (54 MB wheel) does not fit either: ultralytics only uses it to read results.csv back into the
#        checkpoint (inside a try) and for plots (off), so a stub module that raises stands in for it
# 2. Device call:  run(command="bash scripts/train_gpu.sh run 0.15", carry=[".whl", ".gpu"], timeout_s=600)
#      - installs the wheels into /tmp/site, trains `scripts/train.py --profile gpu` for the given hours
#        (default 0.15 h = 9 min, inside one 10-minute call) and copies last.pt, results.csv and the log to $OUT
# 3. Here: .venv/bin/python scripts/export.py --weights <files_at>/last.pt ; .venv/bin/python scripts/model_card.py
#          --run <folder with results.csv and command.txt>
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    py=.venv/bin/python
    ver() { $py -c "import importlib.metadata as m; print(m.version('$1'))"; }
    rm -rf .whl && mkdir -p .whl
    # what the device image lacks (its package list: .library/device/KINDS.md); --no-deps: name each one
    for pkg in ultralytics ultralytics-thop ultralytics-platform; do
        $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$pkg==$(ver "$pkg")"
    done
    $py scripts/build_dataset.py --out .gpu/patrol13 --copy-jpeg-quality 50 --copy-max-side 512 --sample 0
    # the pretrained backbone's Darknet files (3.7 MB; models/patrol-fastest.yaml reads them via PATROL_SHARED)
    darknet=.gpu/shared/models/yolo-fastest-1.1-coco
    mkdir -p "$darknet"
    cp "${PATROL_SHARED:-../shared}"/models/yolo-fastest-1.1-coco/yolo-fastest-1.1-xl.{cfg,weights} "$darknet/"
    # what travels: the repo's tracked and untracked-not-ignored files plus the two carried folders
    tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    total=$(( tree + $(du -sbc .whl .gpu | tail -1 | cut -f1) ))
    echo "travels: $((total / 1048576)) MiB (repo $((tree / 1048576)) MiB + .whl + .gpu)"
    if [ "$total" -gt $((62 * 1024 * 1024)) ]; then
        echo "too big to carry: $((total / 1048576)) MiB (limit 64 MiB): lower --copy-jpeg-quality" >&2
        exit 1
    fi
    ;;
run)
    hours=${2:-0.15}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl
    mkdir -p /tmp/site/polars
    echo 'def read_csv(*a, **k): raise RuntimeError("polars not carried (see scripts/train_gpu.sh)")' \
        > /tmp/site/polars/__init__.py
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false PATROL_SHARED=$PWD/.gpu/shared
    # the dataset was written with this machine's absolute path: point it at the copy that travelled
    sed -i "s#^path: .*#path: $PWD/.gpu/patrol13#" .gpu/patrol13/data.yaml
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    set +e
    python3 scripts/train.py --profile gpu --imgsz 512 --data .gpu/patrol13/data.yaml --time-h "$hours" 2>&1 \
        | tee "${OUT:-/tmp}/train.log"
    rc=${PIPESTATUS[0]}
    set -e
    run=runs/patrol13-gpu
    for f in "$run/weights/last.pt" "$run/weights/best.pt" "$run/results.csv" "$run/args.yaml" \
             "$run/command.txt"; do
        [ -f "$f" ] && cp "$f" "${OUT:-/tmp}/" || echo "missing $f"
    done
    exit "$rc"
    ;;
*)
    echo "usage: scripts/train_gpu.sh prepare | run [hours]" >&2
    exit 2
    ;;
esac
