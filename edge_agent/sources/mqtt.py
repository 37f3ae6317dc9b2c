"""MQTT source: frames published on ``vib/<device>/samples`` (binary frames or JSON batches).

Uses :class:`edge_agent.mqtt_client.MqttConnection` (paho-mqtt 2.x, subscribe in ``on_connect``,
capped reconnect backoff). The message callback is thin: decode with ``wire.decode_payload`` and
``put_nowait``; a malformed payload is counted in ``bad_payloads`` and skipped, a full queue counts
``frames_dropped``. The connection is public (``connection``) so the runtime publishes alerts and
status through the same client (and its last will).
"""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt

from edge_agent.contract import wire
from edge_agent.contract.errors import FrameError
from edge_agent.mqtt_client import MqttConnection, Will
from edge_agent.sources import QueueSource

log = logging.getLogger(__name__)


class MqttSource(QueueSource):
    """Frames from ``vib/<topic_device>/samples``.

    Args:
        topic_device: whose samples topic to subscribe.
        host, port, client_id, username, password, keepalive, will: the broker connection.
        qos: subscription QoS (1 recommended: QoS 0 drops silently under load).
        queue_frames: bound of the frame queue.

    Counters: bytes, frames, frames_dropped, bad_payloads, reconnects, messages.
    """

    def __init__(
        self,
        topic_device: str,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        will: Will | None = None,
        qos: int = 1,
        queue_frames: int = 1024,
    ) -> None:
        super().__init__(queue_frames)
        self.topic = wire.samples_topic(topic_device)
        self.bad_payloads = 0
        self.messages = 0
        self.connection = MqttConnection(
            host,
            port,
            client_id,
            username=username,
            password=password,
            keepalive=keepalive,
            will=will,
            on_message=self._on_message,
            subscriptions=[(self.topic, qos)],
        )

    def start(self) -> None:
        self.connection.start()

    def stop(self) -> None:
        self.connection.stop()

    @property
    def counters(self) -> dict[str, int]:
        return {
            "bytes": self.bytes,
            "frames": self.frames,
            "frames_dropped": self.frames_dropped,
            "crc_errors": 0,
            "bytes_discarded": 0,
            "bad_lines": 0,
            "bad_payloads": self.bad_payloads,
            "reconnects": max(0, self.connection.connects - 1),
            "messages": self.messages,
        }

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        """Runs on paho's network thread: decode, queue, count; nothing slow, never raises."""
        self.messages += 1
        self.bytes += len(msg.payload)
        try:
            frame = wire.decode_payload(msg.payload)
        except FrameError as exc:
            self.bad_payloads += 1
            self._warn("payload", "mqtt %s: malformed payload skipped (%s); %d so far", msg.topic, exc, self.bad_payloads)
            return
        self._put(frame)
