"""The car's configuration: one TOML file, validated into frozen models.

Every field has a default and a unit in its name. `load_config` raises `ConfigError` with one line that
names the file, the dotted key and what is wrong; the service exits with code 2 on it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?", re.ASCII)


class ConfigError(ValueError):
    """Invalid configuration; the message is one line naming the key."""


class _Section(BaseModel):
    # inf and NaN parse as TOML floats; no setting means either (an infinite timeout stops paho's thread).
    # strict: TOML has real types, so `max_detections = true` or `port = "1883"` is a mistake, not a number.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class CameraConfig(_Section):
    """Where frames come from and how the camera sits on the car."""

    source: str = Field(
        default="",
        description="video file, folder of stills, /dev/videoN, rtsp://..., or a GStreamer pipeline ending in appsink",
    )
    calibration_file: str = Field(default="calibration/default-roof-1080p.toml", description="camera calibration TOML")
    max_fps: float = Field(
        default=0.0, ge=0, le=1000, description="live: read at most this many frames a second (0: all)"
    )
    watchdog_timeout_s: float = Field(
        default=5.0, gt=0, le=3600, description="no frame for this long: reopen the source"
    )
    reopen_backoff_max_s: float = Field(default=30.0, gt=0, le=3600, description="longest wait between reopen attempts")
    stills_interval_s: float = Field(
        default=1.0, gt=0, le=3600, description="folder of stills without timestamps: assumed time between images"
    )


class GpsConfig(_Section):
    """Where poses come from."""

    source: str = Field(default="gpsd", description="'gpsd' (live), or an NMEA / gpsd-JSON log file to replay")
    gpsd_host: str = Field(default="127.0.0.1", description="where gpsd listens")
    gpsd_port: int = Field(default=2947, ge=1, le=65535, description="gpsd's TCP port")
    max_fix_age_s: float = Field(
        default=3.0, gt=0, le=3600, description="a fix older than this at a frame counts as no fix"
    )
    stopped_speed_mps: float = Field(default=1.0, ge=0, le=100, description="below this speed the heading is held")
    max_interpolation_gap_s: float = Field(
        default=5.0, gt=0, le=3600, description="never interpolate across a larger gap"
    )
    no_fix_policy: Literal["hold", "flag"] = Field(
        default="hold",
        description="'hold': sightings without a valid fix are not located (dropped and counted); "
        "'flag': they are placed at the last good fix with location.fix_mode showing the loss",
    )


class _ModelConfig(_Section):
    """One ONNX model and how it runs (shared by the 13-category and the general-object model)."""

    model_file: str = Field(default="models/patrol-detector.onnx", description="ultralytics-exported YOLO ONNX")
    score_threshold: float = Field(default=0.25, ge=0, le=1, description="boxes scoring lower are ignored")
    iou_threshold: float = Field(default=0.5, gt=0, le=1, description="class-aware NMS IoU")
    max_detections: int = Field(default=100, ge=1, le=10000, description="at most this many boxes a frame")
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        default_factory=lambda: ["tensorrt", "cuda", "cpu"], min_length=1,
        description="execution providers in order of preference; unavailable ones are skipped",
    )
    intra_op_threads: int = Field(default=0, ge=0, le=256, description="ONNX Runtime threads (0: its default)")
    tensorrt_fp16: bool = Field(default=True, description="TensorRT provider builds an FP16 engine")
    tensorrt_cache_dir: str = Field(default="", description="engine cache; empty: <data_dir>/trt-cache")
    class_map: dict[str, str] = Field(
        default_factory=dict, description="model class name -> category name, where they differ"
    )


class DetectorConfig(_ModelConfig):
    """The 13-category model."""

    categories_file: str = Field(default="models/categories.yaml", description="the city's taxonomy")


class ObjectDetectorConfig(_ModelConfig):
    """Optional general-object model (COCO) whose classes become rule candidates."""

    enabled: bool = Field(default=False, description="run the general-object model and the rules")
    model_file: str = Field(default="", description="e.g. the converted Yolo-Fastest ONNX (not shipped)")
    score_threshold: float = Field(default=0.3, ge=0, le=1, description="boxes scoring lower are ignored")


class LocationConfig(_Section):
    """Casting boxes onto the ground."""

    max_range_m: float = Field(default=40.0, gt=0, le=1000, description="ground hits farther than this are not trusted")
    min_range_m: float = Field(default=1.0, ge=0, le=1000, description="ground hits nearer than this are not trusted")


    @model_validator(mode="after")
    def _range_order(self) -> LocationConfig:
        if self.min_range_m >= self.max_range_m:
            raise ValueError(f"min_range_m ({self.min_range_m}) must be below max_range_m ({self.max_range_m})")
        return self

class DedupConfig(_Section):
    """Merging repeat sightings into objects."""

    suppress_s: float = Field(
        default=86400.0, ge=0, le=10 * 365 * 86400, description="after publishing, stay silent this long"
    )
    candidate_ttl_s: float = Field(
        default=120.0, gt=0, le=7 * 86400, description="an unconfirmed object not seen for this long is forgotten"
    )
    reacquire_factor: float = Field(
        default=2.0, ge=1.0, le=10.0,
        description="a published object is matched up to this many radius_m away (repeat passes, GPS error)",
    )
    radius_m: dict[str, Annotated[float, Field(gt=0, le=1000)]] = Field(
        default_factory=dict, description="per-category override of radius_m")
    min_frames: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="per-category override of min_frames")
    min_median_score: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="per-category override of min_median_score")


class TlsConfig(_Section):
    """TLS to the broker."""

    enabled: bool = Field(default=False, description="connect with TLS")
    ca_file: str = Field(default="", description="CA bundle that signed the broker's certificate")
    cert_file: str = Field(default="", description="client certificate (mutual TLS), optional")
    key_file: str = Field(default="", description="client key (mutual TLS), optional")
    insecure_skip_verify: bool = Field(default=False, description="never in production: skip hostname check")


class MqttConfig(_Section):
    """Delivery to the command centre."""

    enabled: bool = Field(default=True, description="publish to a broker (false: outbox and --out only)")
    host: str = Field(default="127.0.0.1", description="the centre's broker")
    port: int = Field(default=1883, ge=1, le=65535, description="1883 plain, 8883 TLS by convention")
    client_id: str = Field(default="", description="empty: patrol-<vehicle_id>")
    username: str = Field(default="", description="the car's broker account (by convention its vehicle_id)")
    password: str = Field(default="", description="prefer password_file; '${ENV}' reads an environment variable")
    password_file: str = Field(default="", description="file whose first line is the password")
    keepalive_s: int = Field(default=30, ge=5, le=65535, description="MQTT keep-alive")
    connect_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, description="give up one connection attempt after this"
    )
    status_interval_s: float = Field(default=10.0, gt=0, le=86400, description="publish the retained status this often")
    max_messages_per_s: float = Field(
        default=20.0, gt=0, le=100000, description="publish rate cap (no flood on reconnect)"
    )
    max_inflight: int = Field(default=10, ge=1, le=65535, description="unacknowledged messages at most")
    ack_timeout_s: float = Field(default=30.0, gt=0, le=86400, description="no PUBACK for this long: resend")
    publish_snapshots: bool = Field(default=True, description="publish each event's photo on its snapshot topic")
    tls: TlsConfig = TlsConfig()

    @field_validator("host")
    @classmethod
    def _a_host(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
            return v
        except ValueError:
            pass
        if not _HOST_NAME.fullmatch(v):  # not a URL, not host:port: the port is mqtt.port
            raise ValueError("must be a host name (letters, digits, '-', dot-separated labels of 1-63) or an IP "
                             "address; the port goes in mqtt.port")
        return v

    @model_validator(mode="after")
    def _password_needs_user(self) -> MqttConfig:
        if (self.password or self.password_file) and not self.username:
            raise ValueError("password given without a username")
        return self


class OutboxConfig(_Section):
    """The durable queue between event making and MQTT."""

    max_bytes: int = Field(
        default=2_000_000_000, ge=100_000, le=2**50, description="outbox size cap; photos evicted first"
    )


class PhotoConfig(_Section):
    """Evidence photos."""

    jpeg_quality: int = Field(default=85, ge=10, le=100, description="evidence photo JPEG quality")
    max_width_px: int = Field(default=1920, ge=160, le=16384, description="photos wider than this are scaled down")


class OutputConfig(_Section):
    """Extra sinks."""

    jsonl_file: str = Field(
        default="", description="also append every event to this JSON-lines file (replay: unless --out)")


class RuntimeConfig(_Section):
    """Threads and queues."""

    frame_queue_size: int = Field(default=4, ge=1, le=256, description="decoded frames waiting for the model")
    result_queue_size: int = Field(default=16, ge=1, le=1024, description="detected frames waiting for dedup")


class Config(_Section):
    """The whole configuration file."""

    vehicle_id: str = Field(default="car-001", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                            description="this car's id: in every topic and event")
    data_dir: str = Field(default="var/patrol", min_length=1, description="outbox, dedup index and photos live here")
    camera: CameraConfig = CameraConfig()
    gps: GpsConfig = GpsConfig()
    detector: DetectorConfig = DetectorConfig()
    object_detector: ObjectDetectorConfig = ObjectDetectorConfig()
    location: LocationConfig = LocationConfig()
    dedup: DedupConfig = DedupConfig()
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    photo: PhotoConfig = PhotoConfig()
    output: OutputConfig = OutputConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    rules: dict = Field(default_factory=dict, description="rules for object-proxy categories: see 'Rules'")

    @field_validator("vehicle_id")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        if any(ch in v for ch in "+#/"):
            raise ValueError("must not contain MQTT wildcards or '/'")
        return v


def resolve_path(value: str, base: Path, output: bool = False) -> Path:
    """A path from the config: absolute as given, relative ones against ``base`` (the config's folder).

    An input missing there is looked for in the repo (shipped models and calibrations); an ``output`` (data_dir,
    output files) is always under ``base``, so a config outside the repo never writes into the repo's folders.
    """
    p = Path(os.path.expandvars(os.path.expanduser(value)))
    if p.is_absolute():
        return p
    candidate = base / p
    if output or candidate.exists() or not (REPO_ROOT / p).exists():
        return candidate
    return REPO_ROOT / p  # shipped files (models/, calibration/) are found from the repo too


def _format_error(path: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    # repr() any key with control characters: the error must stay one line (no forged journal lines).
    loc = ".".join(k if (k := str(x)).isprintable() else repr(k) for x in err["loc"]
                   if not str(x).startswith("function-after"))
    msg = err["msg"].removeprefix("Value error, ")  # pydantic's wrapper around our own validators' words
    if err["type"] == "extra_forbidden":
        msg = "unknown key (misspelt?)"
    value = err.get("input")
    shown = "" if isinstance(value, dict) or err["type"] in ("extra_forbidden", "missing") else f" (got {value!r})"
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{path}: {loc or '<top>'}: {msg}{shown}{more}"


def parse_config(text: str, origin: str = "<config>") -> Config:
    """Validate TOML text; raise `ConfigError` with one line naming the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{origin}: not valid TOML: nested too deeply") from None
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(origin, exc)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise `ConfigError` with one line naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    return parse_config(text, str(path))
