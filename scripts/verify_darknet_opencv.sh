#!/usr/bin/env bash
# Check scripts/convert_darknet.py against OpenCV 4.x's own Darknet reader on real frames.
#
# OpenCV 5 (the project venv) dropped cv2.dnn.readNetFromDarknet, so this makes a throwaway venv with
# opencv-python-headless<5 (default /tmp/cv4-venv; reused if present), then for each Yolo-Fastest model:
#   - raw YOLO-layer inputs (the last conv of each head): max abs diff, ours vs OpenCV, both with
#     Darknet's batch-norm eps 1e-5 (what we ship) and with OpenCV's 1e-6 (isolates the graph itself);
#   - decoded boxes (px) and scores where OpenCV keeps a score (it zeroes those under 0.2);
#   - final boxes after score >= 0.25 and class-wise NMS 0.45: counts, matched-box IoU;
#   - ms/frame of onnxruntime and of OpenCV on this machine;
# and finally runs tests/test_convert_darknet.py there, so its OpenCV comparison test runs too.
#
# Usage (repo root): scripts/verify_darknet_opencv.sh [N_FRAMES]      env: CV4_VENV, PATROL_SHARED
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CV4_VENV:-/tmp/cv4-venv}"
SHARED="${PATROL_SHARED:-../shared}"
FRAMES="${1:-8}"
for f in "$SHARED/models/yolo-fastest-1.1-coco/yolo-fastest-1.1-xl.weights" "$SHARED/drives/gopro-max-walk/video.mp4"; do
    [[ -f "$f" ]] || { echo "verify_darknet_opencv: missing $f (shared data beside the repo)" >&2; exit 1; }
done
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import cv2, onnx, onnxruntime, pytest; cv2.dnn.readNetFromDarknet" 2>/dev/null; then
    echo "creating $VENV with OpenCV 4.x ..."
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'opencv-python-headless<5' numpy onnxruntime onnx pytest
fi

PATROL_SHARED="$SHARED" FRAMES="$FRAMES" "$VENV/bin/python" - <<'EOF'
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

sys.path.insert(0, "scripts")
import convert_darknet as cd  # noqa: E402

shared = Path(os.environ["PATROL_SHARED"])
model_dir = shared / "models" / "yolo-fastest-1.1-coco"
n_frames = int(os.environ["FRAMES"])
SCORE, NMS_IOU = 0.25, 0.45
print(f"OpenCV {cv2.__version__}, onnxruntime {ort.__version__}, {n_frames} frames of gopro-max-walk")

cap = cv2.VideoCapture(str(shared / "drives" / "gopro-max-walk" / "video.mp4"))
total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
frames = []
for i in np.linspace(0, total - 1, n_frames).astype(int):
    cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
    ok, bgr = cap.read()
    assert ok, f"frame {i}"
    frames.append(bgr)


