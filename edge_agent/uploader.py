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

import collections
import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge_agent.contract import receipt as receipts_contract
from edge_agent.contract import topics
from edge_agent.contract.errors import SignatureError, UploadError
from edge_agent.contract.signing import Keyring
from edge_agent.contract.upload_record import KINDS
from edge_agent.mqtt_client import MqttConnection
from edge_agent.ratelog import RateLimitedLog
from edge_agent.settings import setting
from edge_agent.spool import Spool
from edge_agent.status import UploadCounters, fields_of

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


@dataclass(frozen=True)
class KeepPolicy:
    """What one sensor keeps for retraining (``[uploads]``).

    * ``every_s``: one normal window per period, drawn uniformly from the period's windows (a reservoir of
      one), instead of the first one: the whole day is sampled, not the start of each period. The first
      healthy window after start is kept at once.
    * ``drift_every_s``: the period while the score distribution drifts (``edge_agent.drift``): more healthy
      windows of the new condition, for the retraining the drift asks for (kind ``drift``).
    * ``context_before`` / ``context_after``: windows kept around every raised or escalated alert (kind
      ``alert``, with the alert's id as ``alert_ref``; an escalation keeps the id), from a ring of the last
      windows' raw samples.
    * ``calibration``: keep every window scored while the device calibrates its threshold.
    """

    every_s: float = setting(600.0, lo=1.0, hi=7 * 86_400.0, doc="one reservoir-sampled normal window per period")
    drift_every_s: float = setting(60.0, lo=1.0, hi=7 * 86_400.0, doc="the period while the scores drift")
    context_before: int = setting(5, lo=0, hi=1000, doc="windows kept before each alert")
    context_after: int = setting(5, lo=0, hi=1000, doc="windows kept after each alert")
    calibration: bool = setting(True, doc="keep the windows a calibration is computed on")
    only_normal: bool = setting(True, doc="the reservoir draws from windows in alert state normal only")


@dataclass
class Kept:
    """A window chosen for upload: its kind, raw samples (n, C) float32 and what the record needs."""

    kind: str
    samples: np.ndarray
    score: float | None
    threshold: float | None
    state: str
    time: float  # unix seconds of the last sample
    seq_end: int
    model_version: str
    alert_ref: str | None = None


class WindowKeeper:
    """Chooses a sensor's windows to upload; ``window`` once per scored window, on the scoring thread.

    Memory: the ring holds ``context_before`` windows' samples, the reservoir one.
    """

    def __init__(self, policy: KeepPolicy, seed: int | None = None) -> None:
        self.policy = policy
        self._ring: collections.deque[tuple[Kept, list[bool]]] = collections.deque(maxlen=max(policy.context_before, 1))
        self._rng = random.Random(seed)
        self._after = 0
        self._alert_ref: str | None = None
        self._period_start: float | None = None
        self._period_n = 0
        self._pick: Kept | None = None
        self.kept: dict[str, int] = {k: 0 for k in KINDS}

    def window(self, kept: Kept, *, event_kind: str | None, calibrating: bool, drifting: bool,
               now: float, alert_id: str | None = None) -> list[Kept]:
        """The windows to spool now (``kept`` describes the window just scored; ``now`` is monotonic; ``alert_id``:
        the id of the alert a ``raised`` event starts, which becomes its windows' ``alert_ref``; default a new
        uuid)."""
        out: list[Kept] = []
        flag = [False]  # emitted already (a window may sit in the ring after it was sent as "after" context)
        if self.policy.context_before:
            self._ring.append((kept, flag))
        if calibrating:
            if self.policy.calibration:
                out.append(_as(kept, "calibration"))
                flag[0] = True
        elif event_kind in ("raised", "escalated"):
            if event_kind == "raised" or self._alert_ref is None:  # an escalation is the same alert, more severe
                self._alert_ref = alert_id or uuid.uuid4().hex
            for k, f in list(self._ring):
                if not f[0]:
                    out.append(_as(k, "alert", self._alert_ref))
                    f[0] = True
            if not flag[0]:
                out.append(_as(kept, "alert", self._alert_ref))
                flag[0] = True
            self._after = self.policy.context_after
        elif self._after > 0:
            self._after -= 1
            out.append(_as(kept, "alert", self._alert_ref))
            flag[0] = True
        elif kept.state == "normal" or not self.policy.only_normal:
            if self._period_start is None:  # the first healthy window after start goes at once
                self._period_start = now
                out.append(_as(kept, "drift" if drifting else "normal"))
            else:
                self._reservoir(kept, drifting)
        period = self.policy.drift_every_s if drifting else self.policy.every_s
        if self._period_start is not None and now - self._period_start >= period:
            if self._pick is not None:
                out.append(self._pick)
            self._pick, self._period_n, self._period_start = None, 0, now
        for k in out:
            self.kept[k.kind] += 1
        return out

    def _reservoir(self, kept: Kept, drifting: bool) -> None:
        self._period_n += 1
        if self._rng.random() * self._period_n < 1.0:  # keep the n-th with probability 1/n
            self._pick = _as(kept, "drift" if drifting else "normal")


