"""Fixtures for the simulator tests: a real mosquitto on a free loopback port, the shared data,
and a reader that drains a byte source into a decoder until a condition holds or a deadline passes."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MOSQUITTO = Path("/usr/sbin/mosquitto")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(host, port) of a mosquitto started for this test with a generated config."""
    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} is not installed")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n")
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"mosquitto exited: {(tmp_path / 'mosquitto.log').read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"mosquitto not listening on {port} after 10 s"
                time.sleep(0.02)  # bounded poll for the listener
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data folder (``/work/shared/data`` or ``../shared/data``); skips if absent."""
    for cand in (os.environ.get("SHARED_DATA"), "/work/shared/data", REPO.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    pytest.skip("real recordings not available (no /work/shared/data or ../shared/data): statistics not checked")


def drain_fd(fd: int, feed: Callable[[bytes], object], done: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Read ``fd`` into ``feed`` until ``done()`` or the deadline; returns ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if select.select([fd], [], [], min(left, 0.2))[0]:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                return done()
            if data:
                feed(data)
    return True
