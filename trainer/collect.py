"""Central-side collector: gateway uploads into the Parquet dataset (``trainer.dataset``), at least once,
scaled out over N collectors with an MQTT 5 shared subscription.

::

    broker ── $share/<group>/vib/+/upload ──► collector 1 ─┐   (the broker hands each message to ONE member)
                                          └─► collector 2 ─┴─► DATASET/device=…/date=…/part-….parquet
                                                            └► DATASET/_quarantine/…   (what cannot be stored)
    DATASET: a folder, or s3://bucket/prefix on AWS S3 or an S3-compatible store (trainer.dataset.location)

* **At least once, end to end.** The connection (``edge_agent.mqtt_client.MqttConnection``, MQTT 5,
  ``manual_ack``) acknowledges a message only after its record is in a Parquet file that is durable and
  visible whole (fsynced and renamed into place on a disk; an upload that completed on an object store), or in
  the quarantine (the same way), or already in the dataset. A collector killed at any point loses nothing: the
  broker re-sends what was not acknowledged when the session reconnects.
* **Persistent session.** ``clean_start = False`` with a session expiry (default one day) and a stable
  client id (``collect-<group>-<host>-<member>``), so a restarted collector resumes its own session.
* **Bounded.** The session's Receive Maximum caps the messages the broker sends before it sees an
  acknowledgement; records are buffered up to ``flush_records`` / ``flush_bytes`` / ``flush_s`` and then
  written, one file per device and date, and acknowledged together.
* **Identity from the channel.** The device of a record is the ``<device>`` of the topic it came on (which
  the broker's ACL lets only that device's gateway write); a record that claims another device is not
  stored as that device: it is quarantined.
* **Poison never stops it.** Every record is checked against the contract's bounds
  (``contract.upload_record``); one that cannot be stored (malformed, another device's, a clock far
  ahead, an id the dataset holds with other content, a write that fails for good) is quarantined:
  kept (``trainer.dataset.Quarantine``), counted by reason, acknowledged, and refused in a receipt so that
  its gateway stops sending it. A transient failure (a full disk; an object store that refuses or cannot be
  reached) keeps everything buffered and unacknowledged, sends no receipt, and is retried every second: the
  gateways keep their records spooled meanwhile (``flush_errors`` and ``deferred`` count it). An upload whose
  partition's ids cannot be read (the store is away) waits, unacknowledged, and is handled again later.
* **Receipts, end to end.** Once records are durable their ids are sent, signed with the collector's key
  (``--key``, ``contract.receipt``), to ``vib/<device>/upload/receipt``; a gateway keeps each record in its
  spool until a receipt names it and sends it again otherwise. This covers what MQTT acknowledgements
  cannot: messages a broker drops (a broker restart forgets shared subscriptions, measured on mosquitto
  2.0.11; queue limits; an expired session).
* **Idempotent.** A record whose (device, id) is in the dataset with the same content (a QoS 1 re-send, a
  message collected by two members around a session hand-over) is acknowledged and skipped; readers drop
  any duplicate that slipped through.

The connection's network thread only queues ``(connection, mid, qos, topic, payload)``; decoding, writing and
acknowledging happen on the thread that calls ``run``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.contract import receipt, topics
from edge_agent.contract.errors import UploadError
from edge_agent.contract.upload_record import UploadRecord, decode_record
from edge_agent.mqtt_client import MqttConnection
from edge_agent.ratelog import RateLimitedLog
from trainer.dataset import DatasetWriter, IdConflict, Location, Quarantine, describe_error

log = logging.getLogger(__name__)

UPLOAD_FILTER = "vib/+/upload"
#: A record stamped further ahead of the collector's clock than this is quarantined: its gateway's clock is wrong.
MAX_CLOCK_AHEAD = timedelta(days=1)


def shared_filter(group: str | None, topic: str = UPLOAD_FILTER) -> str:
    """``$share/<group>/<topic>``, or ``topic`` alone without a group."""
    if not group:
        return topic
    if any(c in group for c in "/+#") or not group.strip():
        raise ValueError(f"share group {group!r} must be non-empty without '/', '+', '#'")
    return f"$share/{group}/{topic}"


def default_client_id(group: str | None, member: int = 1) -> str:
    """A client id that is the same at every start on this host (so the session resumes)."""
    return f"collect-{group or 'all'}-{topics.suggest_id(socket.gethostname())[:40]}-{member}"


@dataclass
class CollectStats:
    """Counts of one collector (owned by the collecting thread, read after ``run`` returns)."""

    received: int = 0
    written: int = 0  # records now in visible dataset files
    duplicates: int = 0  # (device, id) already in the dataset, same content: acknowledged, not written again
    quarantined: int = 0  # kept in DATASET/_quarantine, acknowledged, refused in a receipt (by_reason says why)
    by_reason: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    files: int = 0
    flush_errors: int = 0  # writes that failed for a transient reason (disk full, store away): retried, nothing acked
    deferred: int = 0  # uploads put aside because their partition's ids could not be read (store away): retried
    dropped: int = 0  # hand-over queue full: not acknowledged, so the broker re-sends it after a reconnect
    connects: int = 0
    receipts: int = 0  # receipt messages published
    per_device: dict[str, int] = field(default_factory=dict)

    @property
    def invalid(self) -> int:
        return self.by_reason.get("invalid", 0)


@dataclass(frozen=True)
class CollectOptions:
    """How one collector runs (see ``collect``)."""

    out: Path | str | Location  # a folder, s3://bucket/prefix, or a Location (trainer.dataset.location)
    group: str | None = "collectors"
    topic: str = UPLOAD_FILTER
    member: int = 1
    client_id: str | None = None
    receive_maximum: int = 2000
    flush_records: int = 1000
    flush_bytes: int = 64 * 1024 * 1024
    flush_s: float = 1.0
    session_expiry_s: int = 86_400
    keepalive: int = 30
    max_records: int | None = None
    key: Ed25519PrivateKey | None = None  # signs receipts; None: no receipts
    quarantine_max_bytes: int = 1 << 30

    @property
    def cid(self) -> str:
        return self.client_id or default_client_id(self.group, self.member)


class Collector:
    """One collector: ``start`` subscribes, ``run(stop)`` collects until ``stop`` is set, ``close`` writes what
    was received, acknowledges it and disconnects (the session, with anything unacknowledged, stays)."""

    def __init__(self, connection: MqttConnection, opts: CollectOptions) -> None:
        self.connection = connection
        self.opts = opts
        self.writer = DatasetWriter(opts.out, writer_id=opts.cid.replace("/", "_"))
        self.quarantine = Quarantine(opts.out, writer_id=opts.cid.replace("/", "_"),
                                     max_bytes=opts.quarantine_max_bytes)
        self.stats = CollectStats()
        self.subscription = shared_filter(opts.group, opts.topic)
        self._inbox: queue.Queue[tuple[int, int, int, str, bytes]] = queue.Queue(maxsize=2 * opts.receive_maximum + 16)
        self._unacked: list[tuple[int, int, int]] = []  # (connection generation, mid, qos)
        self._owed: dict[str, list[str]] = {}  # device -> record ids to confirm once durable
        self._refused: dict[str, list[tuple[str, str]]] = {}  # device -> (record id, reason) to refuse
        self._oldest: float | None = None  # monotonic time the oldest buffered record arrived
        self._deferred: list[tuple[int, int, int, str, bytes]] = []  # uploads to handle again (the store was away)
        self._ratelog = RateLimitedLog(log)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Collector:
        self.writer.open()
        self.quarantine.open()
        self.connection.add_connect_listener(self._on_connect)
        self.connection.subscribe(self.subscription, 1, self._on_message)
        self.connection.start()
        return self

    def close(self) -> None:
        """Write and acknowledge what was received (three tries), then disconnect."""
        try:
            for _ in range(3):
                if not (self.writer.pending or self.quarantine.pending or self._unacked) or self._flush():
                    break
                time.sleep(1.0)
            else:
                log.error("stopping with %d records unwritten (not acknowledged: the broker keeps them)",
                          self.writer.pending)
        finally:
            self.connection.stop()  # a normal DISCONNECT: the session (and anything unacknowledged) stays
        self.stats.written = self.writer.stats.written
        log.info("collector stopped: %d received, %d written, %d duplicates, %d quarantined %s, %d files",
                 self.stats.received, self.stats.written, self.stats.duplicates, self.stats.quarantined,
                 self.stats.by_reason, self.stats.files)

    # ------------------------------------------------------------------ the network thread
    def _on_connect(self) -> None:
        self.stats.connects += 1
        log.info("connected to %s:%d as %s (session present: %s)", self.connection.host, self.connection.port,
                 self.opts.cid, self.connection.session_present)

    def _on_message(self, msg) -> None:
        try:
            self._inbox.put_nowait((self.connection.counters.connects, msg.mid, msg.qos, msg.topic, bytes(msg.payload)))
        except queue.Full:  # not acknowledged: the broker re-sends it on the next connection
            self.stats.dropped += 1

    # ------------------------------------------------------------------ the collecting thread
    def run(self, stop: threading.Event) -> CollectStats:
        """Collect until ``stop`` is set (or ``max_records`` were written)."""
        retry_at = 0.0
        opts = self.opts
        while not stop.is_set():
            if opts.max_records is not None and self.writer.stats.written + self.writer.pending >= opts.max_records:
                break
            if self._deferred and time.monotonic() >= retry_at:
                deferred, self._deferred = self._deferred, []
                for item in deferred:
                    self._handle(*item)
                if self._deferred:
                    retry_at = time.monotonic() + 1.0
            try:
                item = self._inbox.get(timeout=0.05)
            except queue.Empty:
                item = None
            if item is not None:
                try:
                    self._handle(*item)
                except Exception as exc:  # a bug must cost one upload (kept in the quarantine), never the collector
                    log.exception("upload on %s could not be handled", item[3][:100])
                    self._quarantine(item[3], item[4], None, None, "unstorable", f"{type(exc).__name__}: {exc}")
            w = self.writer
            # duplicates alone are due too: they are acknowledged and receipted only by a flush
            due = (w.pending or self.quarantine.pending or self._unacked) and (
                w.pending >= opts.flush_records or w.pending_bytes >= opts.flush_bytes
                or time.monotonic() - (self._oldest or 0.0) >= opts.flush_s)
            if due and time.monotonic() >= retry_at and not self._flush():
                retry_at = time.monotonic() + 1.0
        return self.stats

    def _handle(self, gen: int, mid: int, qos: int, topic: str, payload: bytes) -> None:
        """One upload: stored, skipped as a duplicate, or quarantined; acknowledged once that is durable."""
        self.stats.received += 1
        self._unacked.append((gen, mid, qos))
        if self._oldest is None:
            self._oldest = time.monotonic()
        device = topics.device_of(topic, "upload")
        if device is None:
            self._quarantine(topic, payload, None, None, "bad_topic", f"{topic[:100]!r} is not vib/<device id>/upload")
            return
        try:
            rec = decode_record(payload)
        except UploadError as exc:
            self._quarantine(topic, payload, device, _claimed_id(payload), "invalid", str(exc))
            return
        if rec.device != device:
            self._quarantine(topic, payload, device, rec.id, "foreign_device",
                             f"the record says device {rec.device!r} but came on {device}'s topic (the broker lets "
                             f"only {device}'s gateway publish there)")
            return
        ahead = rec.time_end_utc() - datetime.now(UTC).replace(tzinfo=None)
        if ahead > MAX_CLOCK_AHEAD:
            self._quarantine(topic, payload, device, rec.id, "clock_ahead",
                             f"time_end {rec.time_end} is {ahead.total_seconds() / 86_400:.1f} days ahead of the "
                             f"collector's clock: the gateway's clock is wrong")
            return
        digest = hashlib.sha256(payload).hexdigest()[:16]
        try:
            added = self.writer.add(rec, digest=digest)
        except IdConflict as exc:
            self._quarantine(topic, payload, device, rec.id, "id_conflict", str(exc))
            return
        except OSError as exc:  # the partition's ids could not be read: not acknowledged, handled again later
            self._unacked.pop()
            self.stats.received -= 1
            self.stats.deferred += 1
            self._deferred.append((gen, mid, qos, topic, payload))
            self._ratelog.log(logging.ERROR, "deferred", "cannot read the dataset (%d uploads waiting, not "
                              "acknowledged): %s", len(self._deferred), describe_error(self.writer.loc, exc))
            return
        self._owe(device, rec.id)
        if added:
            self.stats.per_device[device] = self.stats.per_device.get(device, 0) + 1
        else:
            self.stats.duplicates += 1

    def _owe(self, device: str, record_id: str) -> None:
        if self.opts.key is not None:
            self._owed.setdefault(device, []).append(record_id)

    def _quarantine(self, topic: str, payload: bytes, device: str | None, record_id: str | None, code: str,
                    reason: str) -> None:
        self.quarantine.add(topic, payload, code, reason, record_id)
        self.stats.quarantined += 1
        self.stats.by_reason[code] = self.stats.by_reason.get(code, 0) + 1
        self._ratelog.warning(code, "quarantined an upload on %s (%d %s so far): %s", topic[:100],
                              self.stats.by_reason[code], code, reason)
        if device is not None and record_id is not None and self.opts.key is not None:
            self._refused.setdefault(device, []).append((record_id, f"{code}: {reason}"))

    def _flush(self) -> bool:
        """Make the buffered records and quarantined uploads durable, then acknowledge and send receipts.
        False (all kept, nothing acknowledged) when a write failed for a transient reason."""
        try:
            files, failed = self.writer.flush()
            for rec, exc in failed:  # records that no retry can store
                self._unowe(rec)
                self._quarantine(topics.upload_topic(rec.device), rec.encode(), rec.device, rec.id, "unstorable",
                                 f"{type(exc).__name__}: {exc}")
            self.quarantine.flush()
        except OSError as exc:
            self.stats.flush_errors += 1
            self._ratelog.log(logging.ERROR, "flush", "cannot write the dataset (%d records kept, not acknowledged, "
                              "no receipts): %s", self.writer.pending + self.quarantine.pending,
                              describe_error(self.writer.loc, exc))
            return False
        self.stats.files += len(files)
        self.stats.written = self.writer.stats.written
        self._ack_all()
        self._oldest = None
        return True

    def _unowe(self, rec: UploadRecord) -> None:
        ids = self._owed.get(rec.device, [])
        if rec.id in ids:
            ids.remove(rec.id)

    def _ack_all(self) -> None:
        gen_now = self.connection.counters.connects
        for gen, mid, qos in self._unacked:
            # Packet ids belong to one connection: after a reconnect the broker re-sends what was not acknowledged
            # (under the same ids) and may reuse freed ids, so an acknowledgement owed from an older connection is
            # never sent: the re-sent copy is acknowledged instead (as a duplicate).
            if gen == gen_now:
                self.connection.ack(mid, qos)
                self.stats.acked += qos > 0
        self._unacked.clear()
        key = self.opts.key
        if key is not None:
            for device in set(self._owed) | set(self._refused):
                for payload in receipt.encode(device, self._owed.get(device, []), self._refused.get(device, []),
                                              self.opts.cid, key):
                    self.connection.publish(topics.receipt_topic(device), payload, qos=1)
                    self.stats.receipts += 1
        self._owed.clear()
        self._refused.clear()


def _claimed_id(payload: bytes) -> str | None:
    """The ``id`` an invalid upload claims, when it has a readable one (so its gateway can be told to drop it)."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and receipt.is_record_id(rid) else None


