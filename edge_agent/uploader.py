"""Store-and-forward uploads of windows for retraining: offer to a persistent spool, drain it over MQTT.

- ``Uploader.offer(topic, payload)`` only writes to the ``Spool`` (never touches the network), so the
  scoring loop never waits on a broker.
- The uploader thread drains the spool oldest-first in batches with QoS 1 and deletes a record from the
  spool only after its PUBACK. The next batch is published only when the previous one is fully
  acknowledged, so records reach subscribers in order (a QoS 1 re-send may repeat a record).
- While the broker is away the thread waits for the connection (paho reconnects with its own capped
  backoff); after a publish that fails or goes unacknowledged it backs off exponentially
  (``backoff_min_s`` doubling to ``backoff_max_s``). Messages handed to paho stay in paho's queue and are
  re-sent by paho on reconnect; the thread waits for those instead of publishing copies.
- ``UploadPolicy`` decides when a scored window is worth uploading (the caller encodes it with
  ``edge_agent.contract.upload_record.encode_record`` and calls ``offer``).

Counters: ``sent`` (records acknowledged), ``failed_attempts`` (rounds that failed or timed out),
``dropped`` (offers the spool refused), ``pending`` (records in the spool).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge_agent.contract.errors import UploadError
from edge_agent.mqtt_client import MqttConnection
from edge_agent.ratelog import RateLimitedLog
from edge_agent.spool import Spool

logger = logging.getLogger(__name__)


@dataclass
class UploadPolicy:
    """Pick one window every ``every_s`` seconds for retraining; with ``only_normal``, only while the alert
    state is ``normal`` (windows of a developing fault are not "healthy" training data).

    The first eligible window is picked at once; after that at most one per ``every_s`` (``now`` from a
    monotonic clock).
    """

    every_s: float
    only_normal: bool = True
    _last: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.every_s > 0 and math.isfinite(self.every_s)):
            raise ValueError(f"upload policy: every_s must be a positive number, got {self.every_s}")

    def should_upload(self, now: float, state: str) -> bool:
        """Whether the window scored at ``now`` in alert ``state`` should be uploaded (records the pick)."""
        if self.only_normal and state != "normal":
            return False
        if self._last is not None and now - self._last < self.every_s:
            return False
        self._last = now
        return True


class Uploader:
    """Drain ``spool`` to the broker of ``connection`` with QoS 1 in a background thread."""

    def __init__(
        self,
        spool: Spool,
        connection: MqttConnection,
        batch: int = 20,
        stop_event: threading.Event | None = None,
        *,
        ack_timeout_s: float = 10.0,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        qos: int = 1,
    ) -> None:
        if batch < 1:
            raise ValueError(f"uploader: batch must be >= 1, got {batch}")
        self.spool = spool
        self.connection = connection
        self.batch = int(batch)
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.ack_timeout_s = float(ack_timeout_s)
        self.backoff_min_s = float(backoff_min_s)
        self.backoff_max_s = float(backoff_max_s)
        self.qos = int(qos)
        self._wake = threading.Event()
        self._inflight: dict[int, mqtt.MQTTMessageInfo] = {}  # record id -> paho message, in publish order
        self._inflight_gen = 0  # connection.connects when the in-flight batch was published
        self._thread: threading.Thread | None = None
        self._ratelog = RateLimitedLog(logger)
        self.sent = 0
        self.failed_attempts = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self.spool)

    def offer(self, topic: str, payload: bytes) -> int | None:
        """Spool a record for upload; return its id, or ``None`` if the spool refused it (counted)."""
        try:
            rid = self.spool.put(topic, payload)
        except UploadError as exc:
            self.dropped += 1
            self._ratelog.log(logging.ERROR, "offer", "upload dropped: %s", exc)
            return None
        self._wake.set()
        return rid

    # ------------------------------------------------------------------ thread
    def start(self) -> Uploader:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Uploader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        backoff = self.backoff_min_s
        while not self.stop_event.is_set():
            try:
                ok = self._step()
            except UploadError as exc:  # the spool's database failed: retry later
                ok = False
                self._ratelog.log(logging.ERROR, "spool", "uploader: %s", exc)
            except Exception:  # keep the thread alive whatever happens; log it
                ok = False
                self._ratelog.log(logging.ERROR, "step", "uploader: unexpected error", exc_info=True)
            if ok:
                backoff = self.backoff_min_s
            else:
                self.failed_attempts += 1
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2.0, self.backoff_max_s)

    def _step(self) -> bool:
        """One round: finish the in-flight batch or publish the next one. False when the round failed."""
        if self.spool.waiting:
            self.spool.flush()  # records held in memory while another program locked the spool
        if self._inflight:
            return self._collect()
        if not self.connection.wait_connected(0.5):
            return True  # not a failed attempt: nothing was tried; paho is reconnecting
        records = self.spool.peek(self.batch)
        if not records:
            self._wake.wait(0.5)
            self._wake.clear()
            return True
        self.spool.mark_attempt(r.id for r in records)
        self._inflight_gen = self.connection.connects
        for rec in records:
            info = self.connection.publish(rec.topic, rec.payload, qos=self.qos)
            if info is None or info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break  # link went down or paho's queue is full: the rest waits for the next round
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # paho queued it and re-sends it on reconnect; we publish it again later (QoS 1 dup)
            self._inflight[rec.id] = info
        if not self._inflight:
            return False
        return self._collect()

    def _collect(self) -> bool:
        """Wait (up to ``ack_timeout_s``) for the in-flight batch; ack what was delivered, oldest first."""
        up_throughout = self.connection.connected
        gen = self.connection.connects
        deadline = time.monotonic() + self.ack_timeout_s
        done: list[int] = []
        for rid, info in self._inflight.items():
            if not self._wait_published(info, deadline):
                break
            done.append(rid)
        for rid in done:
            del self._inflight[rid]
        if done:
            self.sent += self.spool.ack(done)
        if not self._inflight:
            return True
        up_throughout = up_throughout and self.connection.connected and self.connection.connects == gen
        if up_throughout and gen != self._inflight_gen:
            # paho re-sent them after a reconnect and the broker, up all along, did not acknowledge them
            # within ack_timeout_s: forget them and publish again (QoS 1 allows the duplicates)
            self._inflight.clear()
        return False

    def _wait_published(self, info: mqtt.MQTTMessageInfo, deadline: float) -> bool:
        while not self.stop_event.is_set():
            try:
                if info.is_published():
                    return True
            except (RuntimeError, ValueError):
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            info.wait_for_publish(min(left, 0.25))
        return False
