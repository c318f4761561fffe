"""`patrol calibrate`: camera intrinsics from chessboard photos, mounting, and a picture to check both.

Three sub-commands, each a plain function here plus a thin argparse wrapper (`add_calibrate_parser`):

* ``intrinsics``: OpenCV chessboard calibration; lists skipped images and why, RMS and per-image error.
* ``mount``: height/pitch/roll/yaw from measured values, or from >= 4 ground points whose car-frame
  positions are known (``cv2.solvePnP``), with the residual of each point.
* ``check``: a metre grid on the ground out to 30 m and the horizon, drawn onto a real frame.

The calibration file format is described in calibration/README.md; `vehicle.geometry` reads it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vehicle.arguments import number, one_line
from vehicle.geometry import (
    CAMERA_TO_BODY_FRD,
    CalibrationError,
    CameraCalibration,
    horizon_polyline,
    pixels_to_vehicle,
    vehicle_to_pixels,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
RMS_WARN_PX = 1.0
PLACEHOLDER_MOUNT_NOTE = "mount NOT measured yet: run `patrol calibrate mount`"


@dataclass(frozen=True)
class SkippedImage:
    """An image left out of the calibration and the reason, for the fitter to act on."""

    name: str
    reason: str


@dataclass(frozen=True)
class IntrinsicsResult:
    """Outcome of a chessboard calibration; `calibration` carries the mount it was given (or a placeholder)."""

    calibration: CameraCalibration
    rms_px: float
    per_image_rms_px: dict[str, float]
    skipped: tuple[SkippedImage, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class PointResidual:
    """How well one surveyed ground point fits the solved mount."""

    u_px: float
    v_px: float
    forward_m: float
    right_m: float
    error_px: float  # reprojection of the surveyed point against the clicked pixel
    error_m: float  # the clicked pixel cast onto the ground against the surveyed point


@dataclass(frozen=True)
class MountSolution:
    """A mount solved from ground points, with the residual of each point."""

    calibration: CameraCalibration
    residuals: tuple[PointResidual, ...]
    rms_px: float


def parse_board(text: str) -> tuple[int, int]:
    """Parse "COLSxROWS" inner corners (e.g. "9x6")."""
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CalibrationError(f"--board: expected COLSxROWS inner corners like 9x6, got {text!r}") from None
    if cols < 2 or rows < 2:
        raise CalibrationError(f"--board: need at least 2x2 inner corners, got {text!r}")
    return cols, rows


def calibrate_intrinsics(images_dir: str | Path, board_cols: int, board_rows: int, square_mm: float,
                         mount_from: CameraCalibration | None = None,
                         detect_width_px: int = 1920) -> IntrinsicsResult:
    """Calibrate focal length, principal point and distortion from chessboard photos.

    Images whose size differs from the most common size are skipped (the intrinsics belong to one image
    size). Detection runs on a copy scaled to at most `detect_width_px` wide (larger frames only: at 800 px
    wide the detector misplaced corners of a small board by 15 px); corners are then refined, and all errors
    reported, at full resolution.

    Args:
        images_dir: folder of board photos (jpg/png/...).
        board_cols: inner corners along a row.
        board_rows: inner corners along a column.
        square_mm: side of a square (affects only the board poses, not the intrinsics).
        mount_from: keep this calibration's mount; None writes a placeholder mount and says so in notes.
        detect_width_px: widest image the corner detector sees.

    Raises:
        CalibrationError: folder missing or fewer than 3 usable images.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: --images: not a folder")
    paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    skipped: list[SkippedImage] = []
    grays: dict[str, np.ndarray] = {}
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            skipped.append(SkippedImage(p.name, "unreadable image"))
        else:
            grays[p.name] = img
    if not grays:
        raise CalibrationError(f"{folder}: --images: no readable images ({', '.join(IMAGE_SUFFIXES)})")
    sizes = Counter((g.shape[1], g.shape[0]) for g in grays.values())
    size_wh = sizes.most_common(1)[0][0]
    board = (board_cols, board_rows)
    object_grid = np.zeros((board_cols * board_rows, 3), np.float32)
    object_grid[:, :2] = np.mgrid[0:board_cols, 0:board_rows].T.reshape(-1, 2) * (square_mm / 1000.0)
    names, image_points = [], []
    for name, gray in grays.items():
        wh = (gray.shape[1], gray.shape[0])
        if wh != size_wh:
            skipped.append(SkippedImage(name, f"size {wh[0]}x{wh[1]} differs from {size_wh[0]}x{size_wh[1]} "
                                              "of the other images (intrinsics belong to one size)"))
            continue
        corners, reason = _find_board(gray, board, detect_width_px)
        if corners is None:
            skipped.append(SkippedImage(name, reason))
            continue
        names.append(name)
        image_points.append(corners)
    if len(names) < 3:
        raise CalibrationError(f"{folder}: --images: only {len(names)} images show the whole {board_cols}x"
                               f"{board_rows} board; need at least 3")
    rms, k, dist, rvecs, tvecs = cv2.calibrateCamera([object_grid] * len(names), image_points, size_wh, None, None)
    per_image: dict[str, float] = {}
    for name, pts, rvec, tvec in zip(names, image_points, rvecs, tvecs, strict=True):
        proj, _ = cv2.projectPoints(object_grid, rvec, tvec, k, dist)
        per_image[name] = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - pts.reshape(-1, 2)) ** 2, axis=1))))
    warnings = []
    if rms > RMS_WARN_PX:
        warnings.append(f"RMS reprojection error {rms:.2f} px is above {RMS_WARN_PX:.0f} px: recalibrate")
    warnings += [f"{n}: error {e:.2f} px is above {RMS_WARN_PX:.0f} px (blurred or moving board?)"
                 for n, e in per_image.items() if e > RMS_WARN_PX]
    mount = mount_from
    notes = mount.notes if mount is not None else PLACEHOLDER_MOUNT_NOTE
    calib = CameraCalibration(
        image_size_wh=size_wh, camera_matrix=k, dist_coeffs=dist.ravel(),
        height_m=mount.height_m if mount else 1.5, pitch_deg=mount.pitch_deg if mount else 0.0,
        roll_deg=mount.roll_deg if mount else 0.0, yaw_deg=mount.yaw_deg if mount else 0.0,
        lever_arm_m=mount.lever_arm_m if mount else (0.0, 0.0, 0.0), rms_px=float(rms),
        source=f"{folder.as_posix()} ({len(names)} of {len(paths)} images, {board_cols}x{board_rows} board, "
               f"{square_mm:g} mm squares)",
        calibrated_at=_utc_now(), notes=notes)
    return IntrinsicsResult(calib, float(rms), per_image, tuple(skipped), tuple(warnings))


