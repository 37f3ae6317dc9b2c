"""Links from the simulated sensor node to the gateway: a pseudo-terminal, a pyserial URL, MQTT.

Every link has the same small interface used by ``stream.Streamer``::

    link.send(data: bytes)   # one encoded frame (serial: written; MQTT: one message)
    link.disconnect()        # drop the link (fault injection)
    link.reconnect()         # bring it back
    link.close()             # end of run; flushes what is in flight

Serial links never block the sensor for long: a write that cannot complete within
``write_timeout`` seconds (nobody reading) drops the rest and counts it in ``overflow_bytes``,
as a UART with a full FIFO would; the pty link then stops waiting until a write fits again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
import tty
from pathlib import Path

import serial

from edge_agent.contract import topics

log = logging.getLogger(__name__)


class PtyLink:
    """The sensor end of a pseudo-terminal pair in raw mode; the agent opens ``path``.

    The simulator keeps the slave end open too, so the path stays valid and bytes written
    before the agent opens it wait in the tty buffer (the agent resyncs on the sync marker).
    ``disconnect`` closes the pair: a reader sees EOF/EIO, as when a USB adapter is pulled.
    ``reconnect`` opens a new pair; with ``link_path`` the simulator maintains a symlink to the
    current slave device (like ``/dev/serial/by-id``), so the agent can reopen the same path.
    """

    def __init__(self, link_path: str | Path | None = None, *, write_timeout: float = 1.0) -> None:
        self.link_path = Path(link_path) if link_path else None
        self.write_timeout = write_timeout
        self.overflow_bytes = 0
        self._stalled = False
        self._master = self._slave = -1
        self.port = ""
        self._open()

    def _open(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        if self.link_path is not None:
            tmp = self.link_path.with_name(self.link_path.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.port)
            os.replace(tmp, self.link_path)
        log.info("pty link on %s%s", self.port, f" (symlink {self.link_path})" if self.link_path else "")

    @property
    def path(self) -> str:
        """The path the agent should open (the symlink when there is one)."""
        return str(self.link_path) if self.link_path is not None else self.port

    def send(self, data: bytes) -> None:
        if self._master < 0:
            return
        view = memoryview(data)
        # after an overflow nobody is draining the pty: do not wait again until a write fits
        deadline = time.monotonic() + (0.0 if self._stalled else self.write_timeout)
        while view:
            try:
                n = os.write(self._master, view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:  # EIO: the pair is going away
                log.warning("pty write failed: %s", exc)
                break
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [self._master], [], left)[1]:
                break
        self._stalled = bool(view)
        if view:
            self.overflow_bytes += len(view)
            log.debug("pty buffer full: dropped %d bytes", len(view))

    def disconnect(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def reconnect(self) -> None:
        self.disconnect()
        self._open()

    def close(self) -> None:
        self.disconnect()
        if self.link_path is not None and self.link_path.is_symlink():
            self.link_path.unlink()

    def __enter__(self) -> PtyLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SerialUrlLink:
    """A serial port or pyserial URL (``/dev/ttyUSB0``, ``socket://host:port``, ``rfc2217://...``)."""

    def __init__(self, url: str, *, baudrate: int = 921600, write_timeout: float = 1.0) -> None:
        self.url = url
        self.overflow_bytes = 0
        self._port = serial.serial_for_url(url, baudrate=baudrate, write_timeout=write_timeout)
        log.info("serial link on %s", url)

    @property
    def path(self) -> str:
        return self.url

    def send(self, data: bytes) -> None:
        if not self._port.is_open:
            return
        try:
            written = self._port.write(data) or 0
        except serial.SerialTimeoutException:
            written = 0
        except serial.SerialException as exc:
            log.warning("serial write failed: %s", exc)
            written = 0
        if written < len(data):
            self.overflow_bytes += len(data) - written

    def disconnect(self) -> None:
        self._port.close()

    def reconnect(self) -> None:
        if not self._port.is_open:
            self._port.open()

    def close(self) -> None:
        self._port.close()

    def __enter__(self) -> SerialUrlLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MqttLink:
    """Publishes each frame as one message on ``topic`` (default ``vib/<device>/samples``) over the product's
    ``MqttConnection`` (TLS, client certificates and passwords as every other client: ``connection`` options).

    The constructor waits for a successful CONNACK until ``connect_timeout`` and raises ConnectionError
    otherwise; the connection reconnects by itself after a loss. At most ``max_inflight`` messages are
    awaiting the broker's acknowledgement at a time: ``send`` waits for room (up to ``publish_timeout``, then
    drops the message and counts it in ``publish_dropped``), so an unpaced run cannot exhaust the queue; a
    message sent while the link is down is dropped and counted too (a sensor has no disk).
    """

    def __init__(
        self,
        host: str,
        port: int,
        device: str,
        *,
        qos: int = 1,
        topic: str | None = None,
        client_id: str | None = None,
        connect_timeout: float = 10.0,
        max_inflight: int = 200,
        publish_timeout: float = 5.0,
        keepalive: int = 30,
        connection: dict | None = None,
    ) -> None:
        from edge_agent.mqtt_client import MqttConnection

        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        self.topic = topic or topics.samples_topic(device)
        self.qos = qos
        self.connect_timeout = connect_timeout
        self.max_inflight = max_inflight
        self.publish_timeout = publish_timeout
        self.published = 0  # messages handed over
        self.acked = 0  # QoS 0: written to the socket; QoS 1: PUBACK
        self.publish_dropped = 0
        self._cond = threading.Condition()
        self._conn = MqttConnection(host, int(port), client_id or f"firmware-sim-{device}-{os.getpid()}",
                                    keepalive=keepalive, reconnect_min_s=0.1, reconnect_max_s=5,
                                    **(connection or {}))
        self._conn.add_publish_listener(self._on_publish)
        self._conn.start()
        self._wait_connected()
        log.info("mqtt link to %s:%d topic %s qos %d", host, port, self.topic, qos)

    @property
    def path(self) -> str:
        return self.topic

    def _on_publish(self, mid: int) -> None:
        with self._cond:
            self.acked += 1
            self._cond.notify_all()

    def _wait_connected(self) -> None:
        if not self._conn.wait_connected(self.connect_timeout):
            self._conn.stop()
            why = self._conn.counters.last_error or "no CONNACK"
            raise ConnectionError(f"MQTT broker not reachable within {self.connect_timeout} s ({why})")

    def send(self, data: bytes) -> None:
        with self._cond:
            room = self._cond.wait_for(
                lambda: self.published - self.acked < self.max_inflight, timeout=self.publish_timeout
            )
            if room:
                self.published += 1  # counted before publishing: the acknowledgement may come first
            else:
                self.publish_dropped += 1
                return
        # never call the connection holding our lock: paho holds its own while it calls the listener
        info = self._conn.publish(self.topic, data, qos=self.qos)
        if info is None or info.rc != 0:
            with self._cond:
                self.published -= 1
                self.publish_dropped += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every published message has been acknowledged; False at the deadline."""
        with self._cond:
            return self._cond.wait_for(lambda: self.acked >= self.published, timeout=timeout)

    def disconnect(self) -> None:
        """Drop the connection as a network failure would (no DISCONNECT packet, so the broker publishes any
        will); the connection notices and reconnects after its backoff."""
        self._conn.drop()

    def reconnect(self) -> None:
        """Wait until the connection is back (ConnectionError after ``connect_timeout``)."""
        self._wait_connected()

    def close(self) -> None:
        if not self.flush():
            log.warning("mqtt close: %d messages not acknowledged", self.published - self.acked)
        self._conn.stop()

    def __enter__(self) -> MqttLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
