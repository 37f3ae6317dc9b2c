"""The agent's log: one line per event on stderr (journald takes it from there), as text or as JSON.

``text``: ``2026-12-01T01:02:03.456Z WARNING edge_agent.sources: serial /dev/ttyUSB0: port lost (...)``;
``json``: ``{"time": "...", "level": "WARNING", "logger": "edge_agent.sources", "message": "...", "thread": "..."}``
(plus ``"exc"`` with the traceback, as one string: a record stays one line). A message's own newlines are
escaped in text mode too, so a line is always one event.

Repeated input errors (bad frames, payloads, a dead port) are rate-limited where they are raised
(``RateLimitedLog`` and the sources' own limits: one line per key and period, with the count of the
lines left out); every occurrence is counted in the status whatever the log shows.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, one line (newlines in the message or traceback escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info)
        return line.replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, thread, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": _iso(record.created), "level": record.levelname, "logger": record.name,
               "message": record.getMessage(), "thread": record.threadName}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup(level: str | int = "warning", fmt: str = "text", stream=None) -> None:
    """Configure the root logger once (replacing earlier handlers); paho's own logger is kept at WARNING."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level] if isinstance(level, str) else level)
    logging.getLogger("paho").setLevel(logging.WARNING)
