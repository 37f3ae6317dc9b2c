"""MQTT source: frames published on a sensor's samples topic (binary frames or JSON batches).

The source does not own a connection: it subscribes its topic on the gateway's one
:class:`edge_agent.mqtt_client.MqttConnection` (paho-mqtt 2.x), which re-subscribes on every reconnect
and routes each topic's messages to its own source. The message handler is thin: decode with
``wire.decode_payload`` and ``put_nowait``; a malformed payload is counted in ``bad_payloads`` and
skipped, a full queue counts ``frames_dropped``.
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt

from edge_agent.contract import wire
from edge_agent.contract.errors import FrameError
from edge_agent.mqtt_client import MqttConnection
from edge_agent.sources import QueueSource
from edge_agent.status import SourceCounters

log = logging.getLogger(__name__)


class MqttSource(QueueSource):
    """Frames from ``topic`` on ``connection``.

    Args:
        connection: the gateway's MQTT connection (started and stopped by its owner).
        topic: the samples topic (``wire.samples_topic(device)``).
        qos: subscription QoS (1 recommended: QoS 0 drops silently under load).
        queue_frames: bound of the frame queue.
        wake: set whenever a frame is queued.
    """

    def __init__(
        self,
        connection: MqttConnection,
        topic: str,
        *,
        qos: int = 1,
        queue_frames: int = 1024,
        wake: threading.Event | None = None,
    ) -> None:
        super().__init__(queue_frames, wake)
        self.topic = topic
        self.qos = qos
        self.connection = connection
        self.bad_payloads = 0
        self.messages = 0
        self._subscribed = False

    def start(self) -> None:
        if not self._subscribed:
            self.connection.subscribe(self.topic, self.qos, self._on_message)
            self._subscribed = True

    def stop(self) -> None:
        """Nothing to stop: the connection belongs to the gateway."""

    @property
    def counters(self) -> SourceCounters:
        return SourceCounters(
            bytes=self.bytes, messages=self.messages, frames=self.frames, frames_dropped=self.frames_dropped,
            bad_payloads=self.bad_payloads, reconnects=max(0, self.connection.connects - 1),
        )

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
