"""Fixtures for the trainer tests.

No ``__init__.py`` in this folder on purpose: with one, pytest would import it as a package
named ``trainer`` and shadow the real ``trainer`` package.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real mosquitto on a free 127.0.0.1 port; yields (host, port) once it accepts connections."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n", encoding="utf-8")
    log = open(tmp_path / "mosquitto.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10.0
        while not _accepts(port):
            if proc.poll() is not None:
                output = (tmp_path / "mosquitto.log").read_text()
                pytest.fail(f"mosquitto exited with {proc.returncode}: {output}")
            if time.monotonic() > deadline:
                pytest.fail("mosquitto did not accept connections within 10 s")
            time.sleep(0.02)  # polling interval of a condition with a deadline
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
