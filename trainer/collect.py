"""Central-side collector: subscribe to gateway uploads and store them as ``<device>.jsonl``.

paho-mqtt 2.x runs its network loop on its own thread; its ``on_message`` callback only puts
the raw payload on a bounded queue (counting what a full queue drops). The calling thread
decodes each payload with ``edge_agent.contract.upload_record.decode_record``, appends valid records as
one line to ``out_dir/<device>.jsonl`` (flushed), and counts invalid ones. It runs until
``stop_event`` is set. Subscription happens in ``on_connect``, so a reconnect re-subscribes.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import paho.mqtt.client as mqtt

from edge_agent.contract import wire
from edge_agent.contract.errors import ConfigError, UploadError
from edge_agent.contract.upload_record import UploadRecord, decode_record

log = logging.getLogger(__name__)



def device_file_name(device: str) -> str:
    """``<device>.jsonl`` with every character outside ``[A-Za-z0-9_.-]`` percent-encoded (any agent id is a safe name)."""
    name = urllib.parse.quote(device, safe="")
    return f"{'%2E' + name[1:] if name.startswith('.') else name}.jsonl"


@dataclass
class CollectStats:
    """Counts of one ``collect`` run (owned by the collecting thread, read after it returns)."""

    received: int = 0
    written: int = 0
    invalid: int = 0
    dropped: int = 0  # queue full: paho thread could not hand the payload over
    per_device: dict[str, int] = field(default_factory=dict)


class _Inbox:
    """Bounded hand-over from paho's thread to the collector, with a drop counter."""

    def __init__(self, maxsize: int) -> None:
        self.q: queue.Queue[bytes] = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()
        self._dropped = 0

    def offer(self, payload: bytes) -> None:
        try:
            self.q.put_nowait(payload)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped


def _write(files: dict[str, IO[str]], out_dir: Path, rec: UploadRecord) -> None:
    fh = files.get(rec.device)
    if fh is None:
        fh = open(out_dir / device_file_name(rec.device), "a", encoding="utf-8")  # noqa: SIM115 (closed in collect)
        files[rec.device] = fh
    fh.write(rec.encode().decode("utf-8") + "\n")
    fh.flush()


def collect(
    broker_host: str,
    broker_port: int,
    out_dir: str | os.PathLike[str],
    *,
    stop_event: threading.Event,
    topic: str = "vib/+/upload",
    qos: int = 1,
    client_id: str = "",
    subscribed: threading.Event | None = None,
    queue_size: int = 1000,
    keepalive: int = 30,
    max_records: int | None = None,
) -> CollectStats:
    """Collect upload records from an MQTT broker until ``stop_event`` is set.

    Args:
        broker_host, broker_port: the MQTT broker.
        out_dir: folder for ``<device>.jsonl`` files (created; existing files are appended to).
        stop_event: set it (from any thread) to stop; pending queued records are written first.
        topic: subscription filter (``vib/<device>/upload`` by default).
        qos: subscription QoS (1: at least once, so a record may arrive twice).
        subscribed: set once the broker has granted the subscription (for tests and callers
            that must not publish earlier).
        queue_size: bound of the hand-over queue; overflow is counted in ``dropped``.
        max_records: return after writing this many records (None: until stopped).

    Returns:
        CollectStats with received / written / invalid / dropped counts and records per device.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inbox = _Inbox(queue_size)
    stats = CollectStats()

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker %s:%d refused the connection: %s", broker_host, broker_port, reason_code)
            return
        client.subscribe(topic, qos=qos)

    def on_subscribe(client: mqtt.Client, userdata: object, mid: int, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.warning("subscription to %s refused: %s", topic, reason_codes)
            return
        log.info("subscribed to %s on %s:%d", topic, broker_host, broker_port)
        if subscribed is not None:
            subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        inbox.offer(bytes(msg.payload))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    files: dict[str, IO[str]] = {}
    warned = [0.0]

    def handle(payload: bytes) -> None:
        stats.received += 1
        try:
            rec = decode_record(payload)
            wire.check_device_id(rec.device)
        except (UploadError, ConfigError) as exc:
            stats.invalid += 1
            now = time.monotonic()
            if now - warned[0] > 5.0:  # rate-limited: a flood of bad payloads logs every 5 s
                log.warning("dropped invalid upload (%d so far): %s", stats.invalid, exc)
                warned[0] = now
            return
        _write(files, out, rec)
        stats.written += 1
        stats.per_device[rec.device] = stats.per_device.get(rec.device, 0) + 1

    client.connect_async(broker_host, broker_port, keepalive=keepalive)
    client.loop_start()
    try:
        while not stop_event.is_set():
            if max_records is not None and stats.written >= max_records:
                break
            try:
                payload = inbox.q.get(timeout=0.1)
            except queue.Empty:
                continue
            handle(payload)
        client.disconnect()
        client.loop_stop()
        for _ in range(inbox.q.qsize()):  # what was handed over before the stop is not lost
            if max_records is not None and stats.written >= max_records:
                break
            try:
                handle(inbox.q.get_nowait())
            except queue.Empty:
                break
    finally:
        client.disconnect()
        client.loop_stop()
        for fh in files.values():
            fh.close()
        stats.dropped = inbox.dropped
    log.info("collector stopped: %d received, %d written, %d invalid, %d dropped",
             stats.received, stats.written, stats.invalid, stats.dropped)
    return stats
