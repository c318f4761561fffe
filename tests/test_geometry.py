"""Ground positioning checked against hand-written pinhole trigonometry and known geodesy."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from vehicle.config import REPO_ROOT
from vehicle.geometry import (
    CalibrationError,
    CameraCalibration,
    GroundPoint,
    distance_m,
    enu_to_wgs84,
    horizon_line,
    locate,
    pixels_to_vehicle,
    vehicle_to_enu,
    vehicle_to_pixels,
    wgs84_to_enu,
)

ATOL_GROUND_M = 0.1  # the brief's tolerance for a hand-projected pixel landing back on the ground
ATOL_PX = 0.01  # round trips through OpenCV's (iterated) undistortion
FX, FY, CX, CY = 1000.0, 1000.0, 640.0, 360.0
# Udacity-like barrel distortion, so the round trips exercise a real lens model
UDACITY_LIKE_DIST = np.array([-0.24, -0.05, -0.0007, 0.0001, 0.02])


def make_calib(pitch_deg: float = 10.0, height_m: float = 1.5, roll_deg: float = 0.0, yaw_deg: float = 0.0,
               lever_arm_m: tuple[float, float, float] = (0.0, 0.0, 0.0),
               dist: np.ndarray | None = None) -> CameraCalibration:
    return CameraCalibration(
        image_size_wh=(1280, 720),
        camera_matrix=np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1]]),
        dist_coeffs=np.zeros(5) if dist is None else dist,
        height_m=height_m, pitch_deg=pitch_deg, roll_deg=roll_deg, yaw_deg=yaw_deg, lever_arm_m=lever_arm_m,
    )


def hand_pixel(forward_m: float, right_m: float, height_m: float, pitch_deg: float,
               yaw_deg: float = 0.0) -> tuple[float, float]:
    """Pinhole projection written out with trigonometry (no roll, no distortion, camera at the origin)."""
    y = math.radians(yaw_deg)
    # undo yaw: coordinates along the camera's own horizontal forward / right
    f = forward_m * math.cos(y) + right_m * math.sin(y)
    r = -forward_m * math.sin(y) + right_m * math.cos(y)
    p = math.radians(pitch_deg)
    z_cam = f * math.cos(p) + height_m * math.sin(p)  # along the optical axis
    y_cam = height_m * math.cos(p) - f * math.sin(p)  # image-down axis
    return CX + FX * r / z_cam, CY + FY * y_cam / z_cam


# forward_m, right_m, height_m, pitch_deg, yaw_deg
KNOWN_GEOMETRIES = [
    (10.0, 2.0, 1.5, 10.0, 0.0),
    (10.0, -2.0, 1.5, 10.0, 0.0),
    (25.0, 0.0, 1.5, 3.0, 0.0),
    (5.0, 1.0, 2.2, 15.0, 0.0),
    (30.0, -4.0, 1.8, 2.0, 0.0),
    (12.0, 0.5, 1.5, 8.0, 5.0),
    (12.0, 3.0, 1.5, 8.0, -10.0),
]


@pytest.mark.parametrize(("forward_m", "right_m", "height_m", "pitch_deg", "yaw_deg"), KNOWN_GEOMETRIES)
def test_hand_projected_pixel_lands_back_on_its_ground_point(forward_m, right_m, height_m, pitch_deg, yaw_deg):
    calib = make_calib(pitch_deg=pitch_deg, height_m=height_m, yaw_deg=yaw_deg)
    u, v = hand_pixel(forward_m, right_m, height_m, pitch_deg, yaw_deg)
    off = pixels_to_vehicle(calib, np.array([[u, v]]), 0.5, 100.0)
    assert off.ok[0]
    assert off.forward_m[0] == pytest.approx(forward_m, abs=ATOL_GROUND_M)
    assert off.right_m[0] == pytest.approx(right_m, abs=ATOL_GROUND_M)
    assert off.range_m[0] == pytest.approx(math.hypot(forward_m, right_m), abs=ATOL_GROUND_M)
    # and the forward projection agrees with the hand pinhole
    uv, visible = vehicle_to_pixels(calib, np.array([forward_m]), np.array([right_m]))
    assert visible[0]
    assert uv[0] == pytest.approx([u, v], abs=ATOL_PX)


def test_principal_point_hits_ground_at_height_over_tan_pitch():
    off = pixels_to_vehicle(make_calib(pitch_deg=10.0, height_m=1.5), np.array([[CX, CY]]), 0.0, 100.0)
    assert off.forward_m[0] == pytest.approx(1.5 / math.tan(math.radians(10.0)), abs=1e-6)  # 8.507 m
    assert off.right_m[0] == pytest.approx(0.0, abs=1e-9)


def test_lever_arm_shifts_offsets_to_the_antenna_but_not_the_range():
    lever = (1.2, -0.3, 0.5)
    off = pixels_to_vehicle(make_calib(lever_arm_m=lever), np.array([[CX, CY]]), 0.0, 100.0)
    cam_forward_m = 1.5 / math.tan(math.radians(10.0))
    assert off.forward_m[0] == pytest.approx(cam_forward_m + 1.2, abs=1e-6)
    assert off.right_m[0] == pytest.approx(-0.3, abs=1e-9)
    assert off.range_m[0] == pytest.approx(cam_forward_m, abs=1e-6)
    uv, visible = vehicle_to_pixels(make_calib(lever_arm_m=lever), off.forward_m, off.right_m)
    assert visible[0] and uv[0] == pytest.approx([CX, CY], abs=ATOL_PX)


def test_roll_clockwise_raises_the_right_end_of_the_horizon():
    # camera rolled clockwise (seen from behind): the horizon through the principal point tilts so that its
    # right end is higher in the image, by tan(roll) per pixel when fx == fy
    roll = 4.0
    (x0, y0), (x1, y1) = horizon_line(make_calib(pitch_deg=0.0, roll_deg=roll))
    assert (x0, x1) == (0.0, 1279.0)
    assert (y1 - y0) / (x1 - x0) == pytest.approx(-math.tan(math.radians(roll)), abs=1e-6)
    assert (y0 + (y1 - y0) * (CX - x0) / (x1 - x0)) == pytest.approx(CY, abs=1e-6)


def test_roll_moves_ground_points_sideways_as_expected():
    # a camera looking straight down the road, rolled: a point 10 m ahead on the centre line appears at
    # the pixel obtained by rotating its unrolled pixel about the principal point by -roll
    roll = 3.0
    u, v = hand_pixel(10.0, 0.0, 1.5, 10.0)
    a = math.radians(-roll)
    du, dv = u - CX, v - CY
    u_r, v_r = CX + du * math.cos(a) - dv * math.sin(a), CY + du * math.sin(a) + dv * math.cos(a)
    off = pixels_to_vehicle(make_calib(roll_deg=roll), np.array([[u_r, v_r]]), 0.0, 100.0)
    assert off.forward_m[0] == pytest.approx(10.0, abs=1e-6)
    assert off.right_m[0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("pitch_deg", [0.0, 5.0, 10.0, -3.0])
def test_horizon_row_is_cy_minus_f_tan_pitch(pitch_deg):
    (_, y0), (_, y1) = horizon_line(make_calib(pitch_deg=pitch_deg))
    expected = CY - FY * math.tan(math.radians(pitch_deg))
    assert y0 == pytest.approx(expected, abs=1e-6)
    assert y1 == pytest.approx(expected, abs=1e-6)


def test_rays_at_or_above_horizon_and_out_of_range_are_not_ok():
    calib = make_calib(pitch_deg=10.0)
    horizon_row = CY - FY * math.tan(math.radians(10.0))
    rows = np.array([horizon_row - 50, horizon_row, horizon_row + 1, CY, 719])
    uv = np.column_stack([np.full(rows.size, CX), rows])
    off = pixels_to_vehicle(calib, uv, 2.0, 30.0)
    # +1 px below the horizon lands ~1,200 m away: beyond 30 m; 719 lands ~3.3 m away: inside
    assert off.ok.tolist() == [False, False, False, True, True]
    assert off.forward_m[~off.ok].tolist() == [0.0, 0.0, 0.0]
    near = pixels_to_vehicle(calib, uv, 4.0, 30.0)
    assert near.ok.tolist() == [False, False, False, True, False]


def test_distorted_round_trip_pixels_vehicle_pixels():
    calib = make_calib(pitch_deg=8.0, roll_deg=1.5, yaw_deg=-2.0, lever_arm_m=(0.8, 0.2, 0.4),
                       dist=UDACITY_LIKE_DIST)
    us, vs = np.meshgrid(np.linspace(20, 1260, 12), np.linspace(300, 710, 9))
    uv = np.column_stack([us.ravel(), vs.ravel()])
    off = pixels_to_vehicle(calib, uv, 0.0, 1e4)
    assert off.ok.sum() > 80
    back, visible = vehicle_to_pixels(calib, off.forward_m[off.ok], off.right_m[off.ok])
    assert visible.all()
    np.testing.assert_allclose(back, uv[off.ok], atol=ATOL_PX)


def test_hand_distorted_pixel_lands_back_on_its_ground_point():
    # Brown-Conrady written out by hand: the distorted pixel of (7 m, 3.5 m), near the image edge, must come back to it
    k1, k2, p1, p2, k3 = UDACITY_LIKE_DIST
    u0, v0 = hand_pixel(7.0, 3.5, 1.5, 10.0)
    x, y = (u0 - CX) / FX, (v0 - CY) / FY
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    uv = np.array([[CX + FX * xd, CY + FY * yd]])
    bent = pixels_to_vehicle(make_calib(dist=UDACITY_LIKE_DIST), uv, 0.0, 100.0)
    assert bent.forward_m[0] == pytest.approx(7.0, abs=0.01)
    assert bent.right_m[0] == pytest.approx(3.5, abs=0.01)
    plain = pixels_to_vehicle(make_calib(), uv, 0.0, 100.0)  # ignoring the lens is measurably wrong
    assert math.hypot(plain.forward_m[0] - 7.0, plain.right_m[0] - 3.5) > 0.15


def test_points_behind_or_outside_the_image_are_not_visible():
    calib = make_calib(dist=UDACITY_LIKE_DIST)
    _, visible = vehicle_to_pixels(calib, np.array([-5.0, 10.0, 10.0, 3.0]), np.array([0.0, 0.0, 40.0, 30.0]))
    assert visible.tolist() == [False, True, False, False]


@pytest.mark.parametrize(("heading_deg", "east", "north"), [
    (0.0, 2.0, 10.0), (90.0, 10.0, -2.0), (180.0, -2.0, -10.0), (270.0, -10.0, 2.0), (45.0, 12 / 2**0.5, 8 / 2**0.5),
])
def test_vehicle_to_enu_headings(heading_deg, east, north):
    e, n = vehicle_to_enu(np.array([10.0]), np.array([2.0]), heading_deg)
    assert e[0] == pytest.approx(east, abs=1e-9)
    assert n[0] == pytest.approx(north, abs=1e-9)


def _m_per_deg_lat(lat_deg: float) -> float:
    p = math.radians(lat_deg)  # WGS-84 meridian arc series (accurate to ~1 cm per degree)
    return 111132.92 - 559.82 * math.cos(2 * p) + 1.175 * math.cos(4 * p)


def _m_per_deg_lon(lat_deg: float) -> float:
    p = math.radians(lat_deg)
    return 111412.84 * math.cos(p) - 93.5 * math.cos(3 * p) + 0.118 * math.cos(5 * p)


ATOL_DEG = 2e-7  # about 2 cm on the ground


@pytest.mark.parametrize("lat0", [0.0, 37.77, 47.37, -33.9])
def test_enu_offsets_match_known_degree_lengths(lat0):
    lat, lon = enu_to_wgs84(lat0, 8.5, np.array([0.0, 1000.0]), np.array([1000.0, 0.0]))
    assert lat[0] - lat0 == pytest.approx(1000.0 / _m_per_deg_lat(lat0), abs=ATOL_DEG)
    assert lon[0] == pytest.approx(8.5, abs=1e-12)
    assert lon[1] - 8.5 == pytest.approx(1000.0 / _m_per_deg_lon(lat0), abs=ATOL_DEG)
    assert 1000.0 / _m_per_deg_lat(45.0) == pytest.approx(1 / 111.13, rel=1e-3)  # "1 km = 1/111 deg"


def test_enu_wgs84_round_trip():
    east = np.array([0.0, 12.5, -30.0, 250.0])
    north = np.array([0.0, -7.0, 18.0, -400.0])
    lat, lon = enu_to_wgs84(48.137, 11.575, east, north)
    e2, n2 = wgs84_to_enu(48.137, 11.575, lat, lon)
    np.testing.assert_allclose(e2, east, atol=1e-3)  # the point sits on the tangent plane, not at h=0
    np.testing.assert_allclose(n2, north, atol=1e-3)


def test_distance_m_haversine():
    assert distance_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(2 * math.pi * 6_371_008.8 / 360, rel=1e-9)
    lat, lon = enu_to_wgs84(47.0, 8.0, np.array([30.0]), np.array([40.0]))
    assert distance_m(47.0, 8.0, lat[0], lon[0]) == pytest.approx(50.0, rel=5e-3)
    d = distance_m(np.array([47.0, 47.0]), np.array([8.0, 8.0]), np.array([47.0, 47.001]), np.array([8.0, 8.0]))
    assert d[0] == 0.0 and d[1] == pytest.approx(111.2, rel=5e-3)


def test_locate_places_a_point_and_falls_back_to_the_car():
    calib = make_calib(pitch_deg=10.0, lever_arm_m=(1.0, 0.0, 0.0))
    horizon_row = CY - FY * math.tan(math.radians(10.0))
    uv = np.array([[CX, CY], [CX, horizon_row - 20], [CX, horizon_row]])
    pts = locate(calib, uv, 47.0, 8.0, 90.0, 1.0, 50.0)
    cam_forward = 1.5 / math.tan(math.radians(10.0))
    assert pts[0].ok and pts[0].range_m == pytest.approx(cam_forward, abs=1e-6)
    # heading 90: straight ahead is due east, cam_forward + lever arm from the antenna
    assert pts[0].lat_deg == pytest.approx(47.0, abs=1e-7)
    assert (pts[0].lon_deg - 8.0) * _m_per_deg_lon(47.0) == pytest.approx(cam_forward + 1.0, abs=0.02)
    for p in pts[1:]:
        assert p == GroundPoint(47.0, 8.0, None, False)


def test_locate_without_heading_cannot_orient():
    pts = locate(make_calib(), np.array([[CX, CY], [100.0, 700.0]]), 47.0, 8.0, None, 1.0, 50.0)
    assert pts == [GroundPoint(47.0, 8.0, None, False)] * 2
    assert locate(make_calib(), np.zeros((0, 2)), 47.0, 8.0, 0.0, 1.0, 50.0) == []


def test_save_load_round_trip(tmp_path: Path):
    calib = CameraCalibration(
        image_size_wh=(1280, 720), camera_matrix=np.array([[1156.9, 0, 665.9], [0, 1152.1, 388.1], [0, 0, 1]]),
        dist_coeffs=UDACITY_LIKE_DIST, height_m=1.42, pitch_deg=3.1, roll_deg=-0.4, yaw_deg=0.7,
        lever_arm_m=(1.5, 0.0, 0.2), rms_px=0.41, source='camera_cal "udacity"', calibrated_at="2026-12-03T19:00:00Z",
        notes="pitch from vanishing point")
    calib.save(tmp_path / "sub" / "c.toml")
    back = CameraCalibration.load(tmp_path / "sub" / "c.toml")
    np.testing.assert_array_equal(back.camera_matrix, calib.camera_matrix)
    np.testing.assert_array_equal(back.dist_coeffs, calib.dist_coeffs)
    for name in ("image_size_wh", "height_m", "pitch_deg", "roll_deg", "yaw_deg", "lever_arm_m", "rms_px",
                 "source", "calibrated_at", "notes"):
        assert getattr(back, name) == getattr(calib, name), name


@pytest.mark.parametrize(("text", "message"), [
    ("[intrinsics]\n", "[mount]: missing table"),
    ("[intrinsics]\nimage_size_wh=[1280,720]\ncamera_matrix=[[1,0,0],[0,1,0],[0,0,1]]\ndist_coeffs=[0,0,0,0]\n"
     "[mount]\npitch_deg=3.0\n", "mount.height_m: missing"),
    ("[intrinsics]\nimage_size_wh=[1280,720]\ncamera_matrix=[[1,0,0],[0,1,0],[0,0,1]]\ndist_coeffs=[0,0,0]\n"
     "[mount]\nheight_m=1.5\npitch_deg=3.0\n", "intrinsics.dist_coeffs"),
    ("[intrinsics]\nimage_size_wh=[1280,720]\ncamera_matrix=[[1,0,0],[0,1,0],[0,0,1]]\ndist_coeffs=[0,0,0,0]\n"
     "[mount]\nheight_m=-1.5\npitch_deg=3.0\n", "mount.height_m"),
    ("[intrinsics]\nimage_size_wh=[1280,720]\ncamera_matrix=[[1,0,0],[0,1,0],[0,0,1]]\ndist_coeffs=[0,0,0,0]\n"
     "[mount]\nheight_m=1.5\npitch_deg=3.0\npich_deg=2\n", "mount.pich_deg: unknown key"),
    ("[intrinsics\n", "invalid TOML"),
])
def test_load_errors_name_the_file_and_field(tmp_path: Path, text: str, message: str):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(CalibrationError) as e:
        CameraCalibration.load(p)
    assert str(e.value).startswith(str(p)) and message in str(e.value) and "\n" not in str(e.value)


def test_load_missing_file(tmp_path: Path):
    with pytest.raises(CalibrationError, match="cannot read"):
        CameraCalibration.load(tmp_path / "nope.toml")


def test_for_image_size_scales_intrinsics_and_keeps_geometry():
    calib = make_calib(dist=UDACITY_LIKE_DIST)
    half = calib.for_image_size(640, 360)
    assert half.camera_matrix[0, 0] == pytest.approx(FX / 2)
    assert half.camera_matrix[0, 2] == pytest.approx((CX + 0.5) / 2 - 0.5)
    # the same ground point seen at half resolution sits at (about) half the pixel coordinates
    uv_full, _ = vehicle_to_pixels(calib, np.array([12.0]), np.array([1.5]))
    uv_half, _ = vehicle_to_pixels(half, np.array([12.0]), np.array([1.5]))
    assert uv_half[0] == pytest.approx((uv_full[0] + 0.5) / 2 - 0.5, abs=1e-6)
    assert calib.for_image_size(1281, 721).image_size_wh == (1281, 721)
    with pytest.raises(CalibrationError, match="aspect"):
        calib.for_image_size(960, 720)


def test_bad_direct_construction_names_field():
    with pytest.raises(CalibrationError, match=r"mount\.pitch_deg"):
        make_calib(pitch_deg=95.0)
    with pytest.raises(CalibrationError, match=r"intrinsics\.camera_matrix"):
        CameraCalibration((1280, 720), np.eye(2), np.zeros(5), 1.5, 5.0, 0.0, 0.0)


def test_distorted_horizon_end_points_are_horizontal_rays():
    calib = make_calib(pitch_deg=6.0, roll_deg=2.0, dist=UDACITY_LIKE_DIST)
    (x0, y0), (x1, y1) = horizon_line(calib)
    uv = np.array([[x0, y0 - 3], [x0, y0 + 3], [x1, y1 - 3], [x1, y1 + 3]])
    off = pixels_to_vehicle(calib, uv, 0.0, 1e6)
    assert off.ok.tolist() == [False, True, False, True]
    assert off.range_m[1] > 150 and off.range_m[3] > 150  # just below the horizon is far away


def test_a_stream_of_another_shape_names_the_calibration_file(tmp_path: Path) -> None:
    path = tmp_path / "cam.toml"
    CameraCalibration.load(REPO_ROOT / "calibration" / "default-roof-1080p.toml").save(path)
    calib = CameraCalibration.load(path)
    assert calib.file == str(path)
    with pytest.raises(CalibrationError, match=rf"^{re.escape(str(path))}: image_size_wh: calibrated for 1920x1080"):
        calib.for_image_size(640, 640)
    assert calib.for_image_size(960, 540).file == str(path)  # resized copies keep it