def collect(connection: MqttConnection, opts: CollectOptions, stop: threading.Event,
            subscribed: threading.Event | None = None) -> CollectStats:
    """Run one collector on ``connection`` until ``stop`` is set; ``subscribed`` is set once the broker granted the
    subscription. Returns its counts."""
    collector = Collector(connection, opts).start()

    def granted() -> None:
        while not stop.is_set():
            if connection.wait_subscribed(0.5):
                log.info("subscribed to %s on %s:%d", collector.subscription, connection.host, connection.port)
                if subscribed is not None:
                    subscribed.set()
                return

    threading.Thread(target=granted, name="collect-subscribed", daemon=True).start()
    try:
        return collector.run(stop)
    finally:
        collector.close()


# ------------------------------------------------------------------------------------------------ CLI
def command():
    """The ``trainer collect`` click command."""
    import click

    from edge_agent.mqtt_client import broker_options, connection_from_options
    from trainer.cli import endpoint_option

    @click.command("collect")
    @broker_options()
    @click.option("--out", required=True, help="The dataset (Parquet): a folder, or s3://bucket/prefix on AWS S3 or an "
                  "S3-compatible store (credentials and region as S3 tools take them: AWS_ACCESS_KEY_ID, "
                  "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL).")
    @endpoint_option()
    @click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="This collector's signing key (`trainer keygen`): receipts are signed with it; gateways "
                       "trust its public key ([uploads] receipt_keys). Required unless --no-receipts.")
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
    @click.option("--quarantine-max-mb", type=click.IntRange(1), default=1024, show_default=True,
                  help="Keep the payloads of quarantined uploads while the quarantine holds less than this.")
    @click.option("--max-records", type=click.IntRange(min=1), default=None, help="Stop after this many (default: Ctrl-C).")
    @click.option("--no-receipts", is_flag=True, help="Do not confirm durable records to the gateways.")
    def collect_command(out: str, endpoint: str | None, key_path: Path | None, group: str, no_share: bool,
                        member: int, client_id: str | None, topic: str, receive_maximum: int, flush_s: float,
                        session_expiry_s: int, quarantine_max_mb: int, max_records: int | None, no_receipts: bool,
                        **broker) -> None:
        """Collect the windows gateways upload into a Parquet dataset (train on it with --data DATASET)."""
        from edge_agent.contract.recordings import DataFormatError
        from edge_agent.contract.signing import load_private_key
        from edge_agent.shutdown import stop_on_signals
        from trainer.dataset import location

        if key_path is None and not no_receipts:
            raise click.UsageError("--key: receipts are signed (a receipt deletes records on the gateways): give this "
                                   "collector's key from `trainer keygen`, or --no-receipts")
        try:
            key = None if no_receipts else load_private_key(key_path)
            loc = location(out, endpoint)
            opts = CollectOptions(out=loc, group=None if no_share else group, topic=topic, member=member,
                                  client_id=client_id, receive_maximum=receive_maximum, flush_s=flush_s,
                                  session_expiry_s=session_expiry_s, max_records=max_records, key=key,
                                  quarantine_max_bytes=quarantine_max_mb << 20)
            connection = connection_from_options(opts.cid, session_expiry_s=session_expiry_s,
                                                 receive_maximum=receive_maximum, manual_ack=True, **broker)
        except (ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc
        stop = threading.Event()
        stop_on_signals(stop)
        click.echo(f"collecting {shared_filter(opts.group, topic)} from {broker['broker']} into {loc.uri}"
                   f"{' on ' + loc.where if loc.where else ''} (Ctrl-C to stop)")
        try:
            stats = collect(connection, opts, stop)
        except DataFormatError as exc:  # the dataset cannot be written: nothing was subscribed or received
            raise click.ClickException(str(exc)) from exc
        click.echo(f"received {stats.received}, written {stats.written}, duplicates {stats.duplicates}, "
                   f"quarantined {stats.quarantined} {stats.by_reason or ''}, files {stats.files}; "
                   f"per device {dict(stats.per_device)}")

    return collect_command
