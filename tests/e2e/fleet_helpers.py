"""A ``trainer collect`` member on a thread, for the fleet tests: started, read back, stopped."""

from __future__ import annotations

import threading
from pathlib import Path

from trainer import dataset
from trainer.collect import collect


class CollectorThread:
    """``collect(host, port, out)`` running until :meth:`stop`; ``subscribed`` is set once it listens."""

    def __init__(self, address: tuple[str, int], out: Path, flush_s: float = 0.2) -> None:
        self.out = out
        self.stop_event, self.subscribed = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=collect, args=(*address, out), daemon=True,
                                       kwargs={"stop_event": self.stop_event, "subscribed": self.subscribed,
                                               "flush_s": flush_s})
        self.thread.start()

    def ids(self) -> list[str]:
        """The ids of every window in the dataset so far (duplicates included)."""
        return dataset.read_table(self.out, columns=["id"]).column("id").to_pylist() if self.out.exists() else []

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)
