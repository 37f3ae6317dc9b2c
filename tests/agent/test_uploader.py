"""Store-and-forward against a real mosquitto that goes away and comes back."""

from __future__ import annotations

import json
import queue
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.mqtt_client import MqttConnection
from edge_agent.spool import Spool
from edge_agent.uploader import Uploader, UploadPolicy
from firmware_sim.broker import Broker
from tests.waiting import wait_for

TOPIC = "vib/pump-7/upload"


class Subscriber:
    """A persistent-session QoS 1 subscriber: the broker queues for it while it is away."""

    def __init__(self, broker: Broker, client_id: str = "retrainer") -> None:
        self.got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.conn = MqttConnection(
            broker.host, broker.port, client_id, on_message=self.got.put_nowait, subscriptions=[(TOPIC, 1)],
            clean_session=False, reconnect_min_s=0.2, reconnect_max_s=1.0,
        )
        self.conn.start()
        assert self.conn.wait_connected(10)
        self.ids: list[int] = []

    def collect(self, expected: set[int], timeout: float = 30.0) -> list[int]:
        """Receive until every id in ``expected`` was seen (or the deadline passes); return ids in order."""
        def seen_all() -> bool:
            while True:
                try:
                    msg = self.got.get_nowait()
                except queue.Empty:
                    return expected <= set(self.ids)
                self.ids.append(json.loads(msg.payload)["id"])

        wait_for(seen_all, timeout)
        return self.ids

    def stop(self) -> None:
        self.conn.stop()


def first_occurrences(ids: list[int]) -> list[int]:
    seen: set[int] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]


def payload(i: int) -> bytes:
    return json.dumps({"id": i, "window": list(range(16))}).encode()


def agent_connection(broker: Broker) -> MqttConnection:
    return MqttConnection(broker.host, broker.port, "gateway-1", reconnect_min_s=0.2, reconnect_max_s=1.0)


def test_records_offered_while_the_broker_is_down_are_all_delivered_in_order(
    mosquitto: Broker, tmp_path: Path
) -> None:
    sub = Subscriber(mosquitto)
    conn = agent_connection(mosquitto).start()
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000_000, max_records=10_000).open()
    uploader = Uploader(spool, conn, batch=7, ack_timeout_s=5.0, backoff_min_s=0.1, backoff_max_s=1.0).start()
    try:
        assert conn.wait_connected(10)
        uploader.offer(TOPIC, payload(-1))  # proves the subscription is in place before the outage
        assert sub.collect({-1}) == [-1]
        # the subscriber's copy can come before the uploader handles the PUBACK: wait for its count
        assert wait_for(lambda: uploader.counters.sent == 1), uploader.counters

        mosquitto.stop()
        assert wait_for(lambda: not conn.connected)
        offered = list(range(60))
        rids = [uploader.offer(TOPIC, payload(i)) for i in offered]
        assert None not in rids
        assert uploader.pending == 60 and uploader.counters.sent == 1

        mosquitto.start()
        ids = sub.collect(set(offered))
        assert set(ids) - {-1} == set(offered), "lost or unknown records"
        assert first_occurrences(ids) == [-1, *offered], "out of order"
        assert wait_for(lambda: uploader.pending == 0)
        # the spool lets go of the records before the uploader adds them to ``sent``
        assert wait_for(lambda: uploader.counters.sent == 61), uploader.counters
        assert uploader.counters.dropped == 0
    finally:
        uploader.stop()
        conn.stop()
        sub.stop()
        spool.close()


def test_broker_lost_in_the_middle_of_draining_loses_nothing(mosquitto: Broker, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto)
    conn = agent_connection(mosquitto).start()
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000_000, max_records=10_000).open()
    uploader = Uploader(spool, conn, batch=20, ack_timeout_s=2.0, backoff_min_s=0.1, backoff_max_s=1.0)
    offered = list(range(400))
    try:
        for i in offered:
            uploader.offer(TOPIC, payload(i))
        uploader.start()
        assert wait_for(lambda: uploader.counters.sent >= 40)
        mosquitto.stop()  # usually with a batch in flight
        assert wait_for(lambda: not conn.connected)
        mosquitto.start()
        ids = sub.collect(set(offered))
        assert set(ids) == set(offered), "lost or unknown records"
        assert first_occurrences(ids) == offered, "out of order"
        assert wait_for(lambda: uploader.pending == 0)
        # the spool lets go of the records before the uploader adds them to ``sent``
        assert wait_for(lambda: uploader.counters.sent == 400), uploader.counters
    finally:
        uploader.stop()
        conn.stop()
        sub.stop()
        spool.close()


def test_records_pending_from_a_previous_run_are_delivered_by_the_next(mosquitto: Broker, tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path, max_bytes=10_000_000, max_records=100) as spool:  # "previous run": broker unreachable
        for i in range(25):
            spool.put(TOPIC, payload(i))
    sub = Subscriber(mosquitto)
    spool = Spool(path, max_bytes=10_000_000, max_records=100).open()
    assert len(spool) == 25
    conn = agent_connection(mosquitto).start()
    try:
        with Uploader(spool, conn, batch=10):
            ids = sub.collect(set(range(25)))
            assert first_occurrences(ids) == list(range(25))
            assert wait_for(lambda: len(spool) == 0)
    finally:
        conn.stop()
        sub.stop()
        spool.close()


def test_a_full_spool_keeps_the_newest_records_and_counts_the_evicted(mosquitto: Broker, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto)
    mosquitto.stop()
    conn = agent_connection(mosquitto).start()
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000_000, max_records=10).open()
    uploader = Uploader(spool, conn, batch=4, backoff_min_s=0.1, backoff_max_s=1.0).start()
    try:
        for i in range(25):
            assert uploader.offer(TOPIC, payload(i)) is not None
        assert uploader.pending == 10 and spool.counters.evicted == 15
        mosquitto.start()
        ids = sub.collect(set(range(15, 25)))
        assert first_occurrences(ids) == list(range(15, 25))
        assert wait_for(lambda: uploader.pending == 0)
        # the spool lets go of the records before the uploader adds them to ``sent``
        assert wait_for(lambda: uploader.counters.sent == 10), uploader.counters
    finally:
        uploader.stop()
        conn.stop()
        sub.stop()
        spool.close()


def test_offer_refused_by_the_spool_is_counted_not_raised(tmp_path: Path) -> None:
    conn = MqttConnection("127.0.0.1", 9, "never-started")
    with Spool(tmp_path / "spool.db", max_bytes=10, max_records=10) as spool:
        uploader = Uploader(spool, conn)
        assert uploader.offer(TOPIC, bytes(11)) is None
        assert uploader.offer(TOPIC, b"ok") is not None
        assert uploader.counters.dropped == 1 and uploader.pending == 1


def test_upload_policy_picks_one_window_per_period_only_when_normal() -> None:
    policy = UploadPolicy(every_s=10.0)
    assert policy.should_upload(100.0, "normal")
    assert not policy.should_upload(105.0, "normal")
    assert not policy.should_upload(111.0, "warning")
    assert policy.should_upload(112.0, "normal")
    assert not policy.should_upload(121.0, "normal")
    any_state = UploadPolicy(every_s=1.0, only_normal=False)
    assert any_state.should_upload(0.0, "critical") and any_state.should_upload(1.0, "warning")
    with pytest.raises(ValueError, match="every_s"):
        UploadPolicy(every_s=0.0)
