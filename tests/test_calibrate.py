"""`patrol calibrate`: synthetic boards through a known camera, the real Udacity set, mount solves, check picture."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, shared_path
from vehicle.calibrate import (
    add_calibrate_parser,
    calibrate_intrinsics,
    check_picture,
    draw_check,
    mount_from_lane_lines,
    mount_from_measurements,
    mount_from_points,
    parse_board,
    read_ground_points,
)
from vehicle.geometry import CalibrationError, CameraCalibration, vehicle_to_pixels

TRUE_K = np.array([[700.0, 0.0, 331.0], [0.0, 705.0, 236.0], [0.0, 0.0, 1.0]])
TRUE_DIST = np.array([-0.18, 0.05, 0.0005, -0.0003, 0.0])
SIZE_WH = (640, 480)
BOARD = (9, 6)
SQUARE_M = 0.04


def pixel_source_map() -> tuple[np.ndarray, np.ndarray]:
    """For each pixel of the distorted image, where it comes from in a pinhole image with TRUE_K (cv2.remap maps)."""
    w, h = SIZE_WH
    us, vs = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pix = np.column_stack([us.ravel(), vs.ravel()]).reshape(-1, 1, 2)
    src = cv2.undistortPoints(pix, TRUE_K, TRUE_DIST, P=TRUE_K,
                              criteria=(cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 50, 1e-6)).reshape(h, w, 2)
    return src[..., 0].astype(np.float32), src[..., 1].astype(np.float32)


def render_board(rvec: np.ndarray, tvec: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Photograph a printed 9x6-corner chessboard (white margin on a grey wall) with TRUE_K / TRUE_DIST.

    The board texture goes through the plane's homography K [r1 r2 t] into a pinhole image, which the
    remap maps then bend with the lens distortion; a slight blur stands in for the lens.
    """
    px_per_m = 2500.0  # 100 texture pixels per 40 mm square
    margin_m = 2 * SQUARE_M
    cols, rows = BOARD[0] + 1, BOARD[1] + 1  # squares
    tex_w, tex_h = (round((n * SQUARE_M + 2 * margin_m) * px_per_m) for n in (cols, rows))
    yy, xx = np.mgrid[0:tex_h, 0:tex_w]
    bx, by = (xx + 0.5) / px_per_m - margin_m, (yy + 0.5) / px_per_m - margin_m  # metres from the board corner
    inside = (bx >= 0) & (bx < cols * SQUARE_M) & (by >= 0) & (by < rows * SQUARE_M)
    dark = inside & ((np.floor(bx / SQUARE_M) + np.floor(by / SQUARE_M)) % 2 == 0)
    texture = np.where(dark, 25, 235).astype(np.uint8)
    rot, _ = cv2.Rodrigues(rvec)
    # texture pixel -> board metres, with the first inner corner at the board origin (one square in)
    to_board = np.array([[1 / px_per_m, 0, -margin_m - SQUARE_M + 0.5 / px_per_m],
                         [0, 1 / px_per_m, -margin_m - SQUARE_M + 0.5 / px_per_m], [0, 0, 1]])
    homography = TRUE_K @ np.column_stack([rot[:, 0], rot[:, 1], tvec]) @ to_board
    pinhole = cv2.warpPerspective(texture, homography, SIZE_WH, flags=cv2.INTER_AREA, borderValue=90)
    photo = cv2.remap(pinhole, maps[0], maps[1], cv2.INTER_LINEAR, borderValue=90)
    return cv2.GaussianBlur(photo, (0, 0), 0.7)


@pytest.fixture(scope="module")
def synthetic_board_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("boards")
    rng = np.random.default_rng(7)
    centre = np.array([(BOARD[0] - 1) / 2, (BOARD[1] - 1) / 2, 0.0]) * SQUARE_M
    maps = pixel_source_map()
    for k in range(12):
        angles = np.radians([rng.uniform(-30, 30), rng.uniform(-30, 30), rng.uniform(-15, 15)])
        rot, _ = cv2.Rodrigues(angles)
        offset = np.array([rng.uniform(-0.12, 0.12), rng.uniform(-0.08, 0.08), rng.uniform(0.55, 0.85)])
        tvec = offset - rot @ centre  # board centre at `offset` in front of the camera
        cv2.imwrite(str(folder / f"board{k:02d}.png"), render_board(angles, tvec, maps))
    (folder / "notes.txt").write_text("not an image")
    cv2.imwrite(str(folder / "wall.png"), np.full((480, 640), 90, np.uint8))  # no board at all
    cv2.imwrite(str(folder / "small.png"), np.full((240, 320), 90, np.uint8))  # another camera's size
    return folder


