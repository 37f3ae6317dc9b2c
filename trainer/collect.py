"""Central-side collector: gateway uploads into the Parquet dataset (``trainer.dataset``), at least once,
scaled out over N collectors with an MQTT 5 shared subscription.

::

    broker ── $share/<group>/vib/+/upload ──► collector 1 ─┐   (the broker hands each message to ONE member)
                                          └─► collector 2 ─┴─► DATASET/device=…/date=…/part-….parquet

* **At least once, end to end.** The client is MQTT 5 with ``manual_ack``: a message is acknowledged
  (PUBACK) only after the record is in a Parquet file that was fsynced and renamed into place (or was
  found invalid, or its id is already in the dataset). A collector killed at any point loses nothing: the
  broker re-sends what was not acknowledged when the collector's session reconnects.
* **Persistent session.** ``clean_start = False`` with a session expiry (default one day) and a stable
  client id (``collect-<group>-<host>-<member>``), so a restarted collector resumes its own session.
* **Bounded.** The client's Receive Maximum caps the messages the broker sends before it sees an
  acknowledgement; records are buffered up to ``flush_records`` / ``flush_bytes`` / ``flush_s`` and then
  written, one file per device and date, and acknowledged together.
* **Receipts, end to end.** Once records are durable their ids are published (QoS 1) to
  ``vib/<device>/upload/receipt``; a gateway keeps each record in its spool until a receipt names it and
  sends it again otherwise. This covers what MQTT acknowledgements cannot: messages a broker drops (a broker
  restart forgets shared subscriptions, measured on mosquitto 2.0.11; queue limits; an expired session).
* **Idempotent.** A record whose id is in the dataset (a QoS 1 re-send, a message collected by two members
  around a session hand-over) is acknowledged and skipped; readers drop any duplicate that slipped through.

paho's ``on_message`` only puts ``(mid, payload)`` on a queue; decoding, writing and acknowledging happen
on the calling thread, until ``stop_event`` is set (what is buffered then is written and acknowledged).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.contract import topics
from edge_agent.contract.errors import ConfigError, UploadError
from edge_agent.contract.topics import receipt_topic
from edge_agent.contract.upload_record import decode_record, encode_receipts
from trainer.dataset import DatasetWriter

log = logging.getLogger(__name__)

UPLOAD_FILTER = "vib/+/upload"


def shared_filter(group: str | None, topic: str = UPLOAD_FILTER) -> str:
    """``$share/<group>/<topic>``, or ``topic`` alone without a group."""
    if not group:
        return topic
    if any(c in group for c in "/+#") or not group.strip():
        raise ValueError(f"share group {group!r} must be non-empty without '/', '+', '#'")
    return f"$share/{group}/{topic}"


def default_client_id(group: str | None, member: int = 1) -> str:
    """A client id that is the same at every start on this host (so the session resumes)."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40]
    return f"collect-{group or 'all'}-{host}-{member}"


@dataclass
class CollectStats:
    """Counts of one ``collect`` run (owned by the collecting thread, read after it returns)."""

    received: int = 0
    written: int = 0  # records now in visible dataset files
    duplicates: int = 0  # ids already in the dataset: acknowledged, not written again
    invalid: int = 0  # not a valid record: acknowledged and dropped (logged)
    acked: int = 0
    files: int = 0
    flush_errors: int = 0  # writes that failed (disk full, ...): retried, nothing acknowledged meanwhile
    dropped: int = 0  # hand-over queue full: not acknowledged, so the broker re-sends it after a reconnect
    connects: int = 0
    receipts: int = 0  # receipt messages published
    per_device: dict[str, int] = field(default_factory=dict)


