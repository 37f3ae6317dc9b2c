"""The standard edge layout with two real mosquitto processes: the gateway's broker, configured from
examples/mosquitto-bridge.conf, bridged to a central broker that `trainer collect` reads.

The uplink is cut (central broker stopped) while the gateway keeps uploading, the gateway's own broker is
restarted during the outage, the uplink returns: every window reaches the dataset, exactly once after dedupe.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edge_agent.contract.upload_record import decode_record, encode_record
from edge_agent.mqtt_client import MqttConnection
from edge_agent.spool import Spool
from edge_agent.uploader import Uploader
from firmware_sim.broker import Broker
from tests.e2e.fleet_helpers import CollectorThread
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CENTRAL = "allow_anonymous true\nmax_queued_messages 0\n"


def bridge_conf(central: Broker) -> str:
    """examples/mosquitto-bridge.conf pointed at ``central``; the listener and persistence lines are the test
    broker's own, and the reconnect backoff is shortened so the test does not wait 30 s."""
    text = (REPO / "examples" / "mosquitto-bridge.conf").read_text()
    keep = [ln for ln in text.splitlines()
            if not re.match(r"\s*(listener|persistence|persistence_location|autosave_interval|allow_anonymous|"
                            r"password_file|acl_file|local_username|local_password|remote_username|remote_password)\b",
                            ln)]  # logins and ACLs: tests/e2e/test_broker_acl.py runs them
    conf = "\n".join(keep)
    conf = re.sub(r"(?m)^address .*$", f"address {central.host}:{central.port}", conf)
    conf = re.sub(r"(?m)^restart_timeout .*$", "restart_timeout 1", conf)
    return "allow_anonymous true\n" + conf.replace("GATEWAY-ID", "gw-test") + "\n"


def windows(start: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(start)
    return [encode_record(device=f"pump-{i % 2}", model_id="m", model_version="v1", seq_end=i * 64,
                          time_end=f"2026-11-22T10:{i // 60:02d}:{i % 60:02d}", sample_rate=100.0, channels=["x"],
                          score=0.1, threshold=0.5, state="normal", gateway="gw-test",
                          samples=rng.normal(size=(64, 1)).astype(np.float32)) for i in range(start, start + n)]


def test_uplink_cut_and_restored_loses_nothing(tmp_path: Path) -> None:
    central = Broker(tmp_path / "central", extra_conf=CENTRAL)
    central.start()
    gateway = Broker(tmp_path / "gateway", extra_conf=bridge_conf(central))
    gateway.start()
    collector = CollectorThread(central.address, tmp_path / "dataset")
    spool = Spool(tmp_path / "spool.sqlite").open()
    connection = MqttConnection(*gateway.address, "edge-agent-gw-test", reconnect_min_s=0.2, reconnect_max_s=1)
    uploader = Uploader(spool, connection, batch=20, backoff_min_s=0.1, backoff_max_s=1)
    sent: list[bytes] = []

    def offer(payloads: list[bytes]) -> None:
        for p in payloads:
            uploader.offer(f"vib/{decode_record(p).device}/upload", p)
            sent.append(p)

    def collected() -> int:
        return len(collector.ids())

    try:
        assert collector.subscribed.wait(10)
        connection.start()
        uploader.start()
        offer(windows(0, 100))
        assert wait_for(lambda: collected() == 100, timeout=20), "the bridge forwards while the uplink is up"

        central.stop()  # the uplink is cut
        offer(windows(100, 150))
        assert wait_for(lambda: uploader.pending == 0, timeout=20), \
            "the gateway's own broker keeps taking uploads while the uplink is down"
        gateway.restart()  # and the gateway reboots during the outage: its queue is on disk
        offer(windows(250, 50))
        assert wait_for(lambda: uploader.pending == 0, timeout=20)
        assert collected() == 100

        central.start()  # the uplink is back
        assert wait_for(lambda: collected() == len(sent), timeout=30), f"{collected()} of {len(sent)} arrived"
    finally:
        uploader.stop()
        connection.stop()
        collector.stop()
        spool.close()
        gateway.stop()
        central.stop()
    assert sorted(collector.ids()) == sorted(decode_record(p).id for p in sent), "every window, exactly once after dedupe"
