"""Helpers for the simulator tests: a reader that drains a byte source into a decoder until a condition
holds or a deadline passes. (mosquitto and shared_data fixtures: tests/conftest.py.)"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable


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
