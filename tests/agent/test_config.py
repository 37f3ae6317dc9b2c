"""Config validation: strict, and every error names the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.config import config_from_dict, load_config
from edge_agent.contract.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _base(**over) -> dict:
    d = {"device": "pump-7", "source": {"kind": "serial", "serial": {"port": "loop://"}}, "bundle": {"path": "b"}}
    d.update(over)
    return d


def test_shipped_gateway_example_is_valid():
    cfg = load_config(EXAMPLES / "gateway.toml")
    assert cfg.gateway == "hall-3" and [s.device for s in cfg.sensors] == ["pump-7-de", "pump-7-nde", "fan-2"]
    de, nde, fan = cfg.sensors
    assert (de.alerts.k, nde.alerts.k, fan.alerts.k) == (3, 2, 3) and fan.source.kind == "mqtt"
    assert fan.uploads.enabled and not de.uploads.enabled and fan.bundle.path != de.bundle.path
    assert de.calibration.path == "calibration/pump-7-de.json"


@pytest.mark.parametrize("name", ["agent.toml", "agent-mqtt.toml"])
def test_shipped_examples_are_valid(name):
    cfg = load_config(EXAMPLES / name)
    assert [s.device for s in cfg.sensors] == ["pump-7"] and cfg.gateway == "pump-7"
    assert cfg.resolve(cfg.sensor().bundle.path).is_absolute()


def test_defaults_fill_in():
    cfg = config_from_dict(_base())
    s = cfg.sensor()
    assert s.alerts.k == 3 and s.source.serial.format == "binary" and cfg.mqtt is None
    assert cfg.client_id == "edge-agent-pump-7" and s.calibration.path == "calibration.json"


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"alerts": {"k": 7, "n": 5}}, "alerts.k"),
        ({"alerts": {"kk": 1}}, "alerts.kk"),
        ({"alerts": {"clear_ratio": 1.5}}, "alerts.clear_ratio"),
        ({"alerts": {"cooldown_s": "60"}}, "alerts.cooldown_s"),
        ({"alerts": {"sinks": {"jsonl": 3}}}, "alerts.sinks.jsonl"),
        ({"alerts": {"sinks": {"mqtt": True}}}, "alerts.sinks.mqtt"),
        ({"alerts": {"sinks": {"command": []}}}, "alerts.sinks.command"),
        ({"source": {"kind": "serial", "serial": {"port": "loop://", "format": "json"}}}, "source.serial.format"),
        ({"source": {"kind": "serial", "serial": {"port": "x", "baudrate": 0}}}, "source.serial.baudrate"),
        ({"source": {"kind": "serial"}}, "source.serial"),
        ({"source": {"kind": "mqtt"}}, "mqtt"),
        ({"source": {"kind": "usb"}}, "source.kind"),
        ({"mqtt": {"port": 70000}}, "mqtt.port"),
        ({"uploads": {"enabled": "yes"}}, "uploads.enabled"),
        ({"status": {"every_s": float("nan")}}, "status.every_s"),
        ({"device": "a/b"}, "device"),
        ({"extra": 1}, "extra"),
        ({"bundle": {}}, "bundle.path"),
    ],
)
def test_bad_values_name_the_key(patch, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: "):
        config_from_dict(_base(**patch))


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "a.toml"
    bad.write_text('device = "x"\n[source\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    bad.write_text('device = "x"\nbundle = {path = "b"}\nsource = {kind = "serial", serial = {port = "p", x = 1}}\n')
    with pytest.raises(ConfigError, match=r"a\.toml: source\.serial\.x: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def _gateway(*sensors: dict, **top) -> dict:
    return {"gateway": "hall-3", "mqtt": {"port": 1883}, **top, "sensors": list(sensors)}


def _serial(device: str, port: str, **over) -> dict:
    return {"device": device, "source": {"kind": "serial", "serial": {"port": port}}, "bundle": {"path": "b"}, **over}


def test_many_sensors_share_top_level_defaults_and_override_them():
    cfg = config_from_dict(_gateway(
        _serial("pump-1", "/dev/ttyACM0"),
        _serial("pump-2", "/dev/ttyACM1", alerts={"k": 2, "sinks": {"jsonl": "p2.jsonl"}}),
        {"device": "fan-1", "source": {"kind": "mqtt"}, "bundle": {"path": "fan"}},
        alerts={"k": 4, "n": 6, "sinks": {"jsonl": "alerts.jsonl", "mqtt": True}},
        uploads={"enabled": True, "spool_path": "spool.sqlite", "batch": 10, "receipts": False},
    ))
    one, two, fan = cfg.sensors
    assert (one.alerts.k, one.alerts.n, one.alerts.sinks.jsonl) == (4, 6, "alerts.jsonl")
    assert (two.alerts.k, two.alerts.n, two.alerts.sinks.jsonl, two.alerts.sinks.mqtt) == (2, 6, "p2.jsonl", True)
    assert fan.source.kind == "mqtt" and fan.bundle.path == "fan" and fan.uploads.enabled
    assert {s.calibration.path for s in cfg.sensors} == {"calibration/pump-1.json", "calibration/pump-2.json",
                                                          "calibration/fan-1.json"}
    assert cfg.uploads.batch == 10 and cfg.client_id == "edge-agent-hall-3" and cfg.uploads_enabled


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_gateway(_serial("a", "/dev/x"), _serial("a", "/dev/y")), r"sensors\[1\]\.device: device id 'a' is already used"),
        (_gateway(_serial("a", "/dev/x"), _serial("b", "/dev/x")), r"sensors\[1\]\.source\.serial\.port: port"),
        (_gateway(_serial("a", "/dev/x"), _serial("b", "/dev/y", alerts={"k": 9})), r"^sensors\[1\]\.alerts\.k: "),
        (_gateway(_serial("a", "/dev/x", uploads={"spool_path": "s"})), r"sensors\[0\]\.uploads\.spool_path: the spool"),
        ({**_gateway(_serial("a", "/dev/x")), "device": "a"}, r"^device: goes into each"),
        (_gateway(), r"^sensors: must be one or more"),
        (_gateway(_serial("a", "/dev/x"), _serial("b", "/dev/y", calibration={"path": "calibration/a.json"})),
         r"sensors\[1\]\.calibration\.path: this file is already used"),
        (_gateway({"device": "m1", "source": {"kind": "mqtt"}, "bundle": {"path": "b"}},
                  {"device": "m2", "source": {"kind": "mqtt", "mqtt": {"topic_device": "m1"}}, "bundle": {"path": "b"}}),
         r"sensors\[1\]\.source\.mqtt: topic 'vib/m1/samples' is already used"),
    ],
)
def test_sensors_that_clash_are_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


@pytest.mark.parametrize("target", ["bundle", "alerts.jsonl", "status.json", "calibration.json", "bundle/inside"])
def test_a_spool_path_that_names_a_file_the_agent_uses_is_a_config_error(tmp_path, target):
    (tmp_path / "bundle").mkdir()
    data = _base(uploads={"enabled": True, "spool_path": str(tmp_path / target), "receipts": False},
                 mqtt={"port": 1883}, bundle={"path": str(tmp_path / "bundle")},
                 alerts={"sinks": {"jsonl": str(tmp_path / "alerts.jsonl")}},
                 status={"file": str(tmp_path / "status.json")},
                 calibration={"path": str(tmp_path / "calibration.json")})
    with pytest.raises(ConfigError, match=r"^uploads\.spool_path: .*(not a spool file|is inside)"):
        config_from_dict(data)


def test_config_paths_that_are_folders_or_under_files_are_errors_naming_the_path(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        load_config(tmp_path / "file" / "agent.toml")


def test_uploads_with_receipts_need_the_collectors_key():
    """A receipt deletes spooled records: only a collector's signed one may (issue 14, break 6)."""
    from tests.e2e.fleet_helpers import COLLECTOR_PUBLIC

    with pytest.raises(ConfigError, match=r"^uploads\.receipt_keys: a receipt deletes records"):
        config_from_dict(_base(uploads={"enabled": True}, mqtt={"port": 1883}))
    with pytest.raises(ConfigError, match=r"^uploads\.receipt_keys\[0\]: not an Ed25519 public key"):
        config_from_dict(_base(uploads={"enabled": True, "receipt_keys": ["c2hvcnQ="]}, mqtt={"port": 1883}))
    cfg = config_from_dict(_base(uploads={"enabled": True, "receipt_keys": [COLLECTOR_PUBLIC]}, mqtt={"port": 1883}))
    assert cfg.uploads.receipt_keys == (COLLECTOR_PUBLIC,)
    assert not config_from_dict(_base(uploads={"enabled": True, "receipts": False}, mqtt={"port": 1883})).uploads.receipts