def _as(kept: Kept, kind: str, ref: str | None = None) -> Kept:
    return Kept(kind, kept.samples, kept.score, kept.threshold, kept.state, kept.time, kept.seq_end,
                kept.model_version, ref)


class ByteBudget:
    """A token bucket of bytes: ``bytes_per_hour`` on average, bursts of up to ``burst_s`` seconds' worth.

    A record larger than the burst goes out when the bucket is full and leaves it in debt, so nothing is
    stuck for ever. ``clock`` is monotonic seconds (injectable for tests).
    """

    def __init__(self, bytes_per_hour: float, burst_s: float = 600.0, clock=time.monotonic) -> None:
        if not bytes_per_hour > 0:
            raise ValueError(f"byte budget must be > 0 bytes per hour, got {bytes_per_hour}")
        self.rate = bytes_per_hour / 3600.0
        self.capacity = self.rate * burst_s
        self._clock = clock
        self._tokens = self.capacity
        self._t = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._t) * self.rate)
        self._t = now

    def take(self, size: int) -> bool:
        """Spend ``size`` bytes if the budget allows now."""
        self._refill()
        if self._tokens >= min(size, self.capacity):
            self._tokens -= size
            return True
        return False

    def wait_s(self, size: int) -> float:
        """Seconds until ``take(size)`` can succeed."""
        self._refill()
        return max(0.0, (min(size, self.capacity) - self._tokens) / self.rate)


