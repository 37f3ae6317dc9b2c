"""The fleet's central side for tests: a ``trainer collect`` member on a thread, and the collectors' key.

``COLLECTOR_KEY`` signs every test collector's receipts; gateways in tests trust ``COLLECTOR_PUBLIC``
(``[uploads] receipt_keys``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.contract.signing import public_key_text
from edge_agent.mqtt_client import MqttConnection
from trainer import dataset
from trainer.collect import CollectOptions, CollectStats, collect

COLLECTOR_KEY = Ed25519PrivateKey.generate()
COLLECTOR_PUBLIC = public_key_text(COLLECTOR_KEY.public_key())


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
