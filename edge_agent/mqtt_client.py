"""One small wrapper around a paho-mqtt 2.x client, used by every part of the agent that talks MQTT.

- ``CallbackAPIVersion.VERSION2`` callbacks; paho's network loop runs in its own thread (``loop_start``,
  thread named ``paho-mqtt-client-<client_id>``); ``connect_async`` so a broker that is away at start
  is retried like a lost one.
- Reconnects with paho's capped exponential backoff (``reconnect_delay_set``: 1 s doubling to 30 s by
  default); the delay resets after a successful CONNACK.
- ``connected`` is true only after a CONNACK whose reason code is a success; a refused connection
  (bad credentials, ...) is logged with its reason and never reported as up.
- Subscriptions are made in ``on_connect``, so every reconnect re-subscribes; ``subscribe(topic, qos,
  handler)`` routes a topic's messages to its own handler (paho's ``message_callback_add``), so one
  connection serves every sensor of a gateway. ``wait_subscribed`` waits for the broker's SUBACKs.
- ``publish`` never raises on a down link: it returns ``None`` (counted in ``publish_refused``) when the
  link is down, so paho's outgoing queue does not grow while the broker is away. Messages already
  handed to paho (QoS >= 1) stay in paho's queue and are re-sent by paho after a reconnect.
- Callbacks stay thin: each catches its own errors and logs them at a rate limit (paho would otherwise
  re-raise them on its network thread).
- Security: TLS (``TlsSettings``: the CA that signed the broker's certificate, this gateway's client
  certificate and key; the broker's host name is verified) and username/password (paho's ``tls_set``,
  ``username_pw_set``). The password is never logged nor kept anywhere but in paho's client.
- MQTT 5 persistent sessions for consumers that must not lose what they were sent (``trainer collect``):
  ``session_expiry_s`` (the broker keeps the session, its subscriptions and queued messages while the
  client is away), ``receive_maximum`` (unacknowledged messages in flight) and ``manual_ack`` (``ack(mid,
  qos)`` once the message is durable). Every client of the product uses this class: the gateway, the
  collectors, the publisher and the simulator, so all of them get TLS, client certificates and passwords.
- Errors a technician must see: a connection the broker refused (CONNACK failure, or a TLS handshake
  it or we rejected: unknown CA, expired certificate, host name mismatch) counts in ``refused_connects``;
  a broker that could not be reached (TCP refused, no route, timeout) in ``connect_failures``;
  ``last_error`` holds the latest reason in words (also logged, at a rate limit).

Listeners (``add_connect_listener``, ``add_publish_listener``) run on paho's network thread while paho
holds its own locks: they must be quick and must never wait for a lock that a thread calling
``publish`` may hold.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.contract.errors import AgentError
from edge_agent.ratelog import RateLimitedLog
from edge_agent.status import MqttCounters, fields_of

logger = logging.getLogger(__name__)

Will = tuple[str, "bytes | str", int, bool]
MessageHandler = Callable[[mqtt.MQTTMessage], None]


@dataclass(frozen=True)
class TlsSettings:
    """TLS to the broker. ``ca_file``: the CA certificate(s) that signed the broker's certificate (None: the
    system's CAs); ``cert_file`` + ``key_file``: this gateway's client certificate and its private key (for a
    broker with ``require_certificate true``). The broker's certificate must name ``host``."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttConnection:
    """A paho-mqtt 2.x client that connects in the background, reconnects, re-subscribes and never
    raises from ``publish``.

    ``subscriptions`` are ``(topic, qos)`` pairs; ``on_message(msg)`` receives every message (it runs on
    the network thread: decode and ``put_nowait``, nothing slow). ``will`` is
    ``(topic, payload, qos, retain)``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        keepalive: int = 30,
        will: Will | None = None,
        on_message: MessageHandler | None = None,
        subscriptions: Iterable[tuple[str, int]] = (),
        clean_session: bool = True,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.client_id = client_id
        self.keepalive = int(keepalive)
        self._subscriptions = [(str(t), int(q)) for t, q in subscriptions]
        self._on_message = on_message
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._pending_subacks: set[int] = set()
        self._routes: dict[str, MessageHandler] = {}
        self._connect_listeners: list[Callable[[], None]] = []
        self._publish_listeners: list[Callable[[int], None]] = []
        self._started = False
        self._stopping = False
        self._ratelog = RateLimitedLog(logger)
        self.counters = MqttCounters(tls=tls is not None)  # written by one thread each; read for status
        self._transport_error: str | None = None  # paho's last socket error on the current attempt

        # MQTT 5 with a persistent session when a session expiry is asked for, else 3.1.1
        self.mqtt5 = session_expiry_s is not None
        self.session_present: bool | None = None  # the broker still had our session at the last connect (MQTT 5)
        self._connect_properties = None
        if self.mqtt5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(session_expiry_s)
            if receive_maximum is not None:
                props.ReceiveMaximum = int(receive_maximum)
            self._connect_properties = props
            self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                       manual_ack=manual_ack)
        else:
            self._client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=clean_session,
                protocol=mqtt.MQTTv311,
                manual_ack=manual_ack,
            )
        if username is not None:
            self._client.username_pw_set(username, password)
        self.tls = tls
        if tls is not None:
            self._set_tls(tls)
        if will is not None:
            topic, payload, qos, retain = will
            self._client.will_set(topic, payload, qos=qos, retain=retain)
        self._client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.on_log = self._handle_log

    def _set_tls(self, tls: TlsSettings) -> None:
        """Load the CA and the client certificate now: a missing or bad file is an AgentError at start."""
        for what, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
            if path is not None and not Path(path).is_file():
                raise AgentError(f"mqtt tls.{what}: {path}: no such file")
        if (tls.cert_file is None) != (tls.key_file is None):
            raise AgentError("mqtt tls: cert_file and key_file go together")
        try:
            self._client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise AgentError(f"mqtt tls: cannot load the CA or the client certificate/key "
                             f"({tls.ca_file}, {tls.cert_file}, {tls.key_file}): {exc}") from exc

    def subscribe(self, topic: str, qos: int, handler: MessageHandler) -> None:
        """Deliver the messages of ``topic`` (a filter; wildcards allowed) to ``handler`` on the network thread.

        Call before ``start``, or at any time: the subscription is made now if connected, and again on
        every reconnect. ``handler`` must be thin (decode, ``put_nowait``) and is isolated like ``on_message``.
        """
        topic, qos = str(topic), int(qos)
        self._routes[topic] = handler
        self._subscriptions.append((topic, qos))

        def route(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage, handler=handler) -> None:
            self.counters.messages_in += 1
            self._dispatch(handler, msg)

        # a shared subscription ($share/<group>/<filter>) delivers messages under their own topics
        self._client.message_callback_add(topic.split("/", 2)[2] if topic.startswith("$share/") else topic, route)
        if self._connected.is_set():
            self._subscribed.clear()
            result, mid = self._client.subscribe([(topic, qos)])
            if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._pending_subacks.add(mid)

    def wait_subscribed(self, timeout: float | None) -> bool:
        """Wait until connected and every subscription is acknowledged by the broker; return whether it is."""
        return self._subscribed.wait(timeout) and self._connected.is_set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> MqttConnection:
        """Start connecting in the background (returns at once; see ``wait_connected``)."""
        if self._started:
            return self
        self._started = True
        self._stopping = False
        if self.mqtt5:
            self._client.connect_async(self.host, self.port, keepalive=self.keepalive, clean_start=False,
                                       properties=self._connect_properties)
        else:
            self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        if not self._started:
            return
        self._started = False
        self._stopping = True
        try:
            self._client.disconnect()
        except (OSError, ValueError) as exc:  # socket already gone
            logger.debug("mqtt %s: disconnect: %s", self.client_id, exc)
        self._client.loop_stop()
        self._connected.clear()

    def drop(self) -> None:
        """Cut the connection as a network failure would (no DISCONNECT packet: the broker publishes the will);
        it reconnects after its backoff (tests, fault injection)."""
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._connected.clear()

    def __enter__(self) -> MqttConnection:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> dict:
        """Counters and the latest error, for the gateway's status (never the credentials)."""
        self.counters.connected = self.connected
        return fields_of(self.counters)

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None) -> bool:
        """Wait until connected; return whether it is."""
        return self._connected.wait(timeout)

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message received with ``manual_ack`` (a no-op for QoS 0)."""
        if qos > 0:
            self._client.ack(mid, qos)

    def add_connect_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the network thread after every successful (re)connect and re-subscribe."""
        self._connect_listeners.append(callback)

    def add_publish_listener(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(mid)`` on the network thread when a QoS >= 1 publish is acknowledged."""
        self._publish_listeners.append(callback)

    # ------------------------------------------------------------------ publish
    def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo | None:
        """Publish; never raises for a down link or a bad message.

        Returns paho's ``MQTTMessageInfo`` (check ``.rc`` and ``wait_for_publish``), or ``None`` when the
        link is down (``publish_refused``) or paho rejected the message (``publish_errors``).
        """
        if not self._connected.is_set():
            self.counters.publish_refused += 1
            return None
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, TypeError, OSError) as exc:
            self.counters.publish_errors += 1
            self._ratelog.log(logging.ERROR, "publish", "mqtt %s: publish to %s failed: %s", self.client_id, topic, exc)
            return None
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.counters.published += 1
        else:
            self.counters.publish_errors += 1
            self._ratelog.log(
                logging.WARNING, "publish-rc", "mqtt %s: publish to %s: %s", self.client_id, topic,
                mqtt.error_string(info.rc),
            )
        return info

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            self._transport_error = None
            if reason_code.is_failure:
                self._connected.clear()
                self._refused(f"the broker refused the connection: {reason_code}")
                return
            sock = client.socket()
            if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
                # small MQTT packets (PUBACK-paced uploads, status) must not wait ~40 ms for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.session_present = bool(getattr(flags, "session_present", False))
            self._subscribed.clear()
            if self._subscriptions:
                result, mid = client.subscribe(self._subscriptions)
                if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._pending_subacks = {mid}
            else:
                self._subscribed.set()
            self.counters.connects += 1
            self._connected.set()
            logger.info("mqtt %s: connected to %s:%d", self.client_id, self.host, self.port)
            for listener in self._connect_listeners:
                self._call(listener)
        except Exception:  # a callback must never raise into paho's loop
            self.counters.callback_errors += 1
            self._ratelog.log(logging.ERROR, "on_connect", "mqtt %s: on_connect failed", self.client_id, exc_info=True)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was_up = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        error, self._transport_error = self._transport_error, None
        if was_up and self._stopping:
            logger.debug("mqtt %s: disconnected (stop)", self.client_id)
        elif was_up:
            self.counters.disconnects += 1
            self._ratelog.log(
                logging.WARNING, "disconnect", "mqtt %s: disconnected from %s:%d: %s",
                self.client_id, self.host, self.port, error or reason_code,
            )
        elif error is not None:  # the link broke before a CONNACK: the broker's TLS layer turned us away
            self._refused(f"the broker closed the connection during the handshake: {error}")

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """paho could not open the connection; it calls this inside its ``except OSError`` block."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError):  # our side rejected the broker's certificate, or the broker ours
            self._refused(f"TLS handshake failed: {_tls_reason(exc)}")
            return
        self.counters.connect_failures += 1
        self._error(logging.WARNING, "unreachable", f"cannot reach the broker: {exc or 'connection failed'}")

    def _handle_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and buf.startswith("failed to receive on socket"):
            self._transport_error = buf.split(": ", 1)[-1]

    def _refused(self, reason: str) -> None:
        self.counters.refused_connects += 1
        self._error(logging.ERROR, "refused", reason)

    def _error(self, level: int, key: str, reason: str) -> None:
        self.counters.last_error = reason
        self.counters.last_error_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._ratelog.log(level, key, "mqtt %s: %s:%d: %s", self.client_id, self.host, self.port, reason)

    def _handle_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self._pending_subacks.discard(mid)
        refused = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if refused:
            self._ratelog.log(logging.ERROR, "suback", "mqtt %s: the broker refused a subscription: %s",
                              self.client_id, refused)
        if not self._pending_subacks:
            self._subscribed.set()

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.counters.messages_in += 1
        if self._on_message is not None:
            self._dispatch(self._on_message, msg)

    def _dispatch(self, handler: MessageHandler, msg: mqtt.MQTTMessage) -> None:
        try:
            handler(msg)
        except Exception:
            self.counters.callback_errors += 1
            self._ratelog.log(
                logging.ERROR, "on_message", "mqtt %s: on_message failed for %s", self.client_id, msg.topic,
                exc_info=True,
            )

    def _handle_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        for listener in self._publish_listeners:
            self._call(listener, mid)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.counters.callback_errors += 1
            self._ratelog.log(logging.ERROR, "listener", "mqtt %s: listener %r failed", self.client_id, fn,
                              exc_info=True)


def connection_for(cfg, client_id: str | None = None, **kwargs: Any) -> MqttConnection:
    """The connection to the broker of ``cfg.mqtt`` (an ``AgentConfig``): its password from ``password_file`` or
    ``password_env``, TLS from ``[mqtt.tls]`` (paths relative to the config file). ``kwargs`` go to
    ``MqttConnection`` (will, on_message, ...). ConfigError/AgentError for a missing secret or certificate."""
    from edge_agent.config import mqtt_password

    m = cfg.mqtt
    tls = None
    if m.tls is not None:
        tls = TlsSettings(*(cfg.resolve(p) if p else None for p in (m.tls.ca_file, m.tls.cert_file, m.tls.key_file)))
    return MqttConnection(m.host, m.port, client_id or cfg.client_id, username=m.username, password=mqtt_password(cfg),
                          tls=tls, keepalive=m.keepalive, **kwargs)


def _tls_reason(exc: ssl.SSLError) -> str:
    """An SSL error in words: the verification message when there is one, else OpenSSL's reason."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"the broker's certificate is not trusted: {exc.verify_message}"
    return exc.reason.lower().replace("_", " ") if exc.reason else str(exc)


# ------------------------------------------------------------------------------------------------ command lines
#: The broker options of every command-line client (``trainer collect``, ``trainer publish``, ``firmware-sim``).
BROKER_OPTIONS = ("broker", "username", "password_file", "password_env", "tls_ca", "tls_cert", "tls_key")


def broker_options(default: str = "127.0.0.1:1883"):
    """Click decorator: ``--broker HOST:PORT``, ``--username``, ``--password-file``/``--password-env`` (never a
    password on the command line, where ``ps`` shows it) and ``--tls-ca``/``--tls-cert``/``--tls-key``."""
    import click

    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    options = [
        click.option("--broker", default=default, show_default=True, help="MQTT broker HOST:PORT."),
        click.option("--username", default=None, help="MQTT user name."),
        click.option("--password-file", type=path, default=None, help="File holding the MQTT password (first line)."),
        click.option("--password-env", default=None, help="Environment variable holding the MQTT password."),
        click.option("--tls-ca", type=path, default=None, help="TLS: the CA that signed the broker's certificate."),
        click.option("--tls-cert", type=path, default=None, help="TLS: this client's certificate (with --tls-key)."),
        click.option("--tls-key", type=path, default=None, help="TLS: this client's private key."),
    ]

    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def host_port(broker: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ValueError naming the expected form."""
    host, _, port = broker.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {broker!r}")
    return host.strip("[]"), int(port)


def credentials(*, username: str | None = None, password_file: Path | None = None, password_env: str | None = None,
                tls_ca: Path | None = None, tls_cert: Path | None = None, tls_key: Path | None = None) -> dict:
    """``MqttConnection`` keyword arguments (username, password, tls) from the ``broker_options``; ValueError for a
    missing secret or a certificate without its key."""
    import os

    if password_file is not None and password_env is not None:
        raise ValueError("give --password-file or --password-env, not both")
    password = None
    if password_file is not None:
        lines = Path(password_file).read_text(encoding="utf-8").splitlines()
        password = lines[0].strip() if lines else ""
        if not password:
            raise ValueError(f"--password-file {password_file}: empty")
    elif password_env is not None:
        password = os.environ.get(password_env) or ""
        if not password:
            raise ValueError(f"--password-env: the environment variable {password_env} is not set or empty")
    if password is not None and username is None:
        raise ValueError("a password needs --username")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = TlsSettings(tls_ca, tls_cert, tls_key) if (tls_ca or tls_cert) else None
    return {"username": username, "password": password, "tls": tls}


def connection_from_options(client_id: str, *, broker: str, username: str | None = None,
                            password_file: Path | None = None, password_env: str | None = None,
                            tls_ca: Path | None = None, tls_cert: Path | None = None, tls_key: Path | None = None,
                            **kwargs: Any) -> MqttConnection:
    """The connection the ``broker_options`` describe; ValueError for a bad broker, a missing secret or a
    certificate without its key. ``kwargs`` go to ``MqttConnection``."""
    host, port = host_port(broker)
    auth = credentials(username=username, password_file=password_file, password_env=password_env, tls_ca=tls_ca,
                       tls_cert=tls_cert, tls_key=tls_key)
    try:
        return MqttConnection(host, port, client_id, **auth, **kwargs)
    except AgentError as exc:
        raise ValueError(str(exc)) from None
