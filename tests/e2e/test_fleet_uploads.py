"""The gateway's upload path (spool, uploader, its MQTT connection) into the collectors' dataset, with the
broker stopped in the middle of the upload and restarted: every window arrives, exactly once after dedupe.

mosquitto 2.0.11 forgets the collectors' shared subscription over a restart (their sessions come back, the
$share subscription does not, until they re-subscribe), so uploads published in between reach nobody: the
gateway keeps each record until a collector's receipt names it, and sends it again otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.contract.signing import keyring
from edge_agent.contract.topics import receipt_topic
from edge_agent.contract.upload_record import decode_record, encode_record
from edge_agent.mqtt_client import MqttConnection
from edge_agent.spool import Spool
from edge_agent.uploader import Uploader
from firmware_sim.broker import Broker
from tests.e2e.fleet_helpers import COLLECTOR_KEY, CollectorThread
from tests.waiting import wait_for


def test_broker_stopped_mid_upload_every_window_arrives_once(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "central", extra_conf="allow_anonymous true\nmax_queued_messages 0\n")
    broker.start()
    collector = CollectorThread(broker.address, tmp_path / "dataset")
    spool = Spool(tmp_path / "spool.sqlite").open()
    connection = MqttConnection(*broker.address, "edge-agent-gw", reconnect_min_s=0.2, reconnect_max_s=1)
    uploader = Uploader(spool, connection, batch=20, backoff_min_s=0.1, backoff_max_s=1, ack_timeout_s=2,
                        receipts=True, receipt_timeout_s=5, receipt_keys=keyring([COLLECTOR_KEY.public_key()]))
    connection.subscribe(receipt_topic("pump-1"), 1, lambda msg: uploader.on_receipt("pump-1", msg.payload))
    rng = np.random.default_rng(0)
    payloads = [encode_record(device="pump-1", model_id="m", model_version="v1", seq_end=i * 2048,
                              time_end=f"2026-11-22T11:{i // 60:02d}:{i % 60:02d}", sample_rate=20_000.0,
                              channels=["a", "b"], score=0.1, threshold=0.5, state="normal", gateway="gw",
                              samples=rng.normal(size=(2048, 2)).astype(np.float32)) for i in range(600)]

    try:
        assert collector.subscribed.wait(10)
        connection.start()
        uploader.start()
        for p in payloads:
            uploader.offer("vib/pump-1/upload", p, "normal", decode_record(p).id)
        assert wait_for(lambda: uploader.counters.confirmed > 50, timeout=20)
        broker.stop()  # mid-upload: records in flight, PUBACKs lost, the collector cut off too
        assert uploader.counters.confirmed < len(payloads), "the stop came too late to test anything"
        broker.start()
        assert wait_for(lambda: len(spool) == 0 and len(collector.ids()) == len(payloads), timeout=60), \
            f"{len(collector.ids())} of {len(payloads)} collected, {len(spool)} still spooled"
        assert wait_for(lambda: uploader.counters.confirmed == len(payloads), timeout=5), \
            "each record left the spool when a receipt named it"
    finally:
        uploader.stop()
        connection.stop()
        collector.stop()
        spool.close()
        broker.stop()
    assert sorted(collector.ids()) == sorted(decode_record(p).id for p in payloads), "every window, exactly once after dedupe"
