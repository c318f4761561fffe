"""The wire contract: the event (a GeoJSON Feature), the status message, and the topic names.

These pydantic models are the single source of the published JSON Schemas (``schemas/``); the centre
and the tests validate against what is generated from here, so the contract cannot drift from the code.
Topics are versioned (``patrol/v1/...``): any change that breaks an existing consumer (a renamed or removed
field, a changed meaning or unit) needs ``v2``; adding an optional property does not.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

TOPIC_ROOT = "patrol/v1"
SCHEMA_VERSION = 1
# Stable namespace so that one (vehicle, object, publication) always maps to the same event_id, across restarts.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c1f8e-8f5e-4f0e-9a53-0c6f2a1d7b11")


def events_topic(vehicle_id: str) -> str:
    """Topic the car publishes its events on (QoS 1, never retained)."""
    return f"{TOPIC_ROOT}/{vehicle_id}/events"


def snapshot_topic(vehicle_id: str, event_id: str) -> str:
    """Topic carrying one event's evidence photo (JPEG bytes, QoS 1, never retained)."""
    return f"{TOPIC_ROOT}/{vehicle_id}/snapshots/{event_id}"


def status_topic(vehicle_id: str) -> str:
    """Retained topic with the car's latest status (and its Last Will: offline)."""
    return f"{TOPIC_ROOT}/{vehicle_id}/status"


def make_event_id(vehicle_id: str, object_id: str, publication: int) -> str:
    """Deterministic event id: the same object's n-th publication always gets the same id."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{vehicle_id}/{object_id}/{publication}"))


class _Wire(BaseModel):
    # Unknown properties are ignored, not refused: a newer car may add an optional property (no v2 needed), and
    # a v1 consumer must still take its events. Types are strict when parsing (`from_json`): true is no number.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


# What a consumer may rely on: ids are plain tokens (no control characters, which some databases cannot store)
# and times are UTC ISO 8601 with a 'Z', so that they sort as text.
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
def utc_seconds(value: str) -> float:
    """POSIX seconds of a `UtcTime` string; ValueError for a date or time that does not exist (month 13...)."""
    whole, _, frac = value.rstrip("Z").partition(".")
    stamp = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return stamp + (float(f"0.{frac}") if frac else 0.0)


def _real_time(value: str) -> str:
    utc_seconds(value)  # the pattern alone would pass 9999-99-99
    return value


UtcTime = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$"),
                    AfterValidator(_real_time)]


class EventMode(str, Enum):
    """Whether the centre should act on an event (``enforce``) or only record it (``warning``)."""

    enforce = "enforce"
    warning = "warning"


class PointGeometry(_Wire):
    """GeoJSON Point, WGS-84, ``[lon, lat]``."""

    type: Literal["Point"] = "Point"
    coordinates: tuple[Annotated[float, Field(ge=-180, le=180)], Annotated[float, Field(ge=-90, le=90)]] = Field(
        description="[longitude_deg, latitude_deg], WGS-84")


class LocationQuality(_Wire):
    """How far the event's position can be trusted."""

    fix_mode: int = Field(ge=0, le=3, description="GNSS fix: 0 unknown, 1 none, 2 2D, 3 3D")
    hdop: float | None = Field(default=None, ge=0, description="horizontal dilution of precision")
    fix_age_s: float = Field(ge=0, description="age of the GNSS fix at the frame's capture time, seconds")
    ground_projection_ok: bool = Field(
        description="true: the box's foot point was cast onto the ground; false: the car's own position is used"
    )
    range_m: float | None = Field(default=None, ge=0, description="distance from the camera to the object")
    interpolated: bool = Field(default=True, description="the pose was interpolated between two fixes")


class VehiclePose(_Wire):
    """The car's pose at the frame the event's best sighting came from."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    heading_deg: float | None = Field(
        default=None, ge=0, lt=360, description="course over ground, clockwise from north"
    )
    speed_mps: float | None = Field(default=None, ge=0)


class ModelRef(_Wire):
    """Which model produced the detection."""

    name: str
    sha256: str = Field(description="hex SHA-256 of the model file the car loaded")


class RuleFired(_Wire):
    """For rule-made categories (object + rule): which rule fired, and why."""

    rule: str
    reason: str
    zone_id: str | None = None
    distance_travelled_m: float | None = None
    dwell_s: float | None = None
    cluster_size: int | None = None


class EventProperties(_Wire):
    """Everything the centre needs to review an event and dispatch a crew."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id = Field(description="stable id; consumers key on it (delivery is at least once)")
    vehicle_id: Name
    object_id: Id = Field(description="the car's id for the deduplicated object this event reports")
    category: Name
    confidence: float = Field(ge=0, le=1, description="median detector score over the object's sightings")
    mode: EventMode = EventMode.enforce
    first_seen: UtcTime = Field(description="UTC, ISO 8601, of the first sighting")
    last_seen: UtcTime = Field(description="UTC, ISO 8601, of the latest sighting")
    observations: int = Field(ge=1, description="frames the object was seen in")
    location: LocationQuality
    vehicle_pose: VehiclePose
    box_xyxy: tuple[float, float, float, float] = Field(description="box in the evidence photo, pixels")
    image_size_wh: tuple[int, int]
    frame_index: int = Field(ge=0)
    model: ModelRef
    snapshot_topic: str | None = Field(default=None, description="where the evidence photo is published")
    rule: RuleFired | None = None


class Event(_Wire):
    """One new problem, as published on ``patrol/v1/{vehicle_id}/events``: a GeoJSON Feature."""

    type: Literal["Feature"] = "Feature"
    id: Id
    geometry: PointGeometry
    properties: EventProperties

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, as published."""
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> Event:
        """Parse and validate a published event (strict types; unknown properties ignored)."""
        return cls.model_validate_json(data, strict=True)


class StatusState(str, Enum):
    """Availability of a car."""

    online = "online"
    offline = "offline"


class Status(_Wire):
    """Retained status of a car on ``patrol/v1/{vehicle_id}/status``; its Last Will is ``state=offline``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    vehicle_id: Name
    state: StatusState
    time: UtcTime = Field(description="UTC, ISO 8601, when the status was made")
    gps_fix_mode: int | None = Field(default=None, ge=0, le=3)
    gps_fix_age_s: float | None = None
    frames_per_s: float | None = Field(default=None, ge=0)
    frames_total: int | None = Field(default=None, ge=0)
    frames_dropped: int | None = Field(default=None, ge=0, description="live frames dropped because inference lagged")
    frames_bad: int | None = Field(default=None, ge=0, description="frames that could not be decoded")
    outbox_depth: int | None = Field(default=None, ge=0, description="messages waiting to be sent")
    outbox_bytes: int | None = Field(default=None, ge=0)
    outbox_dropped: int | None = Field(default=None, ge=0, description="messages evicted because the outbox was full")
    events_total: int | None = Field(default=None, ge=0)
    model: ModelRef | None = None
    categories_covered: list[str] | None = Field(
        default=None, description="categories the loaded model(s) can report; others are never reported"
    )

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, as published."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")


def event_schema() -> dict:
    """JSON Schema of the event payload."""
    schema = Event.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://patrol.example/schemas/v1/event.json"
    return schema


def status_schema() -> dict:
    """JSON Schema of the status payload."""
    schema = Status.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://patrol.example/schemas/v1/status.json"
    return schema


def dump_schema(schema: dict) -> str:
    """Stable text form of a schema, as committed under ``schemas/``."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
