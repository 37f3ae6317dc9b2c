"""Sample sources: where frames come from (a serial port, an MQTT topic).

Every source has the same interface (:class:`SampleSource`): ``start()`` starts a reader
thread (or a network loop) that decodes bytes into :class:`edge_agent.contract.wire.Frame` objects and
puts them into a bounded queue; ``read(timeout)`` hands them to the one consuming thread;
``stop()`` ends the reader; ``counters`` says what came in and what was dropped. A source never
raises on bad input: bad bytes, lines and payloads are counted, logged at a rate limit and skipped,
and a port or broker that goes away is reopened with a capped backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol, Self, runtime_checkable

from edge_agent.contract import wire
from edge_agent.ratelog import RateLimitedLog
from edge_agent.status import SourceCounters

log = logging.getLogger(__name__)


@runtime_checkable
class SampleSource(Protocol):
    """What the runtime needs from a source."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self, timeout: float) -> list[wire.Frame]: ...

    def drain(self, most: int) -> list[wire.Frame]: ...

    @property
    def counters(self) -> SourceCounters: ...


class QueueSource:
    """Base of the sources: a bounded frame queue filled by a producer thread, drained by ``read``.

    Counters common to every source: ``bytes`` received, ``frames`` decoded, ``frames_dropped``
    (queue full: the consumer fell behind), ``reconnects``.
    """

    def __init__(self, queue_frames: int = 1024, wake: threading.Event | None = None) -> None:
        self._queue: queue.Queue[wire.Frame] = queue.Queue(maxsize=queue_frames)
        self._wake = wake  # set whenever a frame is queued (the gateway's scoring loop waits on it)
        self._stop = threading.Event()
        self.bytes = 0
        self.frames = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self._ratelog = RateLimitedLog(log)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _put(self, frame: wire.Frame) -> None:
        """Thin producer side: never blocks; a full queue drops the frame and counts it."""
        try:
            self._queue.put_nowait(frame)
            self.frames += 1
            # Event.set takes a lock and notifies: skip it while the scoring loop has not cleared the event yet
            # (it clears before polling every sensor, so a frame queued before the clear is still seen)
            if self._wake is not None and not self._wake.is_set():
                self._wake.set()
        except queue.Full:
            self.frames_dropped += 1
            self._warn("queue", "frame queue full: the scorer is behind, frames dropped (%d so far)", self.frames_dropped)

    def read(self, timeout: float) -> list[wire.Frame]:
        """Frames received since the last call; waits up to ``timeout`` s for the first one ([] if none)."""
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        out = [first]
        for _ in range(self._queue.maxsize):
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def drain(self, most: int) -> list[wire.Frame]:
        """Up to ``most`` queued frames, without waiting. The scoring loop polls every sensor after every wake, so
        an empty queue must cost nothing: its length is read without the queue's lock (only this thread takes
        frames out, so at least that many are there)."""
        q = self._queue
        n = min(most, len(q.queue))
        return [q.get_nowait() for _ in range(n)] if n else []

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _warn(self, key: str, msg: str, *args: object) -> None:
        """Warn at most once every 10 s per key (everything is counted regardless)."""
        self._ratelog.warning(key, msg, *args)