def detections(cols: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
    """(N, 4 + C) cx, cy, w, h px + scores -> [(class, score, xyxy)] after class-wise NMS."""
    cls, score = cols[:, 4:].argmax(1), cols[:, 4:].max(1)
    out = []
    for c in np.unique(cls[score >= SCORE]):
        idx = np.flatnonzero((cls == c) & (score >= SCORE))
        xywh = [[cx - w / 2, cy - h / 2, w, h] for cx, cy, w, h in cols[idx, :4]]
        for k in np.array(cv2.dnn.NMSBoxes(xywh, score[idx].tolist(), SCORE, NMS_IOU)).ravel():
            x, y, w, h = xywh[k]
            out.append((int(c), float(score[idx[k]]), np.array([x, y, x + w, y + h])))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


ok_all = True
for stem in ("yolo-fastest-1.1-xl", "yolo-fastest-1.1"):
    cfg, weights = model_dir / f"{stem}.cfg", model_dir / f"{stem}.weights"
    names = cd.read_names(model_dir / "coco.names")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    yolo_layers = list(net.getUnconnectedOutLayersNames())
    layer_names = list(net.getLayerNames())
    head_layers = [layer_names[layer_names.index(n.replace("yolo", "permute")) - 1] for n in yolo_layers]
    sessions = {}
    for eps in (cd.BN_EPS, 1e-6):
        model = cd.build_model(cfg, weights, names, expose_heads=True, bn_eps=eps)
        sessions[eps] = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    net_cfg = cd.parse_cfg(cfg)[0]
    h, w = net_cfg.get_int("height"), net_cfg.get_int("width")
    head_diff = {eps: 0.0 for eps in sessions}
    box_diff = score_diff = 0.0
    n_cv = n_ours = 0
    ious, final_score_diff, ort_ms, cv_ms = [], [], [], []
    cars = 0
    for bgr in frames:
        x = cv2.dnn.blobFromImage(bgr, 1 / 255.0, (w, h), swapRB=True, crop=False)  # stretch, as Darknet
        net.setInput(x)
        t0 = time.perf_counter()
        cv_out = net.forward(yolo_layers + head_layers)
        cv_ms.append((time.perf_counter() - t0) * 1e3)
        for eps, sess in sessions.items():
            t0 = time.perf_counter()
            ours = sess.run(None, {"images": x})
            if eps == cd.BN_EPS:
                ort_ms.append((time.perf_counter() - t0) * 1e3)
                shipped = ours
            for a, b in zip(ours[1:], cv_out[len(yolo_layers):]):
                head_diff[eps] = max(head_diff[eps], float(np.abs(a - b).max()))
        cols = shipped[0][0].T  # (N, 4 + C), rows ordered like OpenCV's
        cv_cols = np.concatenate([np.c_[o[:, :4] * [w, h, w, h], o[:, 5:]] for o in cv_out[: len(yolo_layers)]])
        kept = cv_cols[:, 4:] > 0  # OpenCV zeroes class scores under 0.2
        box_diff = max(box_diff, float(np.abs(cols[:, :4] - cv_cols[:, :4])[kept.any(1)].max(initial=0)))
        score_diff = max(score_diff, float(np.abs(cols[:, 4:] - cv_cols[:, 4:])[kept].max(initial=0)))
        d_ours, d_cv = detections(cols), detections(cv_cols)
        n_ours, n_cv = n_ours + len(d_ours), n_cv + len(d_cv)
        cars += sum(c == 2 for c, _, _ in d_ours)
        for c, s, box in d_cv:
            same = [(iou(box, b2), s2) for c2, s2, b2 in d_ours if c2 == c]
            if same:
                best = max(same)
                ious.append(best[0])
                final_score_diff.append(abs(best[1] - s))
    print(f"\n{stem} ({w}x{h}, {len(cols)} boxes/frame):")
    print(f"  raw YOLO-layer inputs, max |ours - OpenCV|: {head_diff[cd.BN_EPS]:.2e} with Darknet's BN eps 1e-5 "
          f"(shipped), {head_diff[1e-6]:.2e} with OpenCV's 1e-6")
    print(f"  decoded: box max |diff| {box_diff:.3f} px, score max |diff| {score_diff:.4f} (where OpenCV scores >= 0.2)")
    print(f"  final boxes (score >= {SCORE}, NMS {NMS_IOU}): OpenCV {n_cv}, ours {n_ours}, matched {len(ious)}, "
          f"IoU mean {np.mean(ious) if ious else float('nan'):.4f} min {min(ious, default=float('nan')):.4f}, "
          f"score diff max {max(final_score_diff, default=0):.4f}; cars (ours) {cars}")
    print(f"  ms/frame (median, this machine): onnxruntime {statistics.median(ort_ms[1:] or ort_ms):.1f}, "
          f"OpenCV {statistics.median(cv_ms[1:] or cv_ms):.1f}")
    good = head_diff[1e-6] < 1e-3 and head_diff[cd.BN_EPS] < 0.1 and box_diff < 0.5 and score_diff < 0.01
    good = good and len(ious) == n_cv and abs(n_ours - n_cv) <= max(1, n_cv // 20) and min(ious, default=1) > 0.95
    print(f"  {'OK' if good else 'MISMATCH'}")
    ok_all &= good
sys.exit(0 if ok_all else 1)
EOF

echo
echo "tests/test_convert_darknet.py under OpenCV 4.x:"
PATROL_SHARED="$SHARED" "$VENV/bin/python" -m pytest tests/test_convert_darknet.py -q -p no:cacheprovider
