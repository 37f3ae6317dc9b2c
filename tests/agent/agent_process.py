"""A real ``edge-agent run`` process for the tests that must see it survive (or die), and a paced pty feeder."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from firmware_sim.link import PtyLink
from tests.agent.pipeline_helpers import frames_of
from tests.waiting import wait_for

BIN = Path(sys.executable).parent


def stop_process(p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Send ``sig`` (if it still runs), wait ``timeout`` s, then SIGKILL; the exit status."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait(timeout)


class Proc:
    """A subprocess whose stdout (and stderr) lines are collected by a thread (no blocking reads in the test)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict | None = None, preexec_fn=None) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.all: list[str] = []
        self.p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=env, preexec_fn=preexec_fn)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line)

    def drain(self) -> list[str]:
        """Every line so far."""
        while True:
            try:
                self.all.append(self.lines.get_nowait())
            except queue.Empty:
                return self.all

    def wait_line(self, pattern: str, timeout: float) -> str | None:
        """The next line matching ``pattern`` within ``timeout`` s (None: none, or the process ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.p.poll() is not None:
                    break
                continue
            self.all.append(line)
            if re.search(pattern, line):
                return line
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        return stop_process(self.p, sig, timeout)


class AgentProcess:
    """``edge-agent -v run --config CFG`` with stdout and stderr in files under ``workdir``."""

    def __init__(self, config: Path, workdir: Path, status_file: Path) -> None:
        self.status_file = status_file
        self.out_path, self.err_path = workdir / "agent.out", workdir / "agent.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.p = subprocess.Popen([str(BIN / "edge-agent"), "-v", "run", "--config", str(config)], cwd=workdir,
                                      stdout=out, stderr=err)

    def status(self) -> dict:
        """The status file the agent writes ({} before the first)."""
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.status_file.read_text())
        return {}

    def sensor(self, device: str = "pump-7") -> dict:
        return self.status().get("sensors", {}).get(device, {})

    def wait_sensor(self, predicate, timeout: float = 20.0) -> bool:
        """Wait until ``predicate(sensor status)`` holds while the process lives."""
        return wait_for(lambda: self.alive and bool(predicate(self.sensor())), timeout)

    @property
    def alive(self) -> bool:
        return self.p.poll() is None

    def log(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        return stop_process(self.p, timeout=timeout)


class Feeder:
    """Stream ``x`` (looped, sequence numbers running on) into a pty at about ``speed`` x real time."""

    def __init__(self, link: PtyLink, x: np.ndarray, rate: int, speed: float = 2.0, frame: int = 1024) -> None:
        self.link, self.x, self.frame = link, x, frame
        self.pause = frame / rate / speed
        self.stop_event = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(10)

    def _run(self) -> None:
        seq = 0
        while not self.stop_event.is_set():
            for f in frames_of(self.x, self.frame, seq0=seq):
                self.link.send(f)
                self.sent += self.frame
                if self.stop_event.wait(self.pause):
                    return
            seq += len(self.x) // self.frame * self.frame
