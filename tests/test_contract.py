"""The committed contract (schemas/, contract/asyncapi.yaml) is exactly what the code generates, and coherent."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from tests.test_centre import make_event
from vehicle.events import Event, Status, events_topic, snapshot_topic, status_topic

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load_make_contract():
    spec = importlib.util.spec_from_file_location("make_contract", REPO_ROOT / "scripts" / "make_contract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_contract = _load_make_contract()
GENERATED = make_contract.render_contract()


@pytest.mark.parametrize("rel", sorted(GENERATED))
def test_committed_file_matches_the_code(rel: str) -> None:
    path = REPO_ROOT / rel
    assert path.is_file(), f"{rel} missing: run python scripts/make_contract.py and commit"
    assert path.read_text(encoding="utf-8") == GENERATED[rel], (
        f"{rel} differs from what vehicle/events.py generates: run python scripts/make_contract.py and commit"
    )


def _doc() -> dict:
    return yaml.safe_load((REPO_ROOT / make_contract.ASYNCAPI_FILE).read_text(encoding="utf-8"))


def _resolve(doc: dict, base: Path, ref: str) -> object:
    """Follow one $ref: '#/a/b' inside the document, or 'file.json#/ptr' relative to ``base``."""
    file_part, _, pointer = ref.partition("#")
    target: object = doc
    if file_part:
        path = (base / file_part).resolve()
        assert path.is_file(), f"$ref {ref!r}: {path} does not exist"
        target = json.loads(path.read_text(encoding="utf-8"))
    for token in [t for t in pointer.split("/") if t]:
        token = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(target, dict) and token in target, f"$ref {ref!r}: no {token!r}"
        target = target[token]
    return target


def test_asyncapi_structure_and_refs_resolve() -> None:
    doc = _doc()
    base = REPO_ROOT / "contract"
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert set(doc["channels"]) == {"events", "snapshots", "status"}
    for name, channel in doc["channels"].items():
        params = set(re.findall(r"{(\w+)}", channel["address"]))
        assert params == set(channel.get("parameters", {})), f"channel {name}: address parameters undeclared"
        assert channel["messages"], f"channel {name} has no messages"
        for msg_name, msg in channel["messages"].items():
            message = _resolve(doc, base, msg["$ref"]) if "$ref" in msg else msg
            assert "payload" in message, f"{name}.{msg_name}: no payload"
            payload = message["payload"]
            if "$ref" in payload:
                schema = _resolve(doc, base, payload["$ref"])
                assert isinstance(schema, dict) and schema.get("$schema"), f"{name}.{msg_name}: bad payload ref"
                jsonschema.Draft202012Validator.check_schema(schema)
    for op_name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive")
        channel = _resolve(doc, base, op["channel"]["$ref"])
        for m in op["messages"]:
            assert m["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), f"{op_name}: message not in channel"
            assert _resolve(doc, base, m["$ref"]) in channel["messages"].values()
        assert op["bindings"]["mqtt"]["qos"] == 1
    assert doc["operations"]["receiveStatus"]["bindings"]["mqtt"]["retain"] is True


def test_channel_addresses_match_the_topic_builders() -> None:
    channels = _doc()["channels"]

    def fill(address: str, **values: str) -> str:
        return address.format(**values)

    assert fill(channels["events"]["address"], vehicle_id="car-7") == events_topic("car-7")
    assert fill(channels["snapshots"]["address"], vehicle_id="car-7", event_id="e1") == snapshot_topic("car-7", "e1")
    assert fill(channels["status"]["address"], vehicle_id="car-7") == status_topic("car-7")


def test_committed_schemas_accept_real_payloads_and_reject_bad_ones() -> None:
    event_schema = json.loads((REPO_ROOT / make_contract.EVENT_SCHEMA_FILE).read_text())
    status_schema = json.loads((REPO_ROOT / make_contract.STATUS_SCHEMA_FILE).read_text())
    event = json.loads(make_event("car-1", "o1", "street_vending", 31.23, 121.47, mode="warning").to_json())
    jsonschema.validate(event, event_schema, cls=jsonschema.Draft202012Validator)
    status = json.loads(Status(vehicle_id="car-1", state="offline", time="2026-12-03T10:00:00Z").to_json())
    jsonschema.validate(status, status_schema, cls=jsonschema.Draft202012Validator)
    bad = json.loads(json.dumps(event))
    bad["geometry"]["coordinates"] = [121.47]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, event_schema, cls=jsonschema.Draft202012Validator)
    # A newer car's optional property is no breaking change: v1's schema and model take it (and ignore it).
    newer = json.loads(json.dumps(event))
    newer["properties"]["added_in_a_later_version"] = {"a": 1}
    jsonschema.validate(newer, event_schema, cls=jsonschema.Draft202012Validator)
    assert Event.from_json(json.dumps(newer)).properties.event_id == event["properties"]["event_id"]
    # What the schema cannot say, the model checks: a real date, and numbers that are numbers. (first_seen after
    # last_seen is not refused: a car whose clock stepped back would have real events set aside.)
    for key, value, why in (("first_seen", "9999-99-99T00:00:00Z", "time data"),
                            ("confidence", True, "valid number")):
        bad = json.loads(json.dumps(event))
        bad["properties"][key] = value
        with pytest.raises(ValidationError, match=why):
            Event.from_json(json.dumps(bad))


def test_check_mode_reports_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert make_contract.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out
