"""NMEA 0183 parsing against real receiver logs (and gpsd's own decoding of them) and hand-made sentences."""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import itertools
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import shared_path
from vehicle.nmea import GPS_WEEK_ROLLOVER_S, Fix, GpsLogError, read_nmea, split_sentences

KNOT_MPS = 1852.0 / 3600.0


def utc(text: str) -> float:
    """POSIX seconds of an ISO 8601 UTC time (independent of the parser under test)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def sentence(body: str) -> str:
    """A sentence with its checksum: XOR of the characters between '$' and '*'."""
    x = 0
    for ch in body:
        x ^= ord(ch)
    return f"${body}*{x:02X}"


def write(tmp_path: Path, *lines: str | bytes, name: str = "log.nmea") -> Path:
    p = tmp_path / name
    p.write_bytes(b"".join(ln if isinstance(ln, bytes) else (ln + "\r\n").encode() for ln in lines))
    return p


def metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in metres between two close points (equirectangular)."""
    north = math.radians(lat2 - lat1) * 6_371_008.8
    east = math.radians(lon2 - lon1) * math.cos(math.radians(lat1)) * 6_371_008.8
    return math.hypot(north, east)


# -- real logs -------------------------------------------------------------------------------------------------


def test_gopro_walk_matches_its_csv():
    """The GoPro's NMEA (4-decimal minutes, 1/100 s) against the camera's own GPS5 stream in gps.csv."""
    drive = shared_path("drives", "gopro-max-walk")
    fixes = list(read_nmea(drive / "gps.nmea"))
    with (drive / "gps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(fixes) == len(rows) == 191
    assert fixes[0].time_utc == utc("2019-11-18T23:45:14Z")
    for fix, row in zip(fixes, rows, strict=True):
        assert fix.fix_mode == 3 and fix.hdop == 1.6
        assert 0 <= utc(row["utc"]) - fix.time_utc < 0.01  # NMEA time is truncated to 1/100 s
        # 0.0001 arc minute is 0.19 m of latitude: the NMEA position is that rounding of the CSV one
        assert metres(fix.lat_deg, fix.lon_deg, float(row["lat"]), float(row["lon"])) < 0.2
        assert fix.speed_mps == pytest.approx(float(row["speed_mps"]), abs=0.006)
        assert fix.alt_m == pytest.approx(float(row["alt_m"]), abs=0.051)


def _chk_tpvs(path: Path) -> dict[float, dict]:
    """gpsd's regression output: the last TPV per time, merged over the TPVs of one epoch."""
    out: dict[float, dict] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith('{"class":"TPV"') and '"time"' in line:
            tpv = json.loads(line)
            key = round(utc(tpv["time"]), 3)
            out[key] = {**out.get(key, {}), **tpv}
    return out


@pytest.mark.parametrize(
    ("log", "n_epochs", "n_fixes", "bad_checksums"),
    [
        ("telit-he910", 187, 187, 0),
        ("nmea-rtk", 122, 122, 0),
        ("skytraq-dgps", 96, 96, 0),
        ("firefly-II", 23, 23, 23),  # every GGA has a bad checksum (its fix-quality field was cut)
        ("gpsdf", 51, 51, 0),  # its 46 bad checksums are in proprietary $PGLOR, never checked
        ("ublox-zed-f9r", 30, 30, 79),  # UBX binary mixed with NMEA
        ("ublox-zed-f9t-ubx_nmea_l5", 9, 9, 28),
        ("mr-350p", 14, 14, 0),  # GGA + ZDA only
        ("bu353-glonass", 19, 9, 0),  # fix acquired mid-log
        ("ch-4711", 14, 7, 0),  # fix lost and regained
        ("skytraq", 17, 0, 0),  # never a fix
    ],
)
def test_gpsd_testlogs_agree_with_gpsd(log, n_epochs, n_fixes, bad_checksums):
    """Every epoch gpsd decoded has the same time, fix/no-fix, position, speed and course here."""
    path = shared_path("gps", "gpsd-testlogs", f"{log}.log")
    reader = read_nmea(path)
    fixes = list(reader)
    assert len(fixes) == n_epochs
    assert sum(f.fix_mode >= 2 for f in fixes) == n_fixes
    assert reader.counters["bad_checksum"] == bad_checksums
    ours = {round(f.time_utc, 3): f for f in fixes}
    chk = _chk_tpvs(path.with_suffix(".log.chk"))
    assert chk, "gpsd produced no timed TPV"
    assert set(chk) <= set(ours)  # gpsd may leave out the final epoch, never one in the middle
    for key, tpv in chk.items():
        fix = ours[key]
        assert (fix.fix_mode >= 2) == (tpv.get("mode", 0) >= 2), key
        if fix.fix_mode >= 2:
            assert fix.lat_deg == pytest.approx(tpv["lat"], abs=1e-9)
            assert fix.lon_deg == pytest.approx(tpv["lon"], abs=1e-9)
            if "speed" in tpv and fix.speed_mps is not None:  # gpsd derives speed when none is sent
                assert fix.speed_mps == pytest.approx(tpv["speed"], abs=0.0006)
            if "track" in tpv and fix.track_deg is not None:
                assert fix.track_deg == pytest.approx(tpv["track"], abs=1e-4)
            if "altMSL" in tpv and fix.alt_m is not None:
                assert fix.alt_m == pytest.approx(tpv["altMSL"], abs=1e-4)
        else:
            assert math.isnan(fix.lat_deg) and math.isnan(fix.lon_deg)


def test_gns_and_zda_without_rmc():
    """Trimble-style $GN log: GNS positions dated by ZDA (gpsd itself prefers a proprietary averaged position)."""
    path = shared_path("gps", "gpsd-testlogs", "ericsson-gru04-02-70sec.log")
    fixes = list(read_nmea(path))
    assert len(fixes) == 71 and all(f.fix_mode == 3 for f in fixes)
    assert fixes[0].time_utc == utc("2026-02-12T21:37:12Z") and fixes[-1].time_utc == utc("2026-02-12T21:38:22Z")
    assert fixes[0].lat_deg == pytest.approx(41 + 11.59903 / 60) and fixes[0].lon_deg == pytest.approx(
        -(111 + 56.54809 / 60)
    )
    assert fixes[0].alt_m == 1482.5 and fixes[0].hdop == 0.93
    assert set(_chk_tpvs(path.with_suffix(".log.chk"))) == {round(f.time_utc, 3) for f in fixes}


def test_week_rollover_after_april_2019_is_corrected():
    """Telit HE910 after the 2019-04-06 rollover reports 1999 (and the year "-1"); gpsd's regression keeps 1999."""
    path = shared_path("gps", "gpsd-testlogs", "april6_2019.log")
    reader = read_nmea(path)
    fixes = list(reader)
    assert [f.time_utc for f in fixes] == [
        pytest.approx(utc("2019-04-07T00:02:31.099Z"), abs=1e-6),
        pytest.approx(utc("2019-04-07T00:02:31.420Z"), abs=1e-6),
    ]
    assert reader.counters["rollover_corrected"] == 2
    (tpv,) = _chk_tpvs(path.with_suffix(".log.chk")).values()
    assert utc(tpv["time"]) == utc("1999-08-22T00:02:31.420Z")
    assert fixes[1].time_utc - utc(tpv["time"]) == pytest.approx(GPS_WEEK_ROLLOVER_S)
    assert (fixes[1].lat_deg, fixes[1].lon_deg) == pytest.approx((tpv["lat"], tpv["lon"]), abs=1e-9)


def test_no_fix_epochs_with_the_receivers_default_date_are_dropped():
    """MTK-3301 reports 1980-01-05 with status V until its first fix: no time to place those epochs at."""
    path = shared_path("gps", "gpsd-testlogs", "mtk-3301.log")
    reader = read_nmea(path)
    fixes = list(reader)
    assert reader.counters["untimed_no_fix"] > 0
    assert all(f.time_utc >= utc("2008-08-23T08:14:00Z") for f in fixes)
    chk = _chk_tpvs(path.with_suffix(".log.chk"))
    assert set(chk) <= {round(f.time_utc, 3) for f in fixes}


def test_munich_drive_has_one_backward_step():
    path = shared_path("gps", "genivi-drives", "extracted", "logs_v1", "munich-gps.nmea")
    fixes = list(read_nmea(path))
    # independently: the RMC times of the file, in order
    tods = [m.group(1) for m in re.finditer(rb"RMC,(\d{6}(?:\.\d+)?),", path.read_bytes())]
    back = [i for i in range(1, len(tods)) if float(tods[i]) < float(tods[i - 1])]
    assert len(back) == 1
    times = [f.time_utc for f in fixes]
    assert sum(b < a for a, b in itertools.pairwise(times)) == 1
    assert times[0] == utc("2009-04-01T12:40:22Z") and times[-1] == utc("2009-04-01T13:11:26Z")


def test_switzerland_motorway_drive():
    path = shared_path("gps", "genivi-drives", "extracted", "NMEA_Logs", "20100403_Z205_Switzerland.txt")
    reader = read_nmea(path)
    fixes = [f for f in reader if f.fix_mode >= 2]
    assert len(fixes) > 10_000
    assert fixes[-1].time_utc - fixes[0].time_utc == pytest.approx(3 * 3600, abs=600)  # about three hours
    top_kmh = max(f.speed_mps or 0 for f in fixes) * 3.6
    assert 120 < top_kmh < 140  # "up to 130 km/h"
    assert all(45.5 < f.lat_deg < 48 and 5.5 < f.lon_deg < 10.6 for f in fixes)  # in Switzerland


@pytest.mark.parametrize(
    ("name", "first", "last", "n"),
    [
        # GGA only; the ZDA at the very end (00:04:19 on 9 March) dates the whole log, across midnight
        ("backfilldate.nmea", "2019-03-08T23:56:00Z", "2019-03-09T00:04:19Z", 500),
        ("backfilldate2.nmea", "2019-03-08T23:56:00Z", "2019-03-08T23:59:59Z", 240),
        # hourly GGA over three days, dated by one ZDA in the middle or at the end
        ("addmultipledaysmid.nmea", "2019-03-08T22:00:00Z", "2019-03-10T01:00:00Z", 28),
        ("addmultipledaysbkw.nmea", "2019-03-08T22:00:00Z", "2019-03-10T01:00:00Z", 28),
    ],
)
def test_gpsbabel_midnight_and_multiday_dates(name, first, last, n):
    fixes = list(read_nmea(shared_path("gps", "gpsbabel", "reference", "track", name)))
    assert len(fixes) == n
    assert fixes[0].time_utc == utc(first) and fixes[-1].time_utc == utc(last)
    steps = {b.time_utc - a.time_utc for a, b in itertools.pairwise(fixes)}
    assert len(steps) == 1 and steps.pop() > 0  # evenly spaced, always forward


def test_gpsbabel_odd_time_fields():
    """Times like '222509.', '222517 ', ' 222519' parse; '222515.x' and '.1' are skipped."""
    reader = read_nmea(shared_path("gps", "gpsbabel", "reference", "track", "nmeadatetime.nmea"))
    times = [f.time_utc for f in reader]
    day = utc("2019-10-23T00:00:00Z")
    assert day + 22 * 3600 + 25 * 60 + 9 in times
    assert day + 22 * 3600 + 25 * 60 + 17 in times and day + 22 * 3600 + 25 * 60 + 19 in times
    assert day + 22 * 3600 + 25 * 60 + 15 not in times
    assert reader.counters["malformed"] == 3 * 2  # three bad times, each in an RMC and a GGA


def test_binary_mixed_with_nmea_pynmeagps():
    """UBX binary with an NMEA sentence spliced right after it on the same line."""
    path = shared_path("gps", "pynmeagps", "tests", "pygpsdata-mixed.log")
    reader = read_nmea(path)
    assert list(reader) == []  # GGA only, no date anywhere: nothing can be placed in time
    assert reader.counters["used_sentences"] >= 2 and reader.counters["undated_epochs"] == 2


def test_bad_checksum_sentences_are_skipped_pynmeagps():
    reader = read_nmea(shared_path("gps", "pynmeagps", "tests", "pygpsdata-nmeabadck.log"))
    (fix,) = list(reader)
    assert reader.counters["bad_checksum"] == 2
    # the one good RMC has longitude 102 deg W (the two bad ones say 002)
    assert fix.lon_deg == pytest.approx(-(102 + 14.42462 / 60), abs=1e-9)


# -- hand-made sentences ---------------------------------------------------------------------------------------


RMC = "GPRMC,123519.00,A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W"
GGA = "GPGGA,123519.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"


def test_rmc_and_gga_merge_into_one_epoch(tmp_path):
    path = write(tmp_path, sentence(RMC), sentence(GGA), sentence("GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"))
    (fix,) = list(read_nmea(path))
    assert fix == Fix(
        time_utc=calendar.timegm((2024, 3, 23, 12, 35, 19)),
        lat_deg=pytest.approx(48 + 7.038 / 60),
        lon_deg=pytest.approx(11 + 31.0 / 60),
        alt_m=545.4,
        speed_mps=pytest.approx(22.4 * KNOT_MPS),
        track_deg=84.4,
        fix_mode=3,
        hdop=0.9,
    )


def test_southern_western_hemispheres_and_other_talkers(tmp_path):
    path = write(
        tmp_path,
        sentence("GNRMC,000001,A,3351.000,S,15112.000,W,0.0,,010120,,,A"),
        sentence("GLGGA,000002,3351.000,S,15112.000,W,1,05,1.5,,M,,M,,"),
    )
    first, second = read_nmea(path)
    assert (first.lat_deg, first.lon_deg) == pytest.approx((-33.85, -151.2))
    assert first.fix_mode == 2 and first.alt_m is None
    assert second.time_utc == calendar.timegm((2020, 1, 1, 0, 0, 2))  # GGA dated by the RMC before it


def test_midnight_rollover_without_rmc_after_it(tmp_path):
    path = write(
        tmp_path,
        sentence("GPRMC,235959.50,A,4807.038,N,01131.000,E,0.0,0.0,311221,,"),
        sentence("GPGGA,000000.50,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
    )
    a, b = read_nmea(path)
    assert a.time_utc == calendar.timegm((2021, 12, 31, 23, 59, 59)) + 0.5
    assert b.time_utc - a.time_utc == pytest.approx(1.0)  # 2022-01-01, not 2021-12-31


def test_void_rmc_and_zero_quality_gga_are_no_fix(tmp_path):
    path = write(
        tmp_path,
        sentence("GPRMC,101010,V,4807.038,N,01131.000,E,,,010120,,,N"),
        sentence("GPGGA,101011,4807.038,N,01131.000,E,0,00,,,M,,M,,"),
        sentence("GPRMC,101011,A,4807.038,N,01131.000,E,1.0,10.0,010120,,,A"),
    )
    fixes = list(read_nmea(path))
    assert [f.fix_mode for f in fixes] == [1, 1]  # an RMC 'A' does not override the GGA's "no fix"
    assert all(math.isnan(f.lat_deg) for f in fixes)


def test_spliced_truncated_and_noisy_lines(tmp_path):
    good = sentence(RMC)
    path = write(
        tmp_path,
        good[:30] + sentence(GGA),  # a sentence cut short, then a whole one on the same line
        b"\x00\xff\xb5b\x01\x07$\x8f\x10" + sentence(RMC).encode() + b"\r\n",  # binary before a sentence
        good[:-2] + "00",  # wrong checksum
        "$GPRMC,123520.00,A,4807.0",  # truncated, no checksum, alone on its line: still not a whole RMC
        RMC.replace("123519", "123521"),  # no '$', no checksum: noise
    )
    reader = read_nmea(path)
    fixes = list(reader)
    assert len(fixes) == 1 and fixes[0].alt_m == 545.4 and fixes[0].track_deg == 84.4
    c = reader.counters
    assert c["garbled"] == 2 and c["bad_checksum"] == 1
    assert c["used_sentences"] == 2


def test_sentence_without_checksum_alone_on_a_line_is_accepted(tmp_path):
    path = write(tmp_path, "$" + RMC)
    (fix,) = read_nmea(path)
    assert fix.fix_mode == 2 and fix.speed_mps == pytest.approx(22.4 * KNOT_MPS)


def test_vtg_gives_speed_and_course_when_rmc_has_none(tmp_path):
    path = write(
        tmp_path,
        sentence("GPRMC,101011,A,4807.038,N,01131.000,E,,,010120,,,A"),
        sentence("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A"),
    )
    (fix,) = read_nmea(path)
    assert fix.track_deg == 54.7 and fix.speed_mps == pytest.approx(5.5 * KNOT_MPS)


def test_split_sentences_checks_lowercase_hex():
    body = "GPGSA,A,3,,,,,,,,,,,,,4.9,1.6,4.5"
    line = sentence(body).lower().encode()
    line = b"$" + body.encode() + line[-3:]
    found, rejected = split_sentences(line)
    assert found == [body.split(",")] and rejected["bad_checksum"] == 0


# -- errors ----------------------------------------------------------------------------------------------------


def test_missing_empty_and_useless_files(tmp_path):
    with pytest.raises(GpsLogError, match=r"nope\.nmea: cannot read"):
        read_nmea(tmp_path / "nope.nmea")
    empty = write(tmp_path, name="empty.nmea")
    with pytest.raises(GpsLogError, match=r"empty\.nmea:0: empty GPS log"):
        read_nmea(empty)
    with pytest.raises(GpsLogError, match="not a file"):
        read_nmea(tmp_path)
    junk = write(tmp_path, "hello", "$GPRMC,bad*00", b"\x00\x01\x02", name="junk.nmea")
    with pytest.raises(GpsLogError, match=r"junk\.nmea:3: no usable NMEA sentence in 3 lines") as err:
        list(read_nmea(junk))
    assert "\n" not in str(err.value)


def test_binary_only_receiver_log_is_an_error():
    """SiRF binary without NMEA (gpsd's bu303-nofix) has nothing for this reader."""
    with pytest.raises(GpsLogError, match="no usable NMEA sentence"):
        list(read_nmea(shared_path("gps", "gpsd-testlogs", "bu303-nofix.log")))


# -- fuzzing ---------------------------------------------------------------------------------------------------


def _check_fixes(fixes: list[Fix]) -> None:
    for f in fixes:
        assert math.isfinite(f.time_utc) and f.time_utc >= utc("2000-01-01T00:00:00Z")
        assert f.fix_mode in (1, 2, 3)
        if f.fix_mode >= 2:
            assert -90 <= f.lat_deg <= 90 and -180 <= f.lon_deg <= 180
        if f.track_deg is not None:
            assert 0 <= f.track_deg < 360


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "fuzz.nmea"
    path.write_bytes(data)
    try:
        _check_fixes(list(read_nmea(path)))
    except GpsLogError as exc:
        assert "\n" not in str(exc)


_FIELD = st.one_of(
    st.from_regex(r"[0-9]{0,7}(\.[0-9]{0,5})?", fullmatch=True),
    st.sampled_from(["A", "V", "N", "S", "E", "W", "M", "T", "K", "-1", "", "nan", "inf", "1e309", "-0"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="$*,"), max_size=8),
)
_SENTENCE = st.builds(
    lambda talker, kind, fields: sentence(",".join([talker + kind, *fields])),
    st.sampled_from(["GP", "GN", "GL", "BD", "XX"]),
    st.sampled_from(["RMC", "GGA", "GNS", "GSA", "VTG", "ZDA", "GSV"]),
    st.lists(_FIELD, max_size=16),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(_SENTENCE, st.sampled_from([sentence(RMC), sentence(GGA)])), max_size=30))
def test_fuzz_checksummed_sentences_with_random_fields(tmp_path, lines):
    """Well-framed sentences whose fields are anything: still only fixes that make sense, or GpsLogError."""
    path = tmp_path / "fuzz.nmea"
    path.write_text("\r\n".join(lines))
    try:
        _check_fixes(list(read_nmea(path)))
    except GpsLogError as exc:
        assert "\n" not in str(exc)
