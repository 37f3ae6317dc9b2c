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

Listeners (``add_connect_listener``, ``add_publish_listener``) run on paho's network thread while paho
holds its own locks: they must be quick and must never wait for a lock that a thread calling
``publish`` may hold.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.ratelog import RateLimitedLog

logger = logging.getLogger(__name__)

Will = tuple[str, "bytes | str", int, bool]
MessageHandler = Callable[[mqtt.MQTTMessage], None]


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
        keepalive: int = 30,
        will: Will | None = None,
        on_message: MessageHandler | None = None,
        subscriptions: Iterable[tuple[str, int]] = (),
        clean_session: bool = True,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
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
        self._ratelog = RateLimitedLog(logger)
        # counters (written by one thread each; read for status)
        self.connects = 0
        self.disconnects = 0
        self.refused_connects = 0
        self.published = 0
        self.publish_refused = 0
        self.publish_errors = 0
        self.messages_in = 0
        self.callback_errors = 0

        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            self._client.will_set(topic, payload, qos=qos, retain=retain)
        self._client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        self._client.on_subscribe = self._handle_subscribe

    def subscribe(self, topic: str, qos: int, handler: MessageHandler) -> None:
        """Deliver the messages of ``topic`` (a filter; wildcards allowed) to ``handler`` on the network thread.

        Call before ``start``, or at any time: the subscription is made now if connected, and again on
        every reconnect. ``handler`` must be thin (decode, ``put_nowait``) and is isolated like ``on_message``.
        """
        topic, qos = str(topic), int(qos)
        self._routes[topic] = handler
        self._subscriptions.append((topic, qos))

        def route(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage, handler=handler) -> None:
            self.messages_in += 1
            self._dispatch(handler, msg)

        self._client.message_callback_add(topic, route)
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
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        if not self._started:
            return
        self._started = False
        try:
            self._client.disconnect()
        except (OSError, ValueError) as exc:  # socket already gone
            logger.debug("mqtt %s: disconnect: %s", self.client_id, exc)
        self._client.loop_stop()
        self._connected.clear()

    def __enter__(self) -> MqttConnection:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None) -> bool:
        """Wait until connected; return whether it is."""
        return self._connected.wait(timeout)

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
            self.publish_refused += 1
            return None
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, TypeError, OSError) as exc:
            self.publish_errors += 1
            self._ratelog.log(logging.ERROR, "publish", "mqtt %s: publish to %s failed: %s", self.client_id, topic, exc)
            return None
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.published += 1
        else:
            self.publish_errors += 1
            self._ratelog.log(
                logging.WARNING, "publish-rc", "mqtt %s: publish to %s: %s", self.client_id, topic,
                mqtt.error_string(info.rc),
            )
        return info

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                self.refused_connects += 1
                self._connected.clear()
                self._ratelog.log(
                    logging.ERROR, "refused", "mqtt %s: %s:%d refused the connection: %s",
                    self.client_id, self.host, self.port, reason_code,
                )
                return
            sock = client.socket()
            if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
                # small MQTT packets (PUBACK-paced uploads, status) must not wait ~40 ms for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._subscribed.clear()
            if self._subscriptions:
                result, mid = client.subscribe(self._subscriptions)
                if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._pending_subacks = {mid}
            else:
                self._subscribed.set()
            self.connects += 1
            self._connected.set()
            logger.info("mqtt %s: connected to %s:%d", self.client_id, self.host, self.port)
            for listener in self._connect_listeners:
                self._call(listener)
        except Exception:  # a callback must never raise into paho's loop
            self.callback_errors += 1
            self._ratelog.log(logging.ERROR, "on_connect", "mqtt %s: on_connect failed", self.client_id, exc_info=True)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was_up = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        if was_up:
            self.disconnects += 1
            self._ratelog.log(
                logging.WARNING, "disconnect", "mqtt %s: disconnected from %s:%d: %s",
                self.client_id, self.host, self.port, reason_code,
            )

    def _handle_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self._pending_subacks.discard(mid)
        refused = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if refused:
            self._ratelog.log(logging.ERROR, "suback", "mqtt %s: the broker refused a subscription: %s",
                              self.client_id, refused)
        if not self._pending_subacks:
            self._subscribed.set()

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages_in += 1
        if self._on_message is not None:
            self._dispatch(self._on_message, msg)

    def _dispatch(self, handler: MessageHandler, msg: mqtt.MQTTMessage) -> None:
        try:
            handler(msg)
        except Exception:
            self.callback_errors += 1
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
            self.callback_errors += 1
            self._ratelog.log(logging.ERROR, "listener", "mqtt %s: listener %r failed", self.client_id, fn,
                              exc_info=True)