def test_synthetic_boards_recover_the_known_camera(synthetic_board_dir: Path):
    res = calibrate_intrinsics(synthetic_board_dir, *BOARD, SQUARE_M * 1000)
    k = res.calibration.camera_matrix
    for got, want in ((k[0, 0], 700.0), (k[1, 1], 705.0), (k[0, 2], 331.0), (k[1, 2], 236.0)):
        assert got == pytest.approx(want, rel=0.005)
    assert res.rms_px < 0.3
    assert len(res.per_image_rms_px) == 12 and max(res.per_image_rms_px.values()) < 0.5
    reasons = {s.name: s.reason for s in res.skipped}
    assert set(reasons) == {"wall.png", "small.png"}
    assert "9x6 board not found" in reasons["wall.png"]
    assert "size 320x240 differs from 640x480" in reasons["small.png"]
    assert res.calibration.image_size_wh == SIZE_WH and res.warnings == ()


def test_real_udacity_chessboards_rms_below_one_pixel(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    images = shared_path("calibration", "udacity-car-camera", "camera_cal")
    out = tmp_path / "udacity.toml"
    args = _parse(["calibrate", "intrinsics", "--images", str(images), "--board", "9x6", "--square-mm", "25",
                   "--out", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    calib = CameraCalibration.load(out)
    assert calib.rms_px is not None and calib.rms_px < 1.0
    assert calib.image_size_wh == (1280, 720)
    # the three boards partly out of frame and the two 1281x721 photos are named, with the reason
    for name in ("calibration1.jpg", "calibration4.jpg", "calibration5.jpg"):
        assert f"skipped {name}: " in printed and "partly out of frame" in printed.split(f"skipped {name}: ")[1]
    for name in ("calibration7.jpg", "calibration15.jpg"):
        assert f"skipped {name}: size 1281x721 differs from 1280x720" in printed
    assert "15 of 20 images" in calib.source
    # and the shipped file is this calibration
    shipped = CameraCalibration.load(REPO_ROOT / "calibration" / "udacity-car-camera.toml")
    np.testing.assert_allclose(shipped.camera_matrix, calib.camera_matrix, rtol=1e-6)
    assert shipped.rms_px == pytest.approx(calib.rms_px, rel=1e-6)


def test_intrinsics_keeps_an_existing_mount(synthetic_board_dir: Path, tmp_path: Path):
    out = tmp_path / "c.toml"
    _mounted(pitch_deg=7.0).save(out)
    args = _parse(["calibrate", "intrinsics", "--images", str(synthetic_board_dir), "--board", "9x6",
                   "--square-mm", "40", "--out", str(out)])
    assert args.func(args) == 0
    calib = CameraCalibration.load(out)
    assert calib.pitch_deg == 7.0 and calib.height_m == 1.45
    assert calib.camera_matrix[0, 0] == pytest.approx(700.0, rel=0.005)


def _mounted(height_m: float = 1.45, pitch_deg: float = 6.0, roll_deg: float = 0.8, yaw_deg: float = -1.2,
             lever_arm_m: tuple[float, float, float] = (0.9, -0.25, 0.3)) -> CameraCalibration:
    return CameraCalibration(image_size_wh=(1280, 720), camera_matrix=np.array([[1150.0, 0, 652.0],
                                                                                [0, 1147.0, 371.0], [0, 0, 1]]),
                             dist_coeffs=np.array([-0.25, 0.04, 0.0005, -0.0002, -0.05]), height_m=height_m,
                             pitch_deg=pitch_deg, roll_deg=roll_deg, yaw_deg=yaw_deg, lever_arm_m=lever_arm_m)


GROUND_POINTS_M = np.array([[6.0, -2.0], [6.0, 2.5], [10.0, -3.0], [10.0, 3.0], [18.0, -1.5], [18.0, 4.0],
                            [25.0, 0.0], [8.0, 0.5]])


def test_mount_solve_recovers_height_and_pitch_from_projected_points():
    truth = _mounted()
    uv, visible = vehicle_to_pixels(truth, GROUND_POINTS_M[:, 0], GROUND_POINTS_M[:, 1])
    assert visible.all()
    start = _mounted(height_m=1.0, pitch_deg=0.0, roll_deg=0.0, yaw_deg=0.0, lever_arm_m=(0.0, 0.0, 0.3))
    sol = mount_from_points(start, uv, GROUND_POINTS_M[:, 0], GROUND_POINTS_M[:, 1])
    got = sol.calibration
    assert got.height_m == pytest.approx(1.45, abs=0.01)
    assert got.pitch_deg == pytest.approx(6.0, abs=0.1)
    assert got.roll_deg == pytest.approx(0.8, abs=0.1)
    assert got.yaw_deg == pytest.approx(-1.2, abs=0.1)
    assert got.lever_arm_m == pytest.approx((0.9, -0.25, 0.3), abs=0.01)
    assert len(sol.residuals) == 8 and max(r.error_px for r in sol.residuals) < 0.01


def test_mount_solve_with_clicking_noise_reports_residuals():
    truth = _mounted()
    f, r = np.meshgrid(np.arange(6.0, 26.0, 4.0), np.arange(-4.0, 4.5, 2.0))
    f, r = f.ravel(), r.ravel()
    uv, _ = vehicle_to_pixels(truth, f, r)
    noisy = uv + np.random.default_rng(3).normal(0, 0.5, uv.shape)  # half-pixel clicks
    noisy[0] += [15.0, 0.0]  # one badly clicked point stands out in the residuals
    sol = mount_from_points(truth, noisy, f, r)
    errors = [res.error_px for res in sol.residuals]
    assert int(np.argmax(errors)) == 0 and errors[0] > 5.0
    assert sol.calibration.height_m == pytest.approx(1.45, abs=0.05)
    assert sol.calibration.pitch_deg == pytest.approx(6.0, abs=0.3)


def test_mount_solve_needs_four_points():
    with pytest.raises(CalibrationError, match="at least 4"):
        mount_from_points(_mounted(), np.zeros((3, 2)), np.ones(3), np.ones(3))


def test_a_points_file_with_a_header_only_says_so(tmp_path: Path):
    path = tmp_path / "p.csv"
    path.write_text("u_px,v_px,forward_m,right_m\n")
    with pytest.raises(CalibrationError, match=r"p\.csv: no rows after the header"):
        read_ground_points(path)
    path.write_text("u,v\n1,2\n")
    with pytest.raises(CalibrationError, match=r"p\.csv: header must name columns u_px, v_px, forward_m, right_m"):
        read_ground_points(path)


def test_mount_solve_refuses_points_on_one_line():
    truth = _mounted()
    f, r = np.array([6.0, 10.0, 14.0, 18.0]), np.zeros(4)  # one row straight ahead
    uv, _ = vehicle_to_pixels(truth, f, r)
    with pytest.raises(CalibrationError, match="ground positions lie on one line"):
        mount_from_points(truth, uv, f, r)
    uv_good, _ = vehicle_to_pixels(truth, GROUND_POINTS_M[:4, 0], GROUND_POINTS_M[:4, 1])
    with pytest.raises(CalibrationError, match="pixels lie on one line"):  # four clicks on one spot
        mount_from_points(truth, np.repeat(uv_good[:1], 4, axis=0), GROUND_POINTS_M[:4, 0], GROUND_POINTS_M[:4, 1])


def test_mount_from_lane_lines_recovers_pitch_yaw_height():
    truth = _mounted(height_m=1.24, pitch_deg=-1.5, roll_deg=0.0, yaw_deg=1.6, lever_arm_m=(0.0, 0.0, 0.0))
    fwd = np.linspace(7.0, 40.0, 8)
    left, _ = vehicle_to_pixels(truth, fwd, np.full(8, -1.75))
    right, _ = vehicle_to_pixels(truth, fwd, np.full(8, 1.91))
    got = mount_from_lane_lines(_mounted(), left, right, lane_width_m=3.66)
    assert got.height_m == pytest.approx(1.24, abs=0.005)
    assert got.pitch_deg == pytest.approx(-1.5, abs=0.01)
    assert got.yaw_deg == pytest.approx(1.6, abs=0.01)


def test_mount_cli_measured_and_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "c.toml"
    _mounted().save(path)
    args = _parse(["calibrate", "mount", "--calibration", str(path), "--height-m", "2.1", "--pitch-deg", "9",
                   "--roll-deg", "-0.5", "--yaw-deg", "0.25"])
    assert args.func(args) == 0
    calib = CameraCalibration.load(path)
    assert (calib.height_m, calib.pitch_deg, calib.roll_deg, calib.yaw_deg) == (2.1, 9.0, -0.5, 0.25)
    uv, _ = vehicle_to_pixels(_mounted(), GROUND_POINTS_M[:, 0], GROUND_POINTS_M[:, 1])
    csv_path = tmp_path / "points.csv"
    csv_path.write_text("u_px,v_px,forward_m,right_m\n" + "".join(
        f"{u},{v},{f},{r}\n" for (u, v), (f, r) in zip(uv, GROUND_POINTS_M, strict=True)))
    args = _parse(["calibrate", "mount", "--calibration", str(path), "--points", str(csv_path)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("point ") == 8 and "point 1 (6 m, -2 m): 0.00 px" in printed
    assert CameraCalibration.load(path).pitch_deg == pytest.approx(6.0, abs=0.01)
    csv_path.write_text("u_px,v_px,forward_m,right_m\n1,2,three,4\n")
    assert args.func(args) == 1
    assert "line 2: forward_m: not a number" in capsys.readouterr().err


def test_five_degree_pitch_error_moves_the_drawn_horizon():
    frame = np.full((720, 1280, 3), 128, np.uint8)
    right = _mounted(pitch_deg=4.0, roll_deg=0.0)
    wrong = mount_from_measurements(right, right.height_m, 9.0, 0.0, right.yaw_deg)
    rows = []
    for calib in (right, wrong):
        picture = draw_check(calib, frame)
        red = (picture[:, :, 2] > 200) & (picture[:, :, 1] < 60) & (picture[:, :, 0] < 60)
        column = red[:, 652]  # where the red horizon crosses the principal point's column
        rows.append(float(np.flatnonzero(column).mean()))
    # pinhole: the horizon crosses the principal column at cy - fy tan(pitch); near the image centre the
    # lens (k1 = -0.25) pulls it in by about k1 r^2 ~ 0.25 % only
    for row, pitch_deg in zip(rows, (4.0, 9.0), strict=True):
        assert row == pytest.approx(371.0 - 1147.0 * math.tan(math.radians(pitch_deg)), abs=3)
    shift = rows[0] - rows[1]  # 1147 * (tan 9 - tan 4) = 101.5 px higher with the 5-degree error
    assert shift == pytest.approx(101.5, abs=3)


def test_check_picture_on_the_udacity_frame(tmp_path: Path):
    frame_path = shared_path("calibration", "udacity-car-camera", "test_images", "straight_lines2.jpg")
    calib_path = tmp_path / "u.toml"
    CameraCalibration.load(REPO_ROOT / "calibration" / "udacity-car-camera.toml").save(calib_path)
    out = check_picture(calib_path, frame_path)
    assert out == tmp_path / "u-check.png"
    picture, frame = cv2.imread(str(out)), cv2.imread(str(frame_path))
    assert picture.shape == frame.shape
    changed = np.any(picture != frame, axis=2)
    assert changed[40:380].mean() < 0.01  # the sky stays clean below the title bar
    assert changed[450:690].mean() > 0.05  # the grid lies on the road
    with pytest.raises(CalibrationError, match=r"chk\.txt: --out: the check picture is a PNG"):
        check_picture(calib_path, frame_path, tmp_path / "chk.txt")
    assert not (tmp_path / "chk.txt").exists()


def test_board_and_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert parse_board("9x6") == (9, 6)
    with pytest.raises(CalibrationError, match="--board"):
        parse_board("nine by six")
    args = _parse(["calibrate", "check", "--calibration", str(tmp_path / "none.toml"), "--frame", "x.png"])
    assert args.func(args) == 1
    assert "none.toml: cannot read" in capsys.readouterr().err
    calib = REPO_ROOT / "calibration" / "udacity-car-camera.toml"
    args = _parse(["calibrate", "check", "--calibration", str(calib), "--frame", str(tmp_path / "none.png"),
                   "--out", str(tmp_path / "c.png")])
    assert args.func(args) == 1
    assert capsys.readouterr().err.splitlines() == [f"patrol: error: {tmp_path / 'none.png'}: --frame: no such file"]
    square = tmp_path / "square.png"
    cv2.imwrite(str(square), np.zeros((400, 400, 3), np.uint8))
    args = _parse(["calibrate", "check", "--calibration", str(calib), "--frame", str(square),
                   "--out", str(tmp_path / "c.png")])
    assert args.func(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"patrol: error: {square}: --frame is 400x400, but {calib} is "
                                               "calibrated for 1280x720"), err


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="patrol")
    add_calibrate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_lane_mount_on_real_udacity_frames_is_plausible():
    """The shipped mount came from lane lines; recheck that its lanes are 3.66 m wide and parallel."""
    from vehicle.geometry import pixels_to_vehicle

    shared_path("calibration", "udacity-car-camera", "test_images")
    calib = CameraCalibration.load(REPO_ROOT / "calibration" / "udacity-car-camera.toml")
    # line centres read from straight_lines2.jpg (white dashes left, solid white right)
    left = np.array([[425, 570], [398, 590], [370, 610], [343, 630], [316, 650], [301, 660]], float)
    right = np.array([[688, 450], [782, 510], [876, 570], [970, 630], [1018, 660]], float)
    lo = pixels_to_vehicle(calib, left, 3.0, 60.0)
    ro = pixels_to_vehicle(calib, right, 3.0, 60.0)
    assert lo.ok.all() and ro.ok.all()
    assert np.ptp(ro.right_m) < 0.1 and np.ptp(lo.right_m) < 0.1  # parallel to the car's axis over 5-45 m
    assert ro.right_m.mean() - lo.right_m.mean() == pytest.approx(3.66, abs=0.05)
    assert math.isclose(calib.height_m, 1.24)
