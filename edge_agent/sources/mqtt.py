"""MQTT source: frames published on a sensor's samples topic (binary frames, wire JSON, or the sensor's own JSON).

In the gateway every MQTT sensor has a connection of its own (``own_connection``: started and stopped with the
source; client id ``<gateway client id>-<device>``), so the broker keeps one queue per sensor and a sensor that
floods fills only its own: with one shared connection a flooding sensor made the broker drop the others'
messages. The handler runs on that connection's network thread under the source's ``IntakeBudget`` (its pauses
back up into the broker's queue for this sensor alone), and is thin: a size check, then
``PayloadDecoder.decode`` and ``put_nowait``. A payload longer than the largest valid one is refused
unparsed (``oversized_payloads``), a malformed one is counted in ``bad_payloads``; both are skipped, and a
full queue counts ``frames_dropped``.

Payloads are either the gateway's wire payloads (``payload = "wire"``: a binary frame or the wire JSON
object) or a sensor's own JSON read through a declared ``JsonMapping`` (``payload = "json"``). A
mapping without a sequence field gives count-based windows: the source numbers the samples as they
arrive, and a lost message cannot be seen as a gap (``gaps_detectable`` is false in the status, and the
source says so in the log when it starts).
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt

from edge_agent.contract.errors import FrameError
from edge_agent.contract.json_mapping import PayloadDecoder
from edge_agent.contract.mqtt_payload import PayloadTooLarge
from edge_agent.mqtt_client import MqttConnection
from edge_agent.sources import QueueSource
from edge_agent.status import SourceCounters

log = logging.getLogger(__name__)


class MqttSource(QueueSource):
    """Frames from ``topic`` on ``connection``.

    Args:
        connection: the gateway's MQTT connection (started and stopped by its owner).
        topic: the samples topic (``topics.samples_topic(device)``, or any topic a sensor publishes on).
        qos: subscription QoS (1 recommended: QoS 0 drops silently under load).
        decoder: how payloads become frames (default: the wire payloads, ``PayloadDecoder()``).
        queue_frames: bound of the frame queue.
        wake: set whenever a frame is queued.
        intake_cpu: share of a core this source's decoding may use (``IntakeBudget``).
        own_connection: start and stop ``connection`` with the source (the gateway gives each sensor its own).
    """

    def __init__(
        self,
        connection: MqttConnection,
        topic: str,
        *,
        qos: int = 1,
        decoder: PayloadDecoder | None = None,
        queue_frames: int = 1024,
        wake: threading.Event | None = None,
        intake_cpu: float = 0.1,
        own_connection: bool = False,
    ) -> None:
        super().__init__(queue_frames, wake, intake_cpu)
        self.topic = topic
        self.qos = qos
        self.connection = connection
        self.own_connection = own_connection
        self.decoder = decoder or PayloadDecoder()
        self.bad_payloads = 0
        self.oversized_payloads = 0
        self.messages = 0
        self._subscribed = False

    def start(self) -> None:
        if not self._subscribed:
            if self.decoder.counted:
                log.warning("mqtt %s: the payload mapping has no sequence field: samples are numbered as they arrive "
                            "(count-based windows), so a lost message cannot be detected as a gap", self.topic)
            self.connection.subscribe(self.topic, self.qos, self._on_message)
            self._subscribed = True
        self._stop.clear()
        if self.own_connection:
            self.connection.start()

    def stop(self) -> None:
        """Stop taking messages (and disconnect, when the connection is the source's own)."""
        self._stop.set()
        if self.own_connection:
            self.connection.stop()

    @property
    def link_up(self) -> bool:
        """Connected, with the samples topic subscribed."""
        return self.connection.wait_subscribed(0)

    @property
    def counters(self) -> SourceCounters:
        return SourceCounters(**self._intake() | {
            "messages": self.messages, "bad_payloads": self.bad_payloads,
            "oversized_payloads": self.oversized_payloads, "reconnects": max(0, self.connection.counters.connects - 1),
            "gaps_detectable": not self.decoder.counted})

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        """Runs on paho's network thread: size check, decode, queue, count; nothing slow, never raises."""
        if self._stop.is_set():
            return  # stopping: what is still in the socket is not decoded
        self.budget.spend()
        self.messages += 1
        self.bytes += len(msg.payload)
        try:
            frame = self.decoder.decode(msg.payload)
        except PayloadTooLarge as exc:
            self.oversized_payloads += 1
            self._warn("oversized", "mqtt %s: %s; %d so far", msg.topic, exc, self.oversized_payloads)
            return
        except FrameError as exc:
            self.bad_payloads += 1
            self._warn("payload", "mqtt %s: malformed payload skipped (%s); %d so far", msg.topic, exc, self.bad_payloads)
            return
        self._put(frame)
