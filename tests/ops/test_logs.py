"""Logs: one line per event, JSON on request, and repeated input errors rate-limited while every one is counted."""

from __future__ import annotations

import json
import logging
from io import StringIO

from edge_agent import logs
from edge_agent.contract.binary import encode_frame, int16_scale
from firmware_sim import signals
from firmware_sim.link import PtyLink
from tests.agent.pipeline_helpers import RATE, agent_config
from tests.ops.faults_helpers import AgentProcess, read_json
from tests.waiting import wait_for


def test_formatters_keep_one_event_on_one_line():
    out = StringIO()
    logs.setup("info", "json", stream=out)
    log = logging.getLogger("edge_agent.test")
    log.warning("two\nlines %s", "here")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["message"] == "two\nlines here" and first["level"] == "WARNING" and first["logger"] == "edge_agent.test"
    assert "ValueError: boom" in second["exc"]
    out = StringIO()
    logs.setup("info", "text", stream=out)
    log.warning("two\nlines")
    assert out.getvalue().count("\n") == 1 and "two\\nlines" in out.getvalue()
    logs.setup("warning", "text")


def test_agent_logs_json_and_rate_limits_a_flood_of_bad_input(tmp_path, agent_bundle):
    """400 frames, every other one missing: 200 gaps counted, a handful of log lines."""
    link = PtyLink(tmp_path / "ttyS")
    cfg = agent_config(tmp_path, agent_bundle,
                       source={"kind": "serial", "sample_rate": RATE, "serial": {"port": str(tmp_path / "ttyS")}},
                       status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": False})
    agent = AgentProcess(cfg, options=("--log-format", "json"))
    x = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=5), 256 * 400)
    try:
        assert agent.wait_line(r"open \(binary\)", 60), agent.output()  # the port opens at start
        assert agent.wait_line(r"^edge-agent: device pump-7", 10), agent.output()
        frames = [encode_frame(a, x[a : a + 256], scale=int16_scale(10.0)) for a in range(0, len(x), 512)]
        for i in range(0, len(frames), 10):
            link.send(b"".join(frames[i : i + 10]))
        assert link.overflow_bytes == 0
        assert wait_for(lambda: read_json(tmp_path / "status.json").get("sensors", {}).get("pump-7", {})
                        .get("gaps", 0) >= 199, 20), read_json(tmp_path / "status.json")
    finally:
        rc = agent.stop()
        link.close()
    assert rc == 0
    records = []
    for line in agent.output().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # every log line is one JSON object
        else:  # the agent's own stdout lines, and the one line the TFLite runtime prints at start
            assert line.startswith(("edge-agent", "INFO: Created TensorFlow Lite")), line
    assert {"time", "level", "logger", "message", "thread"} <= set(records[0])
    gap_lines = [r for r in records if "sequence gap" in r["message"]]
    assert 1 <= len(gap_lines) <= 3, gap_lines

