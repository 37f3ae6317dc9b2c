"""The sensor node's main loop: read a source, inject faults, encode, pace, send over a link.

Pacing follows the sensor clock: frame k (samples [k*N, (k+1)*N)) is sent when its last sample
has been acquired, at ``start + (k+1)*N / (rate*speed)`` on ``time.monotonic()``; speed 0 sends
as fast as the link takes it. Each frame's ``t0_us`` is the sensor clock of its first sample,
``t0_us + round(seq * 1e6 / rate)`` (plus jitter when injected). ``seq`` counts samples from 0.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.contract.binary import SAMPLE_TYPES, encode_frame, int16_scale
from edge_agent.contract.csv_lines import encode_csv_lines
from edge_agent.contract.frames import MAX_SAMPLES, SEQ_MOD
from edge_agent.contract.json_mapping import JsonMapping
from edge_agent.contract.mqtt_payload import encode_json_payload
from firmware_sim.faults import FaultInjector, Ledger
from firmware_sim.signals import Source

log = logging.getLogger(__name__)

#: A sensor's own JSON shapes (MQTT), with ``StreamConfig.mapping``: format -> ``JsonMapping.encode`` layout.
JSON_SHAPES = {"json-per-sample": "sample", "json-columns": "columns", "json-records": "records", "json-rows": "rows"}
FORMATS = ("binary", "csv", "json", *JSON_SHAPES)


def default_fields(n_channels: int) -> tuple[str, ...]:
    """Channel field names a sensor would use: x, y, z for three channels, else ch0, ch1, ..."""
    return ("x", "y", "z") if n_channels == 3 else tuple(f"ch{i}" for i in range(n_channels))


@dataclass(frozen=True)
class StreamConfig:
    """How samples are framed and paced.

    fmt: binary (serial or MQTT), csv (serial) or json (MQTT, the wire JSON object); or a sensor's own JSON
        shape (MQTT, see ``JSON_SHAPES``) written through ``mapping``: json-per-sample (one message per sample,
        ``{"x": .., "y": .., "z": ..}`` as in the IBM Watson IoT tutorial), json-columns (one array per
        channel), json-records (an array of sample objects), json-rows (``mapping.values``: a list of rows).
    mapping: the ``JsonMapping`` of the JSON shapes (field names, sequence and time fields); default:
        fields x, y, z for three channels (else ch0, ch1, ...), no sequence or time field.
    sample_type: int16 (scaled by the source's full scale) or float32, for binary frames.
    frame_samples: samples per frame / message (1..4096).
    speed: 1 = real time, 2 = twice as fast, 0 = as fast as possible.
    outage_s: sensor time a link stays down after an injected disconnect.
    """

    fmt: str = "binary"
    mapping: JsonMapping | None = None
    sample_type: str = "int16"
    frame_samples: int = 256
    speed: float = 1.0
    t0_us: int = 0
    outage_s: float = 0.5
    progress_s: float = 5.0

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.fmt!r}")
        if self.mapping is not None and self.fmt not in JSON_SHAPES:
            raise ValueError(f"a payload mapping goes with the formats {', '.join(JSON_SHAPES)} only")
        if self.sample_type not in SAMPLE_TYPES:
            raise ValueError(f"sample type must be int16 or float32, got {self.sample_type!r}")
        if not 1 <= self.frame_samples <= MAX_SAMPLES:
            raise ValueError(f"frame samples must be 1..{MAX_SAMPLES}, got {self.frame_samples}")
        if not self.speed >= 0:
            raise ValueError(f"speed must be >= 0, got {self.speed}")


@dataclass
class StreamReport:
    samples: int  # samples produced by the sensor (sent, dropped or lost in outages)
    elapsed_s: float
    configured_rate: float  # rate * speed (inf when speed is 0)
    achieved_rate: float  # samples / elapsed_s
    ledger: Ledger
    overflow_bytes: int = 0

    def summary(self) -> dict[str, float | int]:
        return {
            "samples": self.samples,
            "elapsed_s": round(self.elapsed_s, 3),
            "configured_rate_hz": self.configured_rate,
            "achieved_rate_hz": round(self.achieved_rate, 1),
            "overflow_bytes": self.overflow_bytes,
            **self.ledger.summary(),
        }


class Streamer:
    """Streams ``source`` over ``link`` (see ``firmware_sim.link``) with optional faults."""

    def __init__(self, source: Source, link, config: StreamConfig, faults: FaultInjector | None = None) -> None:
        self.source = source
        self.link = link
        self.cfg = config
        self.faults = faults or FaultInjector(full_scale=source.full_scale)
        self.scale = int16_scale(source.full_scale)
        self.mapping = config.mapping
        if config.fmt in JSON_SHAPES and self.mapping is None:
            self.mapping = JsonMapping(fields=default_fields(source.n_channels))

    def _encode(self, seq: int, x: np.ndarray, t0_us: int) -> list[bytes]:
        """The messages (serial: chunks) carrying one frame's samples."""
        fmt = self.cfg.fmt
        if fmt == "binary":
            return [encode_frame(seq, x, t0_us=t0_us, sample_type=self.cfg.sample_type, scale=self.scale)]
        if fmt == "csv":
            return [encode_csv_lines(seq, x, t0_us, self.source.sample_rate)]
        if fmt == "json":
            return [encode_json_payload(seq, x, t0_us=t0_us)]
        return self.mapping.encode(seq, x, t0_us=t0_us, sample_rate=self.source.sample_rate, layout=JSON_SHAPES[fmt])

    def run(
        self,
        n_samples: int,
        stop: threading.Event | None = None,
        progress: Callable[[int, float], None] | None = None,
    ) -> StreamReport:
        """Stream ``n_samples`` samples (fewer if a replay ends or ``stop`` is set)."""
        stop = stop or threading.Event()
        cfg, faults, ledger = self.cfg, self.faults, self.faults.ledger
        rate = self.source.sample_rate
        pace = rate * cfg.speed
        outage = math.ceil(cfg.outage_s * rate)
        down_until = -1  # sample index at which a dropped link comes back
        done = 0
        start = time.monotonic()
        next_progress = start + cfg.progress_s
        while done < n_samples and not stop.is_set():
            x = self.source.read(min(cfg.frame_samples, n_samples - done))
            n = len(x)
            if n == 0:
                break
            if pace > 0:
                wait = start + (done + n) / pace - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    break
            seq = done % SEQ_MOD
            done += n
            if down_until >= 0:
                if done - n < down_until:
                    ledger.outage_samples += n
                    continue
                self.link.reconnect()
                down_until = -1
            if faults.disconnect():
                self.link.disconnect()
                down_until = done - n + outage
                ledger.outage_samples += n
                continue
            if faults.drop(seq, n):
                continue
            x = faults.samples(seq, x)
            t0 = faults.jitter(cfg.t0_us + round((done - n) * 1e6 / rate))
            junk = faults.garbage(cfg.fmt)
            if junk:
                self.link.send(junk)
                ledger.bytes_sent += len(junk)
            messages = self._encode(seq, x, t0)
            messages[0] = faults.flip(seq, messages[0], cfg.fmt)
            for data in messages:
                self.link.send(data)
                ledger.bytes_sent += len(data)
            ledger.frames_sent += 1
            ledger.samples_sent += n
            if progress is not None and time.monotonic() >= next_progress:
                progress(done, time.monotonic() - start)
                next_progress += cfg.progress_s
        if down_until >= 0:
            self.link.reconnect()
        elapsed = time.monotonic() - start
        return StreamReport(
            samples=done,
            elapsed_s=elapsed,
            configured_rate=pace if pace > 0 else math.inf,
            achieved_rate=done / elapsed if elapsed > 0 else math.inf,
            ledger=ledger,
            overflow_bytes=getattr(self.link, "overflow_bytes", 0),
        )
