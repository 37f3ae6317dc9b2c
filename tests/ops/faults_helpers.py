"""Helpers for the fault tests: a sensor feeding a real pty in real time whose machine can be switched between
healthy and broken, and a running ``edge-agent run`` process whose output lines are collected."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from edge_agent.contract.binary import encode_frame, int16_scale
from edge_agent.contract.frames import SEQ_MOD
from firmware_sim import signals
from firmware_sim.link import PtyLink
from tests.agent.agent_process import Proc
from tests.agent.pipeline_helpers import RATE

BIN = Path(sys.executable).parent
FRAME = 1024


class Sensor(threading.Thread):
    """Writes IMS-like bearing frames (20 kHz x 4, int16) to a pty at the real rate; ``state`` picks the signal."""

    def __init__(self, link_path: Path, seconds: float = 4.0) -> None:
        super().__init__(daemon=True, name="test-sensor")
        self.link = PtyLink(link_path)
        self.state = "healthy"
        n = int(RATE * seconds) // FRAME * FRAME
        self._x = {s: signals.generate(signals.make_source("bearing", state=s, preset="ims", seed=3), n)
                   for s in ("healthy", "broken")}
        self._scale = int16_scale(10.0)
        self._halt = threading.Event()
        self.seq = 0
        self.paused = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        sent = 0
        while not self._halt.is_set():
            x = self._x[self.state]
            a = self.seq % len(x)
            if not self.paused.is_set():
                self.link.send(encode_frame(self.seq % SEQ_MOD, x[a : a + FRAME], scale=self._scale))
            self.seq += FRAME
            sent += FRAME
            self._halt.wait(max(0.0, t0 + sent / RATE - time.monotonic()))  # real-time pacing

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.link.close()


class AgentProcess(Proc):
    """``edge-agent run --config CFG`` with extra environment; stdout+stderr lines collected by a thread."""

    def __init__(self, config: Path, env: dict | None = None, preexec_fn=None, options: tuple[str, ...] = ()) -> None:
        import os

        super().__init__([str(BIN / "edge-agent"), *options, "run", "--config", str(config)], config.parent,
                         env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)

    def output(self) -> str:
        return "".join(self.drain())

    def stop(self, timeout: float = 30) -> int:
        return super().stop(timeout=timeout)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