def mount_from_measurements(calib: CameraCalibration, height_m: float, pitch_deg: float, roll_deg: float = 0.0,
                            yaw_deg: float = 0.0,
                            lever_arm_m: tuple[float, float, float] | None = None) -> CameraCalibration:
    """The calibration with a tape-measured / inclinometer mount."""
    return dataclasses.replace(
        calib, height_m=height_m, pitch_deg=pitch_deg, roll_deg=roll_deg, yaw_deg=yaw_deg,
        lever_arm_m=calib.lever_arm_m if lever_arm_m is None else tuple(lever_arm_m),
        notes=f"mount measured {_utc_now()}")


def _read_csv(p: Path, need: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV whose header names at least ``need``; `CalibrationError` naming the file."""
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
    except OSError as e:
        raise CalibrationError(f"{p}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise CalibrationError(f"{p}: not a UTF-8 CSV file ({e})") from None
    if any(k not in (reader.fieldnames or []) for k in need):
        raise CalibrationError(f"{p}: header must name columns {', '.join(need)}")
    if not rows:
        raise CalibrationError(f"{p}: no rows after the header")
    return rows


def read_ground_points(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a CSV with header u_px,v_px,forward_m,right_m (ground points relative to the GPS antenna).

    Returns:
        (n, 2) pixels, (n,) forward_m, (n,) right_m.
    """
    p = Path(path)
    need = ("u_px", "v_px", "forward_m", "right_m")
    rows = _read_csv(p, need)
    values = np.zeros((len(rows), 4))
    for i, row in enumerate(rows):
        for j, key in enumerate(need):
            try:
                values[i, j] = float(row[key])
            except (TypeError, ValueError):
                raise CalibrationError(f"{p}: line {i + 2}: {key}: not a number: {row[key]!r}") from None
    return values[:, :2], values[:, 2], values[:, 3]


def read_lane_points(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV with header line,u_px,v_px (line = left or right); returns left and right (n, 2) pixels."""
    p = Path(path)
    rows = _read_csv(p, ("line", "u_px", "v_px"))
    pts: dict[str, list[tuple[float, float]]] = {"left": [], "right": []}
    for i, row in enumerate(rows):
        line = (row["line"] or "").strip().lower()
        if line not in pts:
            raise CalibrationError(f"{p}: line {i + 2}: line: must be left or right, got {row['line']!r}")
        try:
            pts[line].append((float(row["u_px"]), float(row["v_px"])))
        except (TypeError, ValueError):
            raise CalibrationError(f"{p}: line {i + 2}: u_px/v_px: not a number") from None
    return np.array(pts["left"]).reshape(-1, 2), np.array(pts["right"]).reshape(-1, 2)


def mount_from_points(calib: CameraCalibration, uv_px: np.ndarray, forward_m: np.ndarray,
                      right_m: np.ndarray) -> MountSolution:
    """Solve height, pitch, roll, yaw and the camera's forward/right lever arm from ground points.

    Args:
        calib: intrinsics to use (its mount is replaced; lever_arm_m's up component is kept).
        uv_px: (n, 2) pixels of the points in the (distorted) image, n >= 4.
        forward_m: the points' positions on the ground ahead of the GPS antenna.
        right_m: their positions to the right of the antenna.

    Raises:
        CalibrationError: fewer than 4 points, or the solve fails / puts the camera below ground.
    """
    uv = np.ascontiguousarray(np.asarray(uv_px, dtype=np.float64).reshape(-1, 2))  # cv2 rejects strided views
    f, r = np.asarray(forward_m, dtype=np.float64).ravel(), np.asarray(right_m, dtype=np.float64).ravel()
    if uv.shape[0] < 4 or f.size != uv.shape[0] or r.size != uv.shape[0]:
        raise CalibrationError(f"--points: need at least 4 points with pixel and ground position, got {uv.shape[0]}")
    if not (np.isfinite(uv).all() and np.isfinite(f).all() and np.isfinite(r).all()):
        raise CalibrationError("--points: every pixel and ground position must be a finite number")
    # A pose needs points that span an area, on the ground and in the image: on one line (or one spot) the
    # solve "succeeds" with NaNs. The second singular value of the centred points is their spread across.
    for what, pts, least in (("ground positions", np.column_stack([f, r]), 0.05), ("pixels", uv, 2.0)):
        spread = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)[1] / math.sqrt(len(pts))
        if spread < least:
            raise CalibrationError(f"--points: the {what} lie on one line (spread across it {spread:.3g}): "
                                   "use points spread over the ground ahead, not one row")
    # world = forward/right/down on the ground under the antenna; ground points have down = 0 (planar)
    world = np.column_stack([f, r, np.zeros(f.size)])
    ok, rvec, tvec = cv2.solvePnP(world, uv, calib.camera_matrix, calib.dist_coeffs, flags=cv2.SOLVEPNP_IPPE)
    if not ok or not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
        raise CalibrationError("--points: solvePnP found no pose (points collinear or mislabelled?)")
    rvec, tvec = cv2.solvePnPRefineLM(world, uv, calib.camera_matrix, calib.dist_coeffs, rvec, tvec)
    rot_world_to_cam, _ = cv2.Rodrigues(rvec)
    centre = (-rot_world_to_cam.T @ tvec).ravel()  # camera centre in forward/right/down
    if centre[2] >= 0:
        raise CalibrationError(f"--points: solved camera is {centre[2]:.2f} m below the ground: check the signs")
    body = rot_world_to_cam.T @ CAMERA_TO_BODY_FRD.T  # camera body (fwd/right/down) -> car fwd/right/down
    yaw_deg = math.degrees(math.atan2(body[1, 0], body[0, 0]))
    pitch_deg = math.degrees(math.asin(np.clip(body[2, 0], -1.0, 1.0)))  # forward axis dipping down = +
    roll_deg = math.degrees(math.atan2(body[2, 1], body[2, 2]))
    solved = dataclasses.replace(
        calib, height_m=float(-centre[2]), pitch_deg=pitch_deg, roll_deg=roll_deg, yaw_deg=yaw_deg,
        lever_arm_m=(float(centre[0]), float(centre[1]), calib.lever_arm_m[2]),
        notes=f"mount solved from {f.size} ground points {_utc_now()}")
    proj, _ = vehicle_to_pixels(solved, f, r)
    err_px = np.linalg.norm(proj - uv, axis=1)
    back = pixels_to_vehicle(solved, uv, 0.0, 1e6)
    err_m = np.where(back.ok, np.hypot(back.forward_m - f, back.right_m - r), np.inf)
    residuals = tuple(PointResidual(float(uv[i, 0]), float(uv[i, 1]), float(f[i]), float(r[i]),
                                    float(err_px[i]), float(err_m[i])) for i in range(f.size))
    return MountSolution(solved, residuals, float(np.sqrt(np.mean(err_px**2))))


def mount_from_lane_lines(calib: CameraCalibration, left_uv_px: np.ndarray, right_uv_px: np.ndarray,
                          lane_width_m: float, roll_deg: float = 0.0) -> CameraCalibration:
    """Pitch, yaw and height from the two lines of a straight, flat lane the car drives parallel to.

    The lines' vanishing point is the car's forward direction: its row gives the pitch and its column
    the yaw; the lane's known width on the ground then gives the height (ground offsets scale with it).

    Args:
        calib: intrinsics to use; its lever arm is kept.
        left_uv_px: (n, 2) pixels along the lane's left line (distorted image), n >= 2.
        right_uv_px: (m, 2) pixels along its right line.
        lane_width_m: distance between the two lines on the ground (e.g. 3.66 m on US highways).
        roll_deg: the camera's roll, if known (it cannot be told from one vanishing point).

    Raises:
        CalibrationError: too few points, or lines that do not meet ahead of the camera.
    """
    lines = []
    for name, pts in (("left", left_uv_px), ("right", right_uv_px)):
        uv = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if uv.shape[0] < 2:
            raise CalibrationError(f"--lanes: the {name} line needs at least 2 points, got {uv.shape[0]}")
        xy = cv2.undistortPoints(uv.reshape(-1, 1, 2), calib.camera_matrix, calib.dist_coeffs,
                                 criteria=(cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-9)).reshape(-1, 2)
        centre = xy.mean(axis=0)
        direction = np.linalg.svd(xy - centre)[2][0]  # total least squares line through the points
        normal = np.array([-direction[1], direction[0]])
        lines.append((np.array([normal[0], normal[1], -normal @ centre]), uv))
    vp = np.cross(lines[0][0], lines[1][0])
    if abs(vp[2]) < 1e-12:
        raise CalibrationError("--lanes: the two lines are parallel in the image: no vanishing point")
    body = CAMERA_TO_BODY_FRD @ np.array([vp[0] / vp[2], vp[1] / vp[2], 1.0])
    r = math.radians(roll_deg)  # undo the roll: Rx(roll) @ body is the forward axis in a roll-free camera
    body = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]]) @ body
    body /= np.linalg.norm(body)
    pitch_deg = -math.degrees(math.atan2(body[2], body[0]))
    yaw_deg = -math.degrees(math.asin(body[1]))
    unit = dataclasses.replace(calib, height_m=1.0, pitch_deg=pitch_deg, roll_deg=roll_deg, yaw_deg=yaw_deg,
                               lever_arm_m=(0.0, 0.0, 0.0))
    right_at_unit_height = []
    for name, (_, uv) in zip(("left", "right"), lines, strict=True):
        off = pixels_to_vehicle(unit, uv, 0.0, 1e6)
        if not off.ok.all():
            raise CalibrationError(f"--lanes: a {name} line point lies at or above the horizon")
        right_at_unit_height.append(float(np.mean(off.right_m)))
    width_at_unit_height = right_at_unit_height[1] - right_at_unit_height[0]
    if width_at_unit_height <= 0:
        raise CalibrationError("--lanes: the left line is not left of the right line")
    return dataclasses.replace(calib, height_m=lane_width_m / width_at_unit_height, pitch_deg=pitch_deg,
                               roll_deg=roll_deg, yaw_deg=yaw_deg,
                               notes=f"mount from lane lines {lane_width_m:g} m apart {_utc_now()}")


def draw_check(calib: CameraCalibration, frame_bgr: np.ndarray, max_range_m: float = 30.0,
               step_m: float = 1.0, half_width_m: float = 10.0) -> np.ndarray:
    """Draw a ground grid (metres from the camera's foot point) and the horizon onto a copy of a frame.

    Lines every `step_m` (thicker and labelled every 5 m) out to `max_range_m` ahead and `half_width_m`
    to each side; green = lines along the car, yellow = across it, red = horizon. A right mount makes lane
    markings run parallel to the green lines and the red line meet the far end of a straight, flat road.
    """
    h, w = frame_bgr.shape[:2]
    if (w, h) != calib.image_size_wh:
        calib = calib.for_image_size(w, h)
    out = frame_bgr.copy()
    minor = np.zeros_like(frame_bgr)  # minor lines are blended in at half strength so the road stays visible
    scale = max(1, round(w / 1280))
    font, lf, lr = cv2.FONT_HERSHEY_SIMPLEX, calib.lever_arm_m[0], calib.lever_arm_m[1]
    along = np.linspace(0.0, max_range_m, 300)
    across = np.linspace(-half_width_m, half_width_m, 200)
    labels: list[tuple[str, np.ndarray]] = []
    for right in np.arange(-half_width_m, half_width_m + 1e-9, step_m):
        major = abs(right % 5.0) < 1e-9
        uv, vis = vehicle_to_pixels(calib, along + lf, np.full_like(along, right) + lr)
        _polyline(out if major else minor, uv, vis, (0, 200, 0), (2 if major else 1) * scale)
        if major and right != 0 and vis.any():
            labels.append((f"{right:+g} m", uv[np.flatnonzero(vis)[0]]))
    for fwd in np.arange(step_m, max_range_m + 1e-9, step_m):
        major = abs(fwd % 5.0) < 1e-9
        uv, vis = vehicle_to_pixels(calib, np.full_like(across, fwd) + lf, across + lr)
        _polyline(out if major else minor, uv, vis, (0, 220, 255), (2 if major else 1) * scale)
        centre, cvis = vehicle_to_pixels(calib, np.array([fwd + lf]), np.array([lr]))
        if major and cvis[0]:
            labels.append((f"{fwd:g} m", centre[0] + [4 * scale, -4 * scale]))
    drawn = minor.any(axis=2)
    out[drawn] = (out[drawn].astype(np.uint16) + minor[drawn]) // 2
    for text, (x, y) in labels:
        x = min(int(x), w - 50 * scale)  # keep labels of lines that leave at the right edge readable
        cv2.putText(out, text, (x, int(y)), font, 0.5 * scale, (0, 220, 255), scale, cv2.LINE_AA)
    horizon = horizon_polyline(calib)
    _polyline(out, horizon, np.ones(len(horizon), bool), (0, 0, 255), 2 * scale)
    text = (f"{Path(calib.source).name or 'calibration'}  h={calib.height_m:.2f} m  pitch={calib.pitch_deg:.2f}  "
            f"roll={calib.roll_deg:.2f}  yaw={calib.yaw_deg:.2f} deg  grid {step_m:g} m to {max_range_m:g} m "
            "from the camera; red: horizon")
    (tw, th), _ = cv2.getTextSize(text, font, 0.5 * scale, scale)
    cv2.rectangle(out, (0, 0), (tw + 20 * scale, th + 16 * scale), (0, 0, 0), -1)
    cv2.putText(out, text, (10 * scale, th + 8 * scale), font, 0.5 * scale, (255, 255, 255), scale, cv2.LINE_AA)
    return out


def check_picture(calibration_path: str | Path, frame_path: str | Path, out_path: str | Path | None = None,
                  max_range_m: float = 30.0) -> Path:
    """Draw the check grid onto a frame file and save it as PNG (default: <calibration>-check.png)."""
    calib = CameraCalibration.load(calibration_path)
    if not Path(frame_path).is_file():  # checked here: OpenCV would also print a warning of its own
        raise CalibrationError(f"{frame_path}: --frame: no such file")
    frame = cv2.imread(str(frame_path), cv2.IMREAD_COLOR)
    if frame is None:
        raise CalibrationError(f"{frame_path}: --frame: cannot read image")
    out = Path(out_path) if out_path else Path(calibration_path).with_name(Path(calibration_path).stem + "-check.png")
    if out.suffix.lower() != ".png":  # checked first: OpenCV picks the writer by the name and raises on others
        raise CalibrationError(f"{out}: --out: the check picture is a PNG: name it *.png")
    try:
        picture = draw_check(calib, frame, max_range_m=max_range_m)
    except CalibrationError:
        (w0, h0), (h, w) = calib.image_size_wh, frame.shape[:2]
        raise CalibrationError(f"{frame_path}: --frame is {w}x{h}, but {calibration_path} is calibrated for "
                               f"{w0}x{h0} (another aspect ratio: a crop or another camera?)") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), picture):
        raise CalibrationError(f"{out}: --out: cannot write PNG")
    return out


def add_calibrate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `calibrate intrinsics|mount|check`; each leaf sets `func(args) -> exit code`."""
    degrees = number(-180, 180, unit="deg")
    cal = subparsers.add_parser("calibrate", help="camera calibration: intrinsics, mount, check picture")
    sub = cal.add_subparsers(dest="calibrate_command", required=True)
    p = sub.add_parser("intrinsics", help="focal length, principal point, distortion from chessboard photos")
    p.add_argument("--images", required=True, type=Path, help="folder of chessboard photos")
    p.add_argument("--board", required=True, help="inner corners COLSxROWS, e.g. 9x6")
    p.add_argument("--square-mm", required=True, type=number(0, 10_000, low_open=True, unit="mm"),
                   help="side of one square in millimetres")
    p.add_argument("--out", required=True, type=Path, help="calibration TOML to write (an existing mount is kept)")
    p.set_defaults(func=_cmd_intrinsics)
    p = sub.add_parser("mount", help="height, pitch, roll, yaw from measurements or ground points")
    p.add_argument("--calibration", required=True, type=Path, help="calibration TOML (updated in place)")
    p.add_argument("--out", type=Path, help="write here instead of updating --calibration")
    p.add_argument("--height-m", type=number(0, 20, low_open=True, unit="m"), help="optical centre above the ground")
    p.add_argument("--pitch-deg", type=number(-90, 90, unit="deg"), help="+ = looks down")
    p.add_argument("--roll-deg", type=degrees, default=0.0, help="+ = clockwise seen from behind the camera")
    p.add_argument("--yaw-deg", type=degrees, default=0.0, help="+ = turned right of the car's forward axis")
    p.add_argument("--lever-arm-m", type=number(-20, 20, unit="m"), nargs=3, metavar=("FWD", "RIGHT", "UP"),
                   help="camera position relative to the GPS antenna")
    p.add_argument("--points", type=Path, help="CSV u_px,v_px,forward_m,right_m (>= 4 ground points, "
                                                "positions relative to the GPS antenna)")
    p.add_argument("--lanes", type=Path, help="CSV line,u_px,v_px (line = left|right): points along both lines "
                                               "of a straight flat lane the car drives parallel to")
    p.add_argument("--lane-width-m", type=number(0, 50, low_open=True, unit="m"), default=3.66,
                   help="with --lanes: line-centre to line-centre")
    p.set_defaults(func=_cmd_mount)
    p = sub.add_parser("check", help="draw a ground grid and the horizon onto a frame")
    p.add_argument("--calibration", required=True, type=Path)
    p.add_argument("--frame", required=True, type=Path, help="a frame from this camera")
    p.add_argument("--out", type=Path, help="PNG to write (default: <calibration>-check.png)")
    p.add_argument("--max-range-m", type=number(0, 1000, low_open=True, unit="m"), default=30.0)
    p.set_defaults(func=_cmd_check)
    return cal


def _cmd_intrinsics(args: argparse.Namespace) -> int:
    try:
        cols, rows = parse_board(args.board)
        keep = CameraCalibration.load(args.out) if args.out.exists() else None
        res = calibrate_intrinsics(args.images, cols, rows, args.square_mm, mount_from=keep)
        res.calibration.save(args.out)
    except CalibrationError as e:  # bad input (images, points, frame): exit 1, as every patrol command
        print(f"patrol: error: {one_line(e)}", file=sys.stderr)
        return 1
    for s in res.skipped:
        print(f"skipped {s.name}: {s.reason}")
    for name, err in res.per_image_rms_px.items():
        print(f"{name}: {err:.3f} px")
    k = res.calibration.camera_matrix
    print(f"RMS reprojection error {res.rms_px:.3f} px over {len(res.per_image_rms_px)} images; "
          f"fx={k[0, 0]:.1f} fy={k[1, 1]:.1f} cx={k[0, 2]:.1f} cy={k[1, 2]:.1f}")
    for warning in res.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {args.out}" + ("" if keep else f" ({PLACEHOLDER_MOUNT_NOTE})"))
    return 0


def _cmd_mount(args: argparse.Namespace) -> int:
    out = args.out or args.calibration
    try:
        calib = CameraCalibration.load(args.calibration)
        if (args.points is not None) + (args.lanes is not None) + (args.height_m is not None) > 1:
            raise CalibrationError("mount: give one of --points, --lanes or --height-m/--pitch-deg")
        if args.lanes is not None:
            left, right = read_lane_points(args.lanes)
            calib = mount_from_lane_lines(calib, left, right, args.lane_width_m, args.roll_deg)
            if args.lever_arm_m is not None:
                calib = dataclasses.replace(calib, lever_arm_m=tuple(args.lever_arm_m))
        elif args.points is not None:
            sol = mount_from_points(calib, *read_ground_points(args.points))
            calib = sol.calibration
            for i, res in enumerate(sol.residuals, start=1):
                print(f"point {i} ({res.forward_m:g} m, {res.right_m:g} m): {res.error_px:.2f} px, "
                      f"{res.error_m:.3f} m")
            print(f"RMS {sol.rms_px:.2f} px; lever arm fwd/right solved: {calib.lever_arm_m[0]:.3f} "
                  f"{calib.lever_arm_m[1]:.3f} m")
        elif args.height_m is None or args.pitch_deg is None:
            raise CalibrationError("mount: give --height-m and --pitch-deg (and --roll-deg, --yaw-deg), or --points")
        else:
            calib = mount_from_measurements(calib, args.height_m, args.pitch_deg, args.roll_deg, args.yaw_deg,
                                            None if args.lever_arm_m is None else tuple(args.lever_arm_m))
        calib.save(out)
    except CalibrationError as e:  # bad input (images, points, frame): exit 1, as every patrol command
        print(f"patrol: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"height {calib.height_m:.3f} m, pitch {calib.pitch_deg:.2f}, roll {calib.roll_deg:.2f}, "
          f"yaw {calib.yaw_deg:.2f} deg; wrote {out}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        out = check_picture(args.calibration, args.frame, args.out, args.max_range_m)
    except CalibrationError as e:  # bad input (images, points, frame): exit 1, as every patrol command
        print(f"patrol: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def _find_board(gray: np.ndarray, board: tuple[int, int], detect_width_px: int) -> tuple[np.ndarray | None, str]:
    """Full-resolution corners of the board, or None and why not."""
    s = min(1.0, detect_width_px / gray.shape[1])
    small = gray if s == 1.0 else cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH + cv2.CALIB_CB_NORMALIZE_IMAGE
    found, corners = cv2.findChessboardCorners(small, board, flags=flags)
    if not found:
        found, corners = cv2.findChessboardCornersSB(small, board)
    if not found:
        cols, rows = board
        for part in ((cols - 1, rows), (cols, rows - 1), (cols - 1, rows - 1), (cols - 2, rows), (cols, rows - 2)):
            if min(part) >= 2 and cv2.findChessboardCorners(small, part, flags=flags)[0]:
                return None, (f"{cols}x{rows} board not found, only a {part[0]}x{part[1]} part of it: "
                              "board partly out of frame")
        return None, f"{cols}x{rows} board not found (out of frame, blurred, or a different board?)"
    pts = (corners.reshape(-1, 2).astype(np.float64) + 0.5) / s - 0.5
    # refinement window: a quarter of the corner spacing, so it never spans two corners
    spacing = float(np.min(np.linalg.norm(np.diff(pts.reshape(board[1], board[0], 2), axis=1), axis=2)))
    win = int(np.clip(spacing / 4, 2, 11))
    h, w = gray.shape[:2]
    edge_px = float(np.min(np.concatenate([pts.min(axis=0), [w - 1, h - 1] - pts.max(axis=0)])))
    if edge_px < win + 1:  # the refinement window would fall off the image: partly out of frame
        return None, (f"{board[0]}x{board[1]} board touches the image edge (a corner {edge_px:.0f} px from it): "
                      "board partly out of frame")
    refined = cv2.cornerSubPix(gray, pts.astype(np.float32).reshape(-1, 1, 2), (win, win), (-1, -1),
                               (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3))
    return refined, ""


def _polyline(img: np.ndarray, uv: np.ndarray, visible: np.ndarray, color: tuple[int, int, int],
              thickness: int) -> None:
    """Draw the visible runs of a sampled curve (a break wherever a sample is not visible)."""
    run: list[np.ndarray] = []
    for point, vis in zip(uv, visible, strict=True):
        if vis:
            run.append(point)
            continue
        if len(run) > 1:
            cv2.polylines(img, [np.round(np.array(run)).astype(np.int32)], False, color, thickness, cv2.LINE_AA)
        run = []
    if len(run) > 1:
        cv2.polylines(img, [np.round(np.array(run)).astype(np.int32)], False, color, thickness, cv2.LINE_AA)


def _natural_key(p: Path) -> tuple:
    digits = "".join(ch for ch in p.stem if ch.isdigit())
    return (p.stem.rstrip("0123456789"), int(digits) if digits else -1, p.name)


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
