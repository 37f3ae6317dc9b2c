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


@pytest.mark.parametrize("name", ["agent.toml", "agent-mqtt.toml"])
def test_shipped_examples_are_valid(name):
    cfg = load_config(EXAMPLES / name)
    assert cfg.device == "pump-7"
    assert cfg.resolve(cfg.bundle.path).is_absolute()


def test_defaults_fill_in():
    cfg = config_from_dict(_base())
    assert cfg.alerts.k == 3 and cfg.source.serial.format == "binary" and cfg.mqtt is None
    assert cfg.client_id == "edge-agent-pump-7"


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
