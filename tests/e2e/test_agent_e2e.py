"""End to end, as installed: ``firmware-sim run`` streams healthy -> failing into ``edge-agent run``.

Separate processes, a real pseudo-terminal (or a real mosquitto), the real int8 bundle. The agent's
stdout carries one ``ALERT ...`` line per alert event; the first must come after the fault onset.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from edge_agent.mqtt_client import MqttConnection
from firmware_sim.broker import Broker
from tests.agent.agent_process import Proc
from tests.agent.pipeline_helpers import ONSET_S, RATE, agent_config
from tests.waiting import wait_for

BIN = Path(sys.executable).parent
LIFE = 20


def _alerts(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        m = re.match(r"ALERT (\w+) (\w+) .*seq_end=(\d+)", line)
        if m:
            out.append({"kind": m[1], "severity": m[2], "seq_end": int(m[3])})
    return out


def _sim(args: list[str], cwd: Path) -> Proc:
    return Proc([str(BIN / "firmware-sim"), "run", "--signal", "bearing", "--state", "degrading", "--life", str(LIFE),
                 "--duration", str(LIFE), "--speed", "4", "--frame-samples", "256", "--seed", "2", *args], cwd)


@pytest.mark.slow
def test_firmware_sim_over_pty_into_edge_agent(tmp_path, agent_bundle):
    port = tmp_path / "ttySIM"
    cfg = agent_config(tmp_path, agent_bundle,
                       source={"kind": "serial", "sample_rate": RATE,
                               "serial": {"port": str(port), "reopen_max_s": 0.2}})
    agent = Proc([str(BIN / "edge-agent"), "run", "--config", str(cfg)], tmp_path)
    sim = None
    try:
        assert agent.wait_line(r"^edge-agent: device pump-7", 60), agent.drain()
        sim = _sim(["--link", "serial", "--link-path", str(port)], tmp_path)
        assert sim.p.wait(120) == 0, sim.drain()
        status = tmp_path / "status.json"
        expected = LIFE * RATE // 1024 * 1024 * 0.9

        def caught_up() -> bool:
            doc = json.loads(status.read_text()) if status.exists() else {}
            return doc.get("samples_in", 0) >= expected

        assert wait_for(caught_up, 30)
    finally:
        rc = agent.stop()
        if sim is not None:
            sim.stop()
    lines = agent.drain()
    assert rc == 0, "".join(lines[-20:])
    alerts = _alerts(lines)
    raised = [a for a in alerts if a["kind"] == "raised"]
    assert raised, "".join(lines[-20:])
    assert raised[0]["seq_end"] / RATE >= ONSET_S  # no alert on the healthy part
    summary = json.loads(next(x for x in lines if x.startswith("edge-agent stopped: ")).split(": ", 1)[1])
    assert summary["windows_scored"] > 150 and summary["pump-7"]["frames_dropped"] == 0


@pytest.mark.slow
def test_firmware_sim_over_mqtt_and_last_will(tmp_path, agent_bundle):
    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    seen: list[bytes] = []
    watcher = MqttConnection(broker.host, broker.port, "watcher", on_message=lambda m: seen.append(m.payload),
                             subscriptions=[("vib/pump-7/status", 1), ("vib/gateway/pump-7/availability", 1)])
    agent = sim = None
    try:
        cfg = agent_config(
            tmp_path, agent_bundle, source={"kind": "mqtt", "sample_rate": RATE},
            mqtt={"host": broker.host, "port": broker.port, "keepalive": 5},
            status={"every_s": 0.5, "file": str(tmp_path / "status.json"), "mqtt": True},
        )
        agent = Proc([str(BIN / "edge-agent"), "run", "--config", str(cfg)], tmp_path)
        assert agent.wait_line(r"^edge-agent: device pump-7", 60), agent.drain()
        watcher.start()
        assert wait_for(lambda: any(p.startswith(b"{") for p in seen), 20)
        sim = _sim(["--link", "mqtt", "--broker", f"{broker.host}:{broker.port}", "--device", "pump-7",
                    "--frame-samples", "1024"], tmp_path)
        assert sim.p.wait(120) == 0, sim.drain()
        assert agent.wait_line(r"^ALERT raised", 30), agent.drain()
        os.kill(agent.p.pid, signal.SIGKILL)  # a crash: no clean disconnect, the broker sends the last will
        agent.p.wait(10)
        assert wait_for(lambda: seen and seen[-1] == b"offline", 20)  # the gateway's availability
    finally:
        watcher.stop()
        if agent is not None:
            agent.stop()
        if sim is not None:
            sim.stop()
        broker.stop()
    raised = [a for a in _alerts(agent.drain()) if a["kind"] == "raised"]
    assert raised and raised[0]["seq_end"] / RATE >= ONSET_S
