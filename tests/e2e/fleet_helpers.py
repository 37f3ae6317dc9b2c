"""The fleet's central side for tests: a ``trainer collect`` member on a thread, the collectors' key, and the
example bridge with its logins.

``COLLECTOR_KEY`` signs every test collector's receipts; gateways in tests trust ``COLLECTOR_PUBLIC``
(``[uploads] receipt_keys``).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.contract.signing import public_key_text
from edge_agent.mqtt_client import MqttConnection
from firmware_sim.broker import Broker
from trainer import dataset
from trainer.collect import CollectOptions, CollectStats, collect

REPO = Path(__file__).resolve().parents[2]
COLLECTOR_KEY = Ed25519PrivateKey.generate()
COLLECTOR_PUBLIC = public_key_text(COLLECTOR_KEY.public_key())


def login_bridge_conf(central: Broker, passwd: Path, acl_file: Path, gateway: str = "hall-3") -> str:
    """examples/mosquitto-bridge.conf for ``gateway``'s broker, with its logins and ACLs: the local password and
    ACL files ``passwd`` and ``acl_file``, the bridge to ``central`` as ``gateway`` (password ``pw-<gateway>``),
    the local bridge user's password ``pw-bridge``; listener and persistence lines left to the test broker."""
    text = (REPO / "examples" / "mosquitto-bridge.conf").read_text()
    keep = [ln for ln in text.splitlines() if not re.match(r"\s*(listener|persistence|autosave_interval)", ln)]
    conf = "\n".join(keep).replace("/etc/mosquitto/passwd", str(passwd)).replace("/etc/mosquitto/acl", str(acl_file))
    conf = re.sub(r"(?m)^address .*$", f"address {central.host}:{central.port}", conf)
    conf = re.sub(r"(?m)^restart_timeout .*$", "restart_timeout 1", conf)
    conf = conf.replace("LOCAL-BRIDGE-PASSWORD", "pw-bridge").replace("CENTRAL-PASSWORD", f"pw-{gateway}")
    return conf.replace("GATEWAY-ID", gateway)


class CollectorThread:
    """``collect`` into ``out`` on a thread until :meth:`stop`; waits until the broker granted its subscription.
    ``options`` go to ``CollectOptions`` (``key`` defaults to ``COLLECTOR_KEY``: receipts on)."""

    def __init__(self, address: tuple[str, int], out: Path, flush_s: float = 0.2, username: str | None = None,
                 password: str | None = None, **options) -> None:
        self.out = out
        options = {"key": COLLECTOR_KEY, "flush_s": flush_s} | options
        self.opts = CollectOptions(out=out, **options)
        self.connection = MqttConnection(*address, self.opts.cid, session_expiry_s=self.opts.session_expiry_s,
                                         receive_maximum=self.opts.receive_maximum, manual_ack=True,
                                         username=username, password=password)
        self.stop_event, self.subscribed = threading.Event(), threading.Event()
        self.stats: CollectStats | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.subscribed.wait(15), "the collector did not subscribe"

    def _run(self) -> None:
        self.stats = collect(self.connection, self.opts, self.stop_event, self.subscribed)

    def ids(self) -> list[str]:
        """The ids of every window in the dataset so far (duplicates dropped)."""
        return dataset.read_table(self.out, columns=["id"]).column("id").to_pylist() if self.out.exists() else []

    def stop(self) -> CollectStats:
        self.stop_event.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the collector did not stop"
        return self.stats

    close = stop
