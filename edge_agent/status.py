"""What the gateway reports about itself: typed counters, the status document, one atomic JSON writer.

Every counter the agent keeps is a field of a dataclass here (or of ``WindowerCounters``), so none can
be kept without reaching ``edge-agent status``, the status file and the retained MQTT status::

    status file / `edge-agent status`     {gateway summary ..., "sensors": {device: SensorStatus}}
    vib/<device>/status                   SensorStatus of that sensor ("offline" after a clean stop)
    vib/gateway/<gateway>/status          the gateway summary
    vib/gateway/<gateway>/availability    "online" / "offline" (the connection's last will)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class SourceCounters:
    """What a sample source received and refused (each written by the source's own thread)."""

    bytes: int = 0
    messages: int = 0  # MQTT messages
    frames: int = 0  # frames decoded and queued
    frames_dropped: int = 0  # queue full: the scorer fell behind
    crc_errors: int = 0
    bad_headers: int = 0
    bytes_discarded: int = 0  # garbage between frames, rejected frames
    bad_lines: int = 0  # CSV
    bad_payloads: int = 0  # MQTT payloads that decode to no frame
    oversized_payloads: int = 0  # MQTT payloads refused unparsed for their size
    reconnects: int = 0
    open_failures: int = 0
    read_errors: int = 0
    samples_dropped: int = 0  # in the frames dropped for a full queue
    intake_throttled_s: float = 0.0  # the reader paused: the sensor sent more than its intake budget decodes
    intake_throttles: int = 0
    gaps_detectable: bool = True  # false: the payloads carry no sequence number (samples numbered as they arrive)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class SinkCounters:
    """One alert sink: events handed to it, delivered, failed (and waiting for a retry, where it retries)."""

    delivered: int = 0
    failed: int = 0
    pending: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class UploadCounters:
    offered: int = 0
    sent: int = 0
    pending: int = 0
    dropped: int = 0  # offers the spool refused
    failed_attempts: int = 0
    spool_evicted: int = 0
    spool_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ModelCounters:
    swaps: int = 0
    rejects: int = 0
    last_reject: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class HealthState:
    """Whether the sensor is being monitored: ``ok``, or a fault (``no_data``, ``no_windows``) with its reason."""

    state: str = "ok"
    reason: str = ""
    since: float | None = None  # unix seconds the fault began
    events: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Counters:
    """Counters of one sensor that are not owned by the source or the windower."""

    internal_errors: int = 0
    calibration_ignored: int = 0  # a calibration file present but not applied (unreadable, invalid, stale)
    calibration_note: str | None = None  # why, the last time
    model: ModelCounters = field(default_factory=ModelCounters)


def write_json_atomic(path: Path, doc: object, *, indent: int | None = 2) -> bool:
    """Write JSON to ``path`` through a temp file in the same folder and a rename: readers never see half a
    file. Returns False (logged) when it cannot be written; never raises for an OS error."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=indent)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True
