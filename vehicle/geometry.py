"""Ground positioning: pixel -> camera ray -> flat ground -> car-frame metres -> local ENU -> WGS-84.

Frames and conventions (all lengths in metres, angles in degrees):

* Camera frame: OpenCV's, x right, y down, z forward along the optical axis.
* Vehicle frame: forward / right / up, origin at the GPS antenna. Ground is the plane ``up = -height_m``
  below the camera's optical centre (flat-ground assumption).
* Mount rotation: start from a camera that looks straight along the car's forward axis, image rows level;
  turn it by ``yaw_deg`` about the car's vertical (+ = to the right), then by ``pitch_deg`` about the
  camera's own right axis (+ = looks down), then by ``roll_deg`` about its own optical axis
  (+ = clockwise as seen from behind the camera). Internally this is the aerospace Z-Y-X sequence in the
  right-handed forward/right/down frame, with the aerospace pitch = -pitch_deg.
* Lever arm: the camera's position relative to the GPS antenna (forward, right, up); offsets returned by
  `pixels_to_vehicle` are relative to the antenna, because that is where the GPS fix is.
* Heading: degrees clockwise from true north. ENU: east, north, up about a WGS-84 origin at height 0.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pymap3d

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius, for haversine
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-9)
_HORIZON_EPS = 1e-9  # a ray whose downward component is below this never meets the ground
_DIST_LENGTHS = (4, 5, 8, 12, 14)
# camera (x right, y down, z fwd) -> body forward/right/down: forward = z, right = x, down = y
CAMERA_TO_BODY_FRD = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


class CalibrationError(ValueError):
    """Invalid or unusable calibration; the message is one line naming the file and the field."""


@dataclass(frozen=True, eq=False)
class CameraCalibration:
    """Intrinsics and mounting of one camera on the car.

    Attributes:
        image_size_wh: image width and height in pixels that the intrinsics belong to.
        camera_matrix: 3x3 pinhole matrix in pixels (fx, fy, cx, cy).
        dist_coeffs: OpenCV distortion coefficients k1, k2, p1, p2[, k3, ...].
        height_m: optical centre above the ground.
        pitch_deg: tilt about the camera's right axis; + = looks down.
        roll_deg: turn about the optical axis; + = clockwise as seen from behind the camera.
        yaw_deg: turn about the car's vertical; + = to the right of the car's forward axis.
        lever_arm_m: camera position relative to the GPS antenna (forward, right, up).
        rms_px: RMS reprojection error of the intrinsic calibration, if known.
        source: where the intrinsics came from (images folder, "default", ...).
        calibrated_at: ISO 8601 UTC time of the calibration.
        notes: free text, e.g. how the mount was measured.
        file: the file it was loaded from (named in errors; not saved).
    """

    image_size_wh: tuple[int, int]
    camera_matrix: np.ndarray
    dist_coeffs: np.ndarray
    height_m: float
    pitch_deg: float
    roll_deg: float
    yaw_deg: float
    lever_arm_m: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rms_px: float | None = None
    source: str = ""
    calibrated_at: str = ""
    notes: str = field(default="")
    file: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        w, h = (int(v) for v in self.image_size_wh)
        if w <= 0 or h <= 0 or (w, h) != tuple(self.image_size_wh):
            raise CalibrationError(f"intrinsics.image_size_wh: must be two positive integers, got {self.image_size_wh}")
        k = np.array(self.camera_matrix, dtype=np.float64)
        if k.shape != (3, 3) or not np.all(np.isfinite(k)):
            raise CalibrationError(f"intrinsics.camera_matrix: must be a finite 3x3 matrix, got shape {k.shape}")
        if k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], [0, 0, 1]) or k[1, 0] != 0:
            raise CalibrationError("intrinsics.camera_matrix: needs fx > 0, fy > 0, [0, fy, cy] and [0, 0, 1] rows")
        d = np.array(self.dist_coeffs, dtype=np.float64).ravel()
        if d.size not in _DIST_LENGTHS or not np.all(np.isfinite(d)):
            raise CalibrationError(f"intrinsics.dist_coeffs: needs 4, 5, 8, 12 or 14 finite numbers, got {d.size}")
        _check_number("mount.height_m", self.height_m, 0.0, 100.0, open_low=True)
        _check_number("mount.pitch_deg", self.pitch_deg, -89.9, 89.9)
        _check_number("mount.roll_deg", self.roll_deg, -180.0, 180.0)
        _check_number("mount.yaw_deg", self.yaw_deg, -180.0, 180.0)
        arm = tuple(float(v) for v in self.lever_arm_m)
        if len(arm) != 3 or not all(math.isfinite(v) for v in arm):
            raise CalibrationError(f"mount.lever_arm_m: needs three finite numbers, got {self.lever_arm_m}")
        if self.rms_px is not None:
            _check_number("intrinsics.rms_px", self.rms_px, 0.0, 1e6)
        k.setflags(write=False)
        d.setflags(write=False)
        object.__setattr__(self, "image_size_wh", (w, h))
        object.__setattr__(self, "camera_matrix", k)
        object.__setattr__(self, "dist_coeffs", d)
        object.__setattr__(self, "lever_arm_m", arm)
        for name in ("height_m", "pitch_deg", "roll_deg", "yaw_deg"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def load(cls, path: str | Path) -> CameraCalibration:
        """Read a calibration TOML (format: calibration/README.md).

        Raises:
            CalibrationError: one line naming the file and the field that is missing or wrong.
        """
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise CalibrationError(f"{p}: cannot read: {e.strerror or e}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise CalibrationError(f"{p}: invalid TOML: {e}") from None
        allowed = {"": {"source", "calibrated_at", "notes", "intrinsics", "mount"},
                   "intrinsics": {"image_size_wh", "camera_matrix", "dist_coeffs", "rms_px"},
                   "mount": {"height_m", "pitch_deg", "roll_deg", "yaw_deg", "lever_arm_m"}}
        for section, keys in allowed.items():
            table = data if not section else data.get(section)
            if not isinstance(table, dict):
                raise CalibrationError(f"{p}: [{section}]: missing table")
            for key in table:
                if key not in keys:
                    raise CalibrationError(f"{p}: {section + '.' if section else ''}{key}: unknown key")
        intr, mount = data["intrinsics"], data["mount"]
        try:
            return cls(
                image_size_wh=tuple(_required(intr, "intrinsics", "image_size_wh")),
                camera_matrix=np.array(_required(intr, "intrinsics", "camera_matrix"), dtype=np.float64),
                dist_coeffs=np.array(_required(intr, "intrinsics", "dist_coeffs"), dtype=np.float64),
                rms_px=intr.get("rms_px"),
                height_m=_required(mount, "mount", "height_m"),
                pitch_deg=_required(mount, "mount", "pitch_deg"),
                roll_deg=mount.get("roll_deg", 0.0),
                yaw_deg=mount.get("yaw_deg", 0.0),
                lever_arm_m=tuple(mount.get("lever_arm_m", (0.0, 0.0, 0.0))),
                source=str(data.get("source", "")),
                calibrated_at=str(data.get("calibrated_at", "")),
                notes=str(data.get("notes", "")),
                file=str(p),
            )
        except CalibrationError as e:
            raise CalibrationError(f"{p}: {e}") from None
        except (TypeError, ValueError) as e:  # wrong types (a string where a number belongs, ragged lists)
            raise CalibrationError(f"{p}: {str(e).splitlines()[0]}") from None

    def save(self, path: str | Path) -> None:
        """Write this calibration as TOML (parents are created); `load` reads it back unchanged."""
        def num(v: float) -> str:
            return repr(float(v))

        k = self.camera_matrix
        lines = ["# Camera calibration for patrol-vehicle; format: calibration/README.md",
                 f"source = {json.dumps(self.source)}",
                 f"calibrated_at = {json.dumps(self.calibrated_at)}"]
        if self.notes:
            lines.append(f"notes = {json.dumps(self.notes)}")
        lines += ["", "[intrinsics]",
                  f"image_size_wh = [{self.image_size_wh[0]}, {self.image_size_wh[1]}]",
                  "camera_matrix = [",
                  *(f"    [{', '.join(num(v) for v in row)}]," for row in k),
                  "]",
                  f"dist_coeffs = [{', '.join(num(v) for v in self.dist_coeffs)}]  # k1, k2, p1, p2, k3"]
        if self.rms_px is not None:
            lines.append(f"rms_px = {num(self.rms_px)}")
        lines += ["", "[mount]",
                  f"height_m = {num(self.height_m)}",
                  f"pitch_deg = {num(self.pitch_deg)}  # + = looks down",
                  f"roll_deg = {num(self.roll_deg)}  # + = clockwise seen from behind the camera",
                  f"yaw_deg = {num(self.yaw_deg)}  # + = turned right of the car's forward axis",
                  f"lever_arm_m = [{', '.join(num(v) for v in self.lever_arm_m)}]  # camera - antenna: fwd, right, up",
                  ""]
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("\n".join(lines), encoding="utf-8")

    def for_image_size(self, width_px: int, height_px: int) -> CameraCalibration:
        """The same calibration for a resized stream of the same aspect ratio.

        Scales fx, cx by width_px / width and fy, cy by height_px / height, keeping pixel centres aligned
        (c' = (c + 0.5) * s - 0.5). Distortion is in normalised coordinates and does not change.

        Raises:
            CalibrationError: the aspect ratio differs by more than 1 % (a crop, not a resize).
        """
        w0, h0 = self.image_size_wh
        if width_px <= 0 or height_px <= 0:
            raise CalibrationError(f"{self.file or self.source or 'calibration'}: image_size_wh: bad target "
                                   f"{width_px}x{height_px}")
        if (width_px, height_px) == (w0, h0):
            return self
        if abs((width_px / height_px) / (w0 / h0) - 1.0) > 0.01:
            raise CalibrationError(
                f"{self.file or self.source or 'calibration'}: image_size_wh: calibrated for {w0}x{h0}, stream is "
                f"{width_px}x{height_px} (aspect differs by more than 1 %: cropped? recalibrate)")
        sx, sy = width_px / w0, height_px / h0
        k = self.camera_matrix.copy()
        k[0, 0] *= sx
        k[0, 1] *= sx
        k[1, 1] *= sy
        k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
        k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
        return CameraCalibration(
            image_size_wh=(width_px, height_px), camera_matrix=k, dist_coeffs=self.dist_coeffs,
            height_m=self.height_m, pitch_deg=self.pitch_deg, roll_deg=self.roll_deg, yaw_deg=self.yaw_deg,
            lever_arm_m=self.lever_arm_m, rms_px=None if self.rms_px is None else self.rms_px * sx,
            source=self.source, calibrated_at=self.calibrated_at, notes=self.notes, file=self.file)

    def camera_to_vehicle_rotation(self) -> np.ndarray:
        """3x3 matrix taking a camera-frame (x right, y down, z fwd) vector to forward/right/DOWN of the car."""
        return _mount_rotation_frd(self.yaw_deg, self.pitch_deg, self.roll_deg) @ CAMERA_TO_BODY_FRD


@dataclass(frozen=True, eq=False)
class VehicleOffsets:
    """Ground points in the car frame, relative to the GPS antenna; parallel arrays of length n.

    Attributes:
        forward_m: metres ahead of the antenna (0 where not ok).
        right_m: metres to the right of the antenna (0 where not ok).
        range_m: horizontal distance from the camera (0 where not ok).
        ok: the pixel's ray meets the ground within [min_range_m, max_range_m].
    """

    forward_m: np.ndarray
    right_m: np.ndarray
    range_m: np.ndarray
    ok: np.ndarray


@dataclass(frozen=True)
class GroundPoint:
    """Where one pixel lands on the map; ok=False means the car's own position and no range."""

    lat_deg: float
    lon_deg: float
    range_m: float | None
    ok: bool


def pixels_to_vehicle(calib: CameraCalibration, uv_px: np.ndarray, min_range_m: float,
                      max_range_m: float) -> VehicleOffsets:
    """Cast the rays of image pixels onto the flat ground.

    Args:
        calib: the camera calibration for this image size.
        uv_px: (n, 2) pixel coordinates (x right, y down) in the distorted image.
        min_range_m: nearer hits (horizontal, from the camera) are not ok.
        max_range_m: farther hits are not ok.

    Returns:
        Offsets from the GPS antenna in the car frame; ok=False (and zeros) for rays at or above the
        horizon, non-finite pixels and hits outside the range window.
    """
    uv = np.asarray(uv_px, dtype=np.float64).reshape(-1, 2)
    n = uv.shape[0]
    if n == 0:
        empty = np.zeros(0)
        return VehicleOffsets(empty, empty.copy(), empty.copy(), np.zeros(0, dtype=bool))
    finite = np.all(np.isfinite(uv), axis=1)
    xy = np.zeros((n, 2))
    if finite.any():
        xy[finite] = cv2.undistortPoints(uv[finite].reshape(-1, 1, 2), calib.camera_matrix, calib.dist_coeffs,
                                         criteria=_UNDISTORT_CRITERIA).reshape(-1, 2)
    rays_cam = np.column_stack([xy, np.ones(n)])
    rays_frd = rays_cam @ calib.camera_to_vehicle_rotation().T
    down = rays_frd[:, 2]
    hits = finite & (down > _HORIZON_EPS)
    t = np.where(hits, calib.height_m / np.where(hits, down, 1.0), 0.0)
    fwd_cam, right_cam = t * rays_frd[:, 0], t * rays_frd[:, 1]
    range_m = np.hypot(fwd_cam, right_cam)
    ok = hits & (range_m >= min_range_m) & (range_m <= max_range_m)
    return VehicleOffsets(
        forward_m=np.where(ok, fwd_cam + calib.lever_arm_m[0], 0.0),
        right_m=np.where(ok, right_cam + calib.lever_arm_m[1], 0.0),
        range_m=np.where(ok, range_m, 0.0),
        ok=ok,
    )


def vehicle_to_pixels(calib: CameraCalibration, forward_m: np.ndarray,
                      right_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ground points (car frame, relative to the antenna) into the distorted image.

    Returns:
        (n, 2) pixel coordinates and an (n,) bool array: in front of the camera and inside the image
        (points whose distorted projection folds back, far outside the lens' field, are not visible).
    """
    f = np.atleast_1d(np.asarray(forward_m, dtype=np.float64)) - calib.lever_arm_m[0]
    r = np.atleast_1d(np.asarray(right_m, dtype=np.float64)) - calib.lever_arm_m[1]
    f, r = np.broadcast_arrays(f, r)
    pts_frd = np.column_stack([f.ravel(), r.ravel(), np.full(f.size, calib.height_m)])
    return _project_frd(calib, pts_frd)


def vehicle_to_enu(forward_m: np.ndarray, right_m: np.ndarray,
                   heading_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate car-frame offsets into east/north metres, heading clockwise from north."""
    h = math.radians(heading_deg)
    f, r = np.asarray(forward_m, dtype=np.float64), np.asarray(right_m, dtype=np.float64)
    return f * math.sin(h) + r * math.cos(h), f * math.cos(h) - r * math.sin(h)


def enu_to_wgs84(lat0_deg: float, lon0_deg: float, east_m: np.ndarray,
                 north_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """East/north metres about (lat0, lon0, height 0) to WGS-84 latitude/longitude in degrees."""
    lat, lon, _ = pymap3d.enu2geodetic(np.asarray(east_m, dtype=np.float64), np.asarray(north_m, dtype=np.float64),
                                       0.0, lat0_deg, lon0_deg, 0.0)
    return np.asarray(lat), np.asarray(lon)


def wgs84_to_enu(lat0_deg: float, lon0_deg: float, lat_deg: np.ndarray,
                 lon_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WGS-84 latitude/longitude (height 0) to east/north metres about (lat0, lon0, height 0)."""
    e, n, _ = pymap3d.geodetic2enu(np.asarray(lat_deg, dtype=np.float64), np.asarray(lon_deg, dtype=np.float64),
                                   0.0, lat0_deg, lon0_deg, 0.0)
    return np.asarray(e), np.asarray(n)


def distance_m(lat1_deg: float | np.ndarray, lon1_deg: float | np.ndarray, lat2_deg: float | np.ndarray,
               lon2_deg: float | np.ndarray) -> float | np.ndarray:
    """Great-circle (haversine) distance in metres; mean-radius sphere, well under 0.5 % error."""
    p1, p2 = np.radians(lat1_deg), np.radians(lat2_deg)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2_deg) - np.asarray(lon1_deg))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    d = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return float(d) if np.ndim(d) == 0 else d


def locate(calib: CameraCalibration, uv_px: np.ndarray, lat_deg: float, lon_deg: float,
           heading_deg: float | None, min_range_m: float, max_range_m: float) -> list[GroundPoint]:
    """Pixels to WGS-84 ground points, given the antenna's fix and the car's heading.

    Rows that cannot be placed (above the horizon, out of range, or no heading to orient by) get the
    car's own position, range None and ok False.
    """
    uv = np.asarray(uv_px, dtype=np.float64).reshape(-1, 2)
    if heading_deg is None or not math.isfinite(heading_deg):
        return [GroundPoint(float(lat_deg), float(lon_deg), None, False) for _ in range(uv.shape[0])]
    off = pixels_to_vehicle(calib, uv, min_range_m, max_range_m)
    east, north = vehicle_to_enu(off.forward_m, off.right_m, heading_deg)
    lat, lon = enu_to_wgs84(lat_deg, lon_deg, east, north)
    lat, lon = np.atleast_1d(lat), np.atleast_1d(lon)
    return [GroundPoint(float(lat[i]), float(lon[i]), float(off.range_m[i]), True) if off.ok[i]
            else GroundPoint(float(lat_deg), float(lon_deg), None, False) for i in range(uv.shape[0])]


def horizon_polyline(calib: CameraCalibration, samples: int = 200) -> np.ndarray:
    """The horizon (rays parallel to the ground) as it appears in the distorted image, as (m, 2) pixels.

    Sampled across the undistorted field of view a little wider than the image, so a caller can clip it.
    """
    w, h = calib.image_size_wh
    # horizontal rays: dot(down axis of the car, camera-frame ray) == 0 -> line a*x + b*y + c = 0
    a, b, c = calib.camera_to_vehicle_rotation()[2]
    border = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [0, h / 2], [w - 1, h / 2],
                       [w / 2, 0], [w / 2, h - 1]], dtype=np.float64)
    xy = cv2.undistortPoints(border.reshape(-1, 1, 2), calib.camera_matrix, calib.dist_coeffs,
                             criteria=_UNDISTORT_CRITERIA).reshape(-1, 2)
    margin = 0.1 * (xy.max(axis=0) - xy.min(axis=0))
    lo, hi = xy.min(axis=0) - margin, xy.max(axis=0) + margin
    if abs(b) >= abs(a):  # mostly level horizon: parametrise by x
        x = np.linspace(lo[0], hi[0], samples)
        y = -(a * x + c) / b
    else:
        y = np.linspace(lo[1], hi[1], samples)
        x = -(b * y + c) / a
    pts_cam = np.column_stack([x, y, np.ones(samples)])
    uv, _ = cv2.projectPoints(pts_cam.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), calib.camera_matrix,
                              calib.dist_coeffs)
    return uv.reshape(-1, 2)


def horizon_line(calib: CameraCalibration) -> tuple[tuple[float, float], tuple[float, float]]:
    """The horizon's end points at the left (x=0) and right (x=width-1) edges of the distorted image.

    Rows above the line look at the sky (no ground hit). With lens distortion the true horizon bends a
    little; the end points lie on the true, distorted horizon. May lie outside the image rows.

    Raises:
        CalibrationError: the camera is rolled so far that the horizon does not cross the image sideways.
    """
    w, _ = calib.image_size_wh
    pts = horizon_polyline(calib)
    order = np.argsort(pts[:, 0])
    xs, ys = pts[order, 0], pts[order, 1]
    if not np.all(np.diff(xs) > 0) or xs[0] > 0 or xs[-1] < w - 1:
        # steep roll or extreme distortion: fall back to the undistorted pinhole line
        a, b, c = calib.camera_to_vehicle_rotation()[2]
        if abs(b) < 1e-9:
            raise CalibrationError(f"{calib.source or 'calibration'}: mount.roll_deg: horizon is vertical")
        k = calib.camera_matrix
        def row(u: float) -> float:
            return k[1, 1] * -(a * (u - k[0, 2]) / k[0, 0] + c) / b + k[1, 2]
        return (0.0, float(row(0.0))), (float(w - 1), float(row(w - 1)))
    return (0.0, float(np.interp(0.0, xs, ys))), (float(w - 1), float(np.interp(w - 1, xs, ys)))


def _project_frd(calib: CameraCalibration, pts_frd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project points given relative to the camera in the car's forward/right/down frame."""
    pts_cam = pts_frd @ calib.camera_to_vehicle_rotation()  # inverse rotation = transpose
    n = pts_cam.shape[0]
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=bool)
    in_front = pts_cam[:, 2] > 1e-6
    uv = np.full((n, 2), np.nan)
    if in_front.any():
        proj, _ = cv2.projectPoints(pts_cam[in_front].reshape(-1, 1, 3), np.zeros(3), np.zeros(3),
                                    calib.camera_matrix, calib.dist_coeffs)
        uv[in_front] = proj.reshape(-1, 2)
    w, h = calib.image_size_wh
    inside = in_front & (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    if inside.any():  # reject fold-back: the distortion polynomial maps far-off-axis points into the image
        idx = np.flatnonzero(inside)
        back = cv2.undistortPoints(uv[idx].reshape(-1, 1, 2), calib.camera_matrix, calib.dist_coeffs,
                                   criteria=_UNDISTORT_CRITERIA).reshape(-1, 2)
        want = pts_cam[idx, :2] / pts_cam[idx, 2:3]
        inside[idx[np.linalg.norm(back - want, axis=1) > 1e-3]] = False
    return uv, inside


def _mount_rotation_frd(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Body (camera forward/right/down) to car forward/right/down: Rz(yaw) Ry(-pitch) Rx(roll)."""
    y, p, r = math.radians(yaw_deg), math.radians(-pitch_deg), math.radians(roll_deg)
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    return rz @ ry @ rx


def _check_number(name: str, value: object, low: float, high: float, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise CalibrationError(f"{name}: must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v > high or v < low or (open_low and v == low):
        raise CalibrationError(f"{name}: {v} outside {'(' if open_low else '['}{low}, {high}]")


def _required(table: dict, section: str, key: str) -> object:
    if key not in table:
        raise CalibrationError(f"{section}.{key}: missing")
    return table[key]