class UplinkState:
    """Whether the gateway's bridge to the centre is up, from mosquitto's bridge notification topic
    (retained ``1`` / ``0``; ``notifications true`` in examples/mosquitto-bridge.conf). Up until told otherwise."""

    def __init__(self) -> None:
        self.up: bool | None = None

    def on_message(self, payload: bytes) -> None:  # paho's thread
        text = bytes(payload).strip()
        if text in (b"0", b"1"):
            self.up = text == b"1"

    def __call__(self) -> bool:
        return self.up is not False


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
        budget: ByteBudget | None = None,
        uplink=None,
        receipts: bool = False,
        receipt_timeout_s: float = 300.0,
        receipt_keys: Keyring | None = None,
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
        self._inflight_gen = 0  # connection.counters.connects when the in-flight batch was published
        self._sizes: dict[int, int] = {}  # record id -> payload bytes, of the in-flight records
        self._thread: threading.Thread | None = None
        self._ratelog = RateLimitedLog(logger)
        self.budget = budget  # bytes per hour on a metered link (None: no limit)
        self.uplink = uplink  # () -> bool: whether the bridge to the centre is up (None: not known, always send)
        # receipts: a PUBACK only means the (local) broker has it; the record stays in the spool, marked sent,
        # until a collector's receipt names it, and is sent again after receipt_timeout_s without one
        self.receipts = bool(receipts)
        self.receipt_timeout_s = float(receipt_timeout_s)
        self.receipt_keys: Keyring = receipt_keys or {}
        self._receipts: collections.deque[receipts_contract.Receipt] = collections.deque(maxlen=10_000)
        self.counters = UploadCounters()

    @property
    def pending(self) -> int:
        return len(self.spool)

    def status(self) -> dict:
        """``uploads`` in the gateway status: the uploader's counters and the spool's."""
        c = self.counters
        c.pending = self.pending
        c.awaiting_receipt = self.spool.awaiting_receipt() if self.receipts else None
        c.uplink = getattr(self.uplink, "up", None)
        return fields_of(c) | self.spool.status()

    def offer(self, topic: str, payload: bytes, kind: str = "normal", upload_id: str | None = None) -> int | None:
        """Spool a record for upload (``kind`` and ``upload_id`` of the upload record); return its spool id, or
        ``None`` if the spool refused it (counted)."""
        try:
            rid = self.spool.put(topic, payload, kind, upload_id)
        except UploadError as exc:
            self.counters.dropped += 1
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
                self.counters.failed_attempts += 1
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2.0, self.backoff_max_s)

    def on_receipt(self, device: str, payload: bytes) -> None:
        """paho's thread: a receipt on ``device``'s receipt topic; applied on the uploader thread if a trusted
        collector signed it for that device, else refused and counted (it deletes nothing)."""
        try:
            self._receipts.append(receipts_contract.decode(payload, self.receipt_keys, device))
        except (UploadError, SignatureError) as exc:
            self.counters.receipts_refused += 1
            self.counters.last_receipt_refused = str(exc)[:300]
            self._ratelog.log(logging.WARNING, "receipt", "uploader: receipt refused (%d so far): %s",
                              self.counters.receipts_refused, exc)
        self._wake.set()

    def _apply_receipts(self) -> None:
        while self._receipts:
            r = self._receipts.popleft()
            topic = topics.upload_topic(r.device)
            self.counters.confirmed += self.spool.confirm(r.ids, topic)
            if r.rejected:
                n = self.spool.confirm([i for i, _ in r.rejected], topic)
                self.counters.rejected += n
                self.counters.last_rejected = f"{r.device}: {r.rejected[-1][1]}"[:300]
                self._ratelog.log(logging.ERROR, "rejected", "uploader: collector %s refused %d record(s) of %s "
                                  "(kept in its quarantine, not sent again): %s", r.collector, n, r.device,
                                  r.rejected[-1][1])

    def _step(self) -> bool:
        """One round: finish the in-flight batch or publish the next one. False when the round failed."""
        if self.spool.waiting:
            self.spool.flush()  # records held in memory while another program locked the spool
        if self.receipts:
            self._apply_receipts()
        if self._inflight:
            return self._collect()
        if not self.connection.wait_connected(0.5):
            return True  # not a failed attempt: nothing was tried; paho is reconnecting
        if self.uplink is not None and not self.uplink():
            self.counters.uplink_waits += 1
            self.stop_event.wait(0.5)  # uploads stay in the spool (bounded, evicts by kind), not in the broker's RAM
            return True
        records = (self.spool.peek(self.batch, resend_after_s=self.receipt_timeout_s) if self.receipts
                   else self.spool.peek(self.batch))
        if not records:
            self._wake.wait(0.5)
            self._wake.clear()
            return True
        if self.budget is not None:
            allowed = 0
            while allowed < len(records) and self.budget.take(len(records[allowed].payload)):
                allowed += 1
            if not allowed:
                self.counters.throttled += 1
                self.stop_event.wait(min(self.budget.wait_s(len(records[0].payload)), 5.0))
                return True
            records = records[:allowed]
        self.spool.mark_attempt(r.id for r in records)
        self._inflight_gen = self.connection.counters.connects
        for rec in records:
            info = self.connection.publish(rec.topic, rec.payload, qos=self.qos)
            if info is None or info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break  # link went down or paho's queue is full: the rest waits for the next round
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # paho queued it and re-sends it on reconnect; we publish it again later (QoS 1 dup)
            self._inflight[rec.id] = info
            self._sizes[rec.id] = len(rec.payload)
        if not self._inflight:
            return False
        return self._collect()

    def _collect(self) -> bool:
        """Wait (up to ``ack_timeout_s``) for the in-flight batch; ack what was delivered, oldest first."""
        up_throughout = self.connection.connected
        gen = self.connection.counters.connects
        deadline = time.monotonic() + self.ack_timeout_s
        done: list[int] = []
        for rid, info in self._inflight.items():
            if not self._wait_published(info, deadline):
                break
            done.append(rid)
        for rid in done:
            del self._inflight[rid]
        if done:
            self.counters.sent_bytes += sum(info_size for rid, info_size in self._sizes.items() if rid in done)
            self.counters.sent += self.spool.mark_sent(done) if self.receipts else self.spool.ack(done)
            for rid in done:
                self._sizes.pop(rid, None)
        if not self._inflight:
            return True
        up_throughout = up_throughout and self.connection.connected and self.connection.counters.connects == gen
        if up_throughout and gen != self._inflight_gen:
            # paho re-sent them after a reconnect and the broker, up all along, did not acknowledge them
            # within ack_timeout_s: forget them and publish again (QoS 1 allows the duplicates)
            self._inflight.clear()
            self._sizes.clear()
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
