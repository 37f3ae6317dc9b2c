"""Sample sources: where frames come from (a serial port, an MQTT topic).

Every source has the same interface (:class:`SampleSource`): ``start()`` starts a reader
thread (or a network loop) that decodes bytes into :class:`edge_agent.contract.frames.Frame` objects and
puts them into a bounded queue; ``read(timeout)`` hands them to the one consuming thread;
``stop()`` ends the reader; ``counters`` says what came in and what was dropped. A source never
raises on bad input: bad bytes, lines and payloads are counted, logged at a rate limit and skipped,
and a port or broker that goes away is reopened with a capped backoff.

Fairness: every source's reader has its own thread (a serial reader, or the network thread of the sensor's own
MQTT connection) and an :class:`IntakeBudget`, a share of one core it may spend reading and decoding. A sensor
that floods (too many messages, huge payloads, garbage at full USB speed) exhausts its budget and its reader
pauses: the pause backs up into its own port or into the broker's queue for its own connection, where the
excess is lost — its own samples, never another sensor's. The time paused is counted (``throttled_s``) and
the sensor's health says it floods.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol, Self, runtime_checkable

from edge_agent.contract.frames import Frame
from edge_agent.ratelog import RateLimitedLog
from edge_agent.status import SourceCounters

log = logging.getLogger(__name__)


@runtime_checkable
class SampleSource(Protocol):
    """What the runtime needs from a source."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self, timeout: float) -> list[Frame]: ...

    def drain(self, most: int) -> list[Frame]: ...

    @property
    def counters(self) -> SourceCounters: ...


class IntakeBudget:
    """A token bucket of CPU seconds for one reader thread: ``share`` of a core on average, bursts of ``burst_s``
    seconds' worth. ``spend()`` is called by the reader thread once per message or read: it charges the thread's
    CPU time since the last call and, while the bucket is in debt, sleeps (the reader stops reading: back
    pressure on this source alone). ``stop`` ends a sleep at once."""

    def __init__(self, share: float = 0.1, burst_s: float = 2.0, stop: threading.Event | None = None) -> None:
        self.share = float(share)
        self.capacity = self.share * float(burst_s)
        self.tokens = self.capacity
        self.stop = stop or threading.Event()
        self.throttled_s = 0.0  # seconds the reader paused
        self.throttles = 0  # pauses
        self._cpu: float | None = None
        self._wall: float | None = None

    def spend(self) -> None:
        cpu, wall = time.thread_time(), time.monotonic()
        if self._cpu is None:
            self._cpu, self._wall = cpu, wall
            return
        self.tokens = min(self.capacity, self.tokens + (wall - self._wall) * self.share) - (cpu - self._cpu)
        self._cpu, self._wall = cpu, wall
        if self.tokens >= 0 or self.share <= 0:
            return
        pause = min(-self.tokens / self.share, 1.0)
        self.throttles += 1
        self.stop.wait(pause)
        self.throttled_s += pause
        self._wall = time.monotonic()
        self.tokens += pause * self.share
        self._cpu = time.thread_time()


class QueueSource:
    """Base of the sources: a bounded frame queue filled by a producer thread, drained by ``read``.

    Counters common to every source: ``bytes`` received, ``frames`` decoded, ``frames_dropped``
    (queue full: the consumer fell behind), ``reconnects``.
    """

    def __init__(self, queue_frames: int = 1024, wake: threading.Event | None = None,
                 intake_cpu: float = 0.1) -> None:
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=queue_frames)
        self._wake = wake  # set whenever a frame is queued (the gateway's scoring loop waits on it)
        self._stop = threading.Event()
        self.budget = IntakeBudget(intake_cpu, stop=self._stop)
        self.samples_dropped = 0  # samples of the frames dropped for a full queue
        self.bytes = 0
        self.frames = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self._ratelog = RateLimitedLog(log)

    def _intake(self) -> dict:
        """The counters every source has (for its ``counters``)."""
        return {"bytes": self.bytes, "frames": self.frames, "frames_dropped": self.frames_dropped,
                "samples_dropped": self.samples_dropped, "intake_throttled_s": round(self.budget.throttled_s, 3),
                "intake_throttles": self.budget.throttles, "reconnects": self.reconnects}

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _put(self, frame: Frame) -> None:
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
            self.samples_dropped += frame.n_samples
            self._warn("queue", "frame queue full: the scorer is behind, frames dropped (%d so far)", self.frames_dropped)

    def read(self, timeout: float) -> list[Frame]:
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

    def drain(self, most: int) -> list[Frame]:
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
