"""The config: the installed template is complete and valid, bad files fail with one line naming the key, and
nothing but `ConfigError` escapes the parser whatever text or TOML it is given (hypothesis)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from vehicle.config import Config, ConfigError, load_config, parse_config, tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "scripts" / "patrol.toml"
INSTALL_OVERRIDES = {"data_dir": "/var/lib/patrol", "camera.source": "/dev/video0"}


def model_fields(model: BaseModel, prefix: str = "") -> dict[str, object]:
    """Every leaf field of ``model`` as dotted key -> default value."""
    out: dict[str, object] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out.update(model_fields(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def flatten(doc: dict, prefix: str = "") -> dict[str, object]:
    """A parsed TOML document as dotted key -> value (the template's dict-valued fields are all empty)."""
    out: dict[str, object] = {}
    for k, v in doc.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_template_lists_every_field_with_its_default() -> None:
    raw = tomllib.loads(TEMPLATE.read_text(encoding="utf-8"))
    in_template = flatten(raw)
    defaults = model_fields(Config())
    assert set(in_template) == set(defaults), {"missing": set(defaults) - set(in_template),
                                               "unknown": set(in_template) - set(defaults)}
    for key, default in defaults.items():
        expected = INSTALL_OVERRIDES.get(key, default)
        assert in_template[key] == expected, key
    # Every line that sets a key explains it.
    for line in TEMPLATE.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith("#"):
            assert "  # " in line, f"no comment: {line}"


def test_template_loads_into_the_installed_values() -> None:
    cfg = load_config(TEMPLATE)
    assert cfg.data_dir == "/var/lib/patrol" and cfg.camera.source == "/dev/video0"
    assert cfg.model_dump(exclude={"data_dir", "camera"}) == Config().model_dump(exclude={"data_dir", "camera"})


BAD_CONFIGS = [
    ("unknown key", "[camera]\nsource = '/dev/video0'\nwatchdog_timout_s = 3\n", "camera.watchdog_timout_s",
     "unknown key"),
    ("wrong type", "[mqtt]\nport = 'eighteen'\n", "mqtt.port", "integer"),
    ("port out of range", "[mqtt]\nport = 70000\n", "mqtt.port", "65535"),
    ("gpsd port zero", "[gps]\ngpsd_port = 0\n", "gps.gpsd_port", "1"),
    ("vehicle_id with a slash", "vehicle_id = 'car/1'\n", "vehicle_id", "'car/1'"),
    ("vehicle_id with a wildcard", "vehicle_id = 'car+1'\n", "vehicle_id", "'car+1'"),
    ("empty vehicle_id", "vehicle_id = ''\n", "vehicle_id", "at least 1"),
    ("password without username", "[mqtt]\npassword = 'secret'\n", "mqtt", "without a username"),
    ("password file without username", "[mqtt]\npassword_file = '/etc/patrol/pw'\n", "mqtt", "without a username"),
    ("unknown section", "[kamera]\nsource = '/dev/video0'\n", "kamera", "unknown key"),
    ("bad policy", "[gps]\nno_fix_policy = 'guess'\n", "gps.no_fix_policy", "'hold'"),
    ("negative threshold", "[detector]\nscore_threshold = -0.1\n", "detector.score_threshold", "0"),
    ("bad provider", "[detector]\nproviders = ['tpu']\n", "detector.providers.0", "'tensorrt'"),
    ("not TOML", "[mqtt\nport = 1\n", "", "not valid TOML"),
    ("infinite timeout", "[mqtt]\nconnect_timeout_s = inf\n", "mqtt.connect_timeout_s", "finite number"),
    ("nan radius", "[dedup.radius_m]\nroad_damage = nan\n", "dedup.radius_m.road_damage", "finite number"),
    ("absurd gate", "[dedup]\nreacquire_factor = 1e308\n", "dedup.reacquire_factor", "10"),
    ("thread count", "[detector]\nintra_op_threads = 100000\n", "detector.intra_op_threads", "256"),
    ("boolean as a number", "[detector]\nmax_detections = true\n", "detector.max_detections", "integer"),
    ("string as a number", "[mqtt]\nport = '1883'\n", "mqtt.port", "integer"),
    ("no providers", "[detector]\nproviders = []\n", "detector.providers", "at least 1"),
    ("empty broker host", "[mqtt]\nhost = ''\n", "mqtt.host", "must be a host name"),
    ("blank broker host", "[mqtt]\nhost = ' '\n", "mqtt.host", "must be a host name"),
    ("empty host label", "[mqtt]\nhost = 'broker..example'\n", "mqtt.host", "must be a host name"),
    ("host with a port", "[mqtt]\nhost = 'broker:1883'\n", "mqtt.host", "the port goes in mqtt.port"),
    ("empty data_dir", "data_dir = ''\n", "data_dir", "at least 1"),
    ("categories for the object model", "[object_detector]\ncategories_file = 'x.yaml'\n",
     "object_detector.categories_file", "unknown key"),
    ("nested too deeply", "vehicle_id = " + "[" * 5000 + "]" * 5000 + "\n", "", "nested too deeply"),
]


@pytest.mark.parametrize(("case", "text", "key", "what"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_invalid_config_is_one_line_naming_the_file_and_key(tmp_path: Path, case: str, text: str, key: str,
                                                              what: str) -> None:
    path = tmp_path / "patrol.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    if key:
        assert f": {key}: " in msg, msg
    assert what in msg, msg


def test_a_key_with_a_line_break_is_still_one_line(tmp_path: Path) -> None:
    # Found by the fuzzer below: a quoted TOML key may hold a newline; the error must not split (or forge)
    # log lines in the journal.
    path = tmp_path / "patrol.toml"
    path.write_text('"vehicle_id\\nforged: ok" = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\n" not in str(err.value) and "unknown key" in str(err.value)


def test_secret_values_are_not_echoed_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "patrol.toml"
    path.write_text("[mqtt]\npassword = 'hunter2-very-secret'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "hunter2" not in str(err.value)


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("vehicle_id = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml"):
        load_config(bad)


# -- fuzzing ------------------------------------------------------------------------------------------------------

def toml_value(v: object) -> str:
    """A TOML literal for ``v`` (inline tables for dicts)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_doc(d: dict) -> str:
    return "".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}\n" for k, v in d.items())


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
SCALARS = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(TEXT, inner, max_size=4)), max_leaves=10)
REAL_KEYS = model_fields(Config())


def section_dicts() -> st.SearchStrategy[dict]:
    """Dicts shaped like the config: real keys (and some unknown ones) with arbitrary values."""
    key = st.one_of(st.sampled_from(sorted(REAL_KEYS)), TEXT)

    def nest(items: list[tuple[str, object]]) -> dict:
        doc: dict = {}
        for dotted, value in items:
            *parents, leaf = dotted.split(".") if dotted in REAL_KEYS else [dotted]
            node = doc
            for p in parents:
                nxt = node.setdefault(p, {})
                if not isinstance(nxt, dict):
                    break
                node = nxt
            else:
                node[leaf] = value
        return doc

    real_values = st.one_of(VALUES, st.sampled_from(list(REAL_KEYS.values())))
    return st.lists(st.tuples(key, real_values), max_size=8).map(nest)


def assert_parses_or_config_error(text: str) -> None:
    try:
        cfg = parse_config(text, "fuzz.toml")
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith("fuzz.toml: ") and "\n" not in msg and "\r" not in msg, msg
    else:
        assert isinstance(cfg, Config)
        assert 1 <= cfg.mqtt.port <= 65535 and "/" not in cfg.vehicle_id


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text_raises_only_config_error(text: str) -> None:
    assert_parses_or_config_error(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section_dicts())
def test_fuzz_arbitrary_toml_tables_raise_only_config_error(doc: dict) -> None:
    assert_parses_or_config_error(toml_doc(doc))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(TEXT, VALUES, max_size=6))
def test_fuzz_arbitrary_documents_raise_only_config_error(doc: dict) -> None:
    assert_parses_or_config_error(toml_doc(doc))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_template_with_one_line_mangled(data: st.DataObject) -> None:
    lines = TEMPLATE.read_text(encoding="utf-8").splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = data.draw(st.one_of(st.text(max_size=40), st.sampled_from(["", "[x]", "= 1", "a.b = 1", "port = -1"])))
    assert_parses_or_config_error("\n".join(lines))


def test_outputs_stay_beside_the_config_while_missing_inputs_are_found_in_the_repo(tmp_path) -> None:
    from vehicle.config import REPO_ROOT, resolve_path

    (REPO_ROOT / "var" / "patrol").mkdir(parents=True, exist_ok=True)  # the repo's own default data folder
    # A config outside the repo with the default data_dir writes beside itself, never into the repo's var/patrol.
    assert resolve_path("var/patrol", tmp_path, output=True) == tmp_path / "var" / "patrol"
    # A shipped input it does not have beside it is taken from the repo.
    assert resolve_path("models/categories.yaml", tmp_path) == REPO_ROOT / "models" / "categories.yaml"
    assert resolve_path("/abs/x", tmp_path, output=True) == Path("/abs/x")
