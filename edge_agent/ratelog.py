"""One rate-limited logger for conditions that can repeat at sample rate (bad frames, a dead port, a full disk).

Everything is counted elsewhere regardless; the log only has to say that it is happening, without a
line per frame. ``RateLimitedLog(log).log(level, key, msg, *args)`` writes at most one record per
``interval_s`` per key and reports how many were suppressed in between.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    """Log at most one record per ``interval_s`` per key; the records in between are counted and reported.

    Thread-safe.
    """

    def __init__(self, log: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 prefix: str = ""):
        self._log = log
        self._prefix = prefix.replace("%", "%%")  # every message starts with it (e.g. "sensor pump-7: ")
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg = msg + " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self._log.log(level, self._prefix + msg, *args, exc_info=exc_info)

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)