def test_a_setting_is_declared_once_and_the_config_refuses_what_the_policy_refuses(tmp_path):
    """The config sections extend the runtime policies: one default, one range, one rule between keys."""
    import dataclasses

    from edge_agent import config as c
    from edge_agent.alerts import AlertPolicy
    from edge_agent.drift import DriftPolicy
    from edge_agent.rollout import RolloutPolicy
    from edge_agent.uploader import KeepPolicy

    for section, policy in ((c.Alerts, AlertPolicy), (c.Drift, DriftPolicy), (c.SensorUploads, KeepPolicy),
                            (c.Rollout, RolloutPolicy)):
        assert issubclass(section, policy)
        own = {f.name for f in dataclasses.fields(section)} - {f.name for f in dataclasses.fields(policy)}
        assert own <= {"sinks", "enabled"}, own
    with pytest.raises(ConfigError, match=r"sensors\[0\]\.alerts\.k: must be 1\.\.n \(n = 5\), got 7"):
        config_from_dict({"gateway": "g", "sensors": [{"device": "a", "source": {"kind": "serial", "serial": {
            "port": "loop://"}}, "bundle": {"path": str(tmp_path)}, "alerts": {"k": 7}}]})
    with pytest.raises(ConfigError, match=r"drift\.every: unknown key"):  # the policy's own, not a config key
        config_from_dict({"device": "a", "source": {"kind": "serial", "serial": {"port": "loop://"}},
                          "bundle": {"path": str(tmp_path)}, "drift": {"every": 3}})


def test_a_config_field_of_two_types_is_refused_by_the_reader():
    from edge_agent.config import _value

    with pytest.raises(TypeError, match="one type"):
        _value(int | str, 3, "x.y", {})
