"""A running multi-sensor gateway for the tests of what it shows: serial sensors on real ptys, a real bundle."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, load_config
from firmware_sim.link import PtyLink
from tests.agent.pipeline_helpers import _toml


def gateway_config(tmp_path: Path, bundle: Path, links: dict[str, PtyLink | Path], *,
                   sensor_keys: dict[str, dict] | None = None, **sections) -> AgentConfig:
    """A gateway ``hall-3`` with one serial sensor per link (a path: a port that may not exist); ``sections`` add or
    override top-level tables, ``sensor_keys`` add keys and tables to a sensor's ``[[sensors]]`` table."""
    doc = {
        "gateway": "hall-3",
        "status": {"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": False},
        "alerts": {"k": 3, "n": 5, "cooldown_s": 0.0, "sinks": {"log": False}},
        "bundle": {"path": str(bundle), "watch_s": 0},
        "http": {"port": 0},
    }
    for key, value in sections.items():
        doc[key] = {**doc[key], **value} if isinstance(doc.get(key), dict) else value
    uploads = doc.get("uploads") or {}
    if uploads.get("receipts", True) and "receipt_keys" not in uploads and "uploads" in doc:
        from tests.e2e.fleet_helpers import COLLECTOR_PUBLIC

        doc["uploads"] = uploads | {"receipt_keys": [COLLECTOR_PUBLIC]}  # the test collectors' key
    text = _toml(doc)
    for device, link in links.items():
        port = link.path if isinstance(link, PtyLink) else link
        text += (f'\n[[sensors]]\ndevice = {_quote(device)}\n{_toml((sensor_keys or {}).get(device, {}), "sensors")}'
                 f'[sensors.source]\nkind = "serial"\n[sensors.source.serial]\nport = "{port}"\nreopen_max_s = 0.2\n')
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_config(path)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def running(agent: Agent) -> Iterator[Agent]:
    """``agent.run`` in a thread for the duration of the block; stopped (and checked stopped) after it."""
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        stop.set()
        thread.join(20)
        assert not thread.is_alive(), "the agent did not stop"