def collect(
    broker_host: str,
    broker_port: int,
    out_dir: str | os.PathLike[str],
    *,
    stop_event: threading.Event,
    group: str | None = "collectors",
    topic: str = UPLOAD_FILTER,
    client_id: str | None = None,
    member: int = 1,
    subscribed: threading.Event | None = None,
    receive_maximum: int = 2000,
    flush_records: int = 1000,
    flush_bytes: int = 64 * 1024 * 1024,
    flush_s: float = 1.0,
    session_expiry_s: int = 86_400,
    keepalive: int = 30,
    username: str | None = None,
    password: str | None = None,
    max_records: int | None = None,
    receipts: bool = True,
) -> CollectStats:
    """Collect upload records into the dataset ``out_dir`` until ``stop_event`` is set.

    Args:
        group: shared-subscription group (members split the messages); None: a plain subscription.
        topic: the upload topic filter.
        client_id: MQTT client id (default ``default_client_id(group, member)``); must be unique per
            running collector and stable across its restarts.
        subscribed: set once the broker granted the subscription.
        receive_maximum: most unacknowledged messages the broker may send (MQTT 5 Receive Maximum).
        flush_records, flush_bytes, flush_s: write and acknowledge once this many records / sample bytes
            are buffered, or the oldest buffered record is this old.
        session_expiry_s: how long the broker keeps this collector's session (and queues its share)
            while it is away.
        max_records: return after this many records were written.
        receipts: once records are durable, confirm their ids to the gateways (``vib/<device>/upload/receipt``),
            which keep each record until a receipt names it.

    Returns:
        CollectStats.
    """
    if not 1 <= receive_maximum <= 65535:
        raise ValueError(f"receive_maximum must be 1..65535, got {receive_maximum}")
    sub_filter = shared_filter(group, topic)
    writer = DatasetWriter(out_dir, writer_id=(client_id or default_client_id(group, member)).replace("/", "_"))
    inbox: queue.Queue[tuple[int, int, int, bytes]] = queue.Queue(maxsize=2 * receive_maximum + 16)
    stats = CollectStats()
    cid = client_id or default_client_id(group, member)
    # Packet ids belong to one connection: after a reconnect the broker re-sends what was not acknowledged
    # (under the same ids) and may reuse freed ids for new messages, so an acknowledgement still owed from
    # an older connection is never sent: the re-sent copy is acknowledged instead (as a duplicate).
    generation = [0]

    def on_connect(client: mqtt.Client, userdata: object, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker %s:%d refused the connection: %s", broker_host, broker_port, reason_code)
            return
        stats.connects += 1
        generation[0] += 1
        log.info("connected to %s:%d as %s (session present: %s)", broker_host, broker_port, cid,
                 getattr(flags, "session_present", None))
        client.subscribe(sub_filter, options=SubscribeOptions(qos=1))

    def on_subscribe(client: mqtt.Client, userdata: object, mid: int, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("subscription to %s refused: %s", sub_filter, reason_codes)
            return
        log.info("subscribed to %s on %s:%d", sub_filter, broker_host, broker_port)
        if subscribed is not None:
            subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            inbox.put_nowait((generation[0], msg.mid, msg.qos, bytes(msg.payload)))
        except queue.Full:  # not acknowledged: the broker re-sends it on the next connection
            stats.dropped += 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, manual_ack=True)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = int(session_expiry_s)
    props.ReceiveMaximum = int(receive_maximum)

    unacked: list[tuple[int, int, int]] = []  # (generation, mid, qos) of records buffered or skipped
    owed: dict[str, list[str]] = {}  # device -> ids to confirm to the gateways once durable (receipts)
    oldest = [None]  # monotonic time the oldest buffered record arrived
    warned = [0.0]

    def ack_all() -> None:
        for gen, mid, qos in unacked:
            if qos > 0 and gen == generation[0]:
                client.ack(mid, qos)
                stats.acked += 1
        unacked.clear()
        for device, ids in owed.items():  # end to end: the gateway may now forget these records
            for payload in encode_receipts(ids, cid):
                client.publish(receipt_topic(device), payload, qos=1)
                stats.receipts += 1
        owed.clear()

    def flush() -> bool:
        try:
            files = writer.flush()
        except OSError as exc:
            stats.flush_errors += 1
            log.error("cannot write the dataset (%d records kept, not acknowledged): %s", writer.pending, exc)
            return False
        stats.files += len(files)
        stats.written = writer.stats.written
        ack_all()
        oldest[0] = None
        return True

    def handle(gen: int, mid: int, qos: int, payload: bytes) -> None:
        stats.received += 1
        try:
            rec = decode_record(payload)
            topics.check_id(rec.device)
        except (UploadError, ConfigError) as exc:
            stats.invalid += 1
            now = time.monotonic()
            if now - warned[0] > 5.0:  # rate-limited: a flood of bad payloads logs every 5 s
                log.warning("dropped invalid upload (%d so far): %s", stats.invalid, exc)
                warned[0] = now
        else:
            if receipts:
                owed.setdefault(rec.device, []).append(rec.id)
            if writer.add(rec):
                stats.per_device[rec.device] = stats.per_device.get(rec.device, 0) + 1
                if oldest[0] is None:
                    oldest[0] = time.monotonic()
            else:
                stats.duplicates += 1
        unacked.append((gen, mid, qos))
        if writer.pending == 0 and oldest[0] is None:
            ack_all()  # only invalid or duplicate records: nothing to make durable first

    client.connect_async(broker_host, broker_port, keepalive=keepalive, clean_start=False, properties=props)
    client.loop_start()
    retry_at = 0.0
    try:
        while not stop_event.is_set():
            if max_records is not None and writer.stats.written + writer.pending >= max_records:
                break
            try:
                item = inbox.get(timeout=0.05)
            except queue.Empty:
                item = None
            if item is not None:
                handle(*item)
            due = writer.pending and (writer.pending >= flush_records or writer.pending_bytes >= flush_bytes
                                      or time.monotonic() - (oldest[0] or 0.0) >= flush_s)
            if due and time.monotonic() >= retry_at and not flush():
                retry_at = time.monotonic() + 1.0
        for _ in range(3):  # what was received is written before we go
            if not writer.pending or flush():
                break
            time.sleep(1.0)
        else:
            log.error("stopping with %d records unwritten (not acknowledged: the broker keeps them)", writer.pending)
    finally:
        client.disconnect()  # a normal DISCONNECT: the session (and anything unacknowledged) stays on the broker
        client.loop_stop()
    stats.written = writer.stats.written
    log.info("collector stopped: %d received, %d written, %d duplicates, %d invalid, %d files",
             stats.received, stats.written, stats.duplicates, stats.invalid, stats.files)
    return stats


# ------------------------------------------------------------------------------------------------ CLI
def _host_port(broker: str) -> tuple[str, int]:
    import click

    host, _, port = broker.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {broker!r}", param_hint="--broker")
    return host, int(port)


def command():
    """The ``trainer collect`` click command."""
    import click

    @click.command("collect")
    @click.option("--broker", default="127.0.0.1:1883", show_default=True, help="MQTT broker HOST:PORT.")
    @click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder (Parquet).")
    @click.option("--group", default="collectors", show_default=True,
                  help="Shared-subscription group: collectors of one group split the uploads.")
    @click.option("--no-share", is_flag=True, help="Plain subscription: this collector gets every upload.")
    @click.option("--member", type=click.IntRange(1, 9999), default=1, show_default=True,
                  help="Number of this collector on this host (part of the default client id).")
    @click.option("--client-id", default=None, help="MQTT client id (default: collect-<group>-<host>-<member>).")
    @click.option("--topic", default=UPLOAD_FILTER, show_default=True)
    @click.option("--receive-maximum", type=click.IntRange(1, 65535), default=2000, show_default=True,
                  help="Most unacknowledged messages the broker may send.")
    @click.option("--flush-s", type=click.FloatRange(0.01, 3600), default=1.0, show_default=True,
                  help="Write (and acknowledge) buffered records at least this often.")
    @click.option("--session-expiry-s", type=click.IntRange(0, 2**32 - 1), default=86_400, show_default=True,
                  help="How long the broker keeps this collector's session while it is away.")
    @click.option("--max-records", type=click.IntRange(min=1), default=None, help="Stop after this many (default: Ctrl-C).")
    @click.option("--no-receipts", is_flag=True, help="Do not confirm durable records to the gateways.")
    def collect_command(broker: str, out, group: str, no_share: bool, member: int, client_id: str | None, topic: str,
                        receive_maximum: int, flush_s: float, session_expiry_s: int, max_records: int | None,
                        no_receipts: bool) -> None:
        """Collect the windows gateways upload into a Parquet dataset (train on it with --data DATASET)."""
        from edge_agent.shutdown import stop_on_signals

        host, port = _host_port(broker)
        stop = threading.Event()
        stop_on_signals(stop)
        sub = shared_filter(None if no_share else group, topic)
        click.echo(f"collecting {sub} from {broker} into {out} (Ctrl-C to stop)")
        stats = collect(host, port, out, stop_event=stop, group=None if no_share else group, topic=topic,
                        client_id=client_id, member=member, receive_maximum=receive_maximum, flush_s=flush_s,
                        session_expiry_s=session_expiry_s, max_records=max_records, receipts=not no_receipts)
        click.echo(f"received {stats.received}, written {stats.written}, duplicates {stats.duplicates}, "
                   f"invalid {stats.invalid}, files {stats.files}; per device {dict(stats.per_device)}")

    return collect_command
