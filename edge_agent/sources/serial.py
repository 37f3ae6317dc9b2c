"""Serial source: binary wire frames or CSV lines from a serial port (USB CDC, UART, pty), via pyserial.

The reader thread opens the port with ``serial.serial_for_url`` (so ``/dev/ttyACM0``, ``/dev/pts/3``
and ``loop://`` all work), reads in bulk (``read(max(1, in_waiting))`` with a timeout: never a byte
per system call), feeds the bytes to ``FrameDecoder`` (resynchronises on the sync marker after
garbage, checks the CRC) or ``CsvLineDecoder``, and queues the frames. When the port goes away
(USB unplugged, the pty's other end closed) it is reopened with a capped exponential backoff whose
sleeps notice the stop event. Nothing read from the port can stop the thread.
"""

from __future__ import annotations

import logging
import threading

import serial

from edge_agent.contract.binary import FrameDecoder
from edge_agent.contract.csv_lines import CsvLineDecoder
from edge_agent.sources import QueueSource
from edge_agent.status import SourceCounters

log = logging.getLogger(__name__)


class SerialSource(QueueSource):
    """Frames from a serial port.

    Args:
        port: a device path or pyserial URL.
        format: ``"binary"`` (wire frames) or ``"csv"`` (``seq,t_us,v0,...`` lines).
        baudrate: for real UARTs (ignored by USB CDC and ptys).
        channels: CSV only: expected values per line (None: fixed by the first good line).
        read_timeout_s: longest a read blocks (bounds how fast ``stop`` is noticed).
        reopen_max_s: cap of the reopen backoff (starting at 0.1 s, doubling).
        queue_frames: bound of the frame queue.
        intake_cpu: share of a core the reader may spend decoding (``IntakeBudget``): a node that floods the port
            is paused, its excess lost in its own port buffer.

    Counters (``counters``): bytes, frames, frames_dropped, crc_errors, bad_headers,
    bytes_discarded, bad_lines, reconnects (successful reopens after the first open),
    open_failures, read_errors.
    """

    def __init__(
        self,
        port: str,
        format: str = "binary",
        baudrate: int = 921_600,
        channels: int | None = None,
        read_timeout_s: float = 0.05,
        reopen_max_s: float = 5.0,
        queue_frames: int = 1024,
        wake: threading.Event | None = None,
        intake_cpu: float = 0.1,
    ) -> None:
        super().__init__(queue_frames, wake, intake_cpu)
        if format not in ("binary", "csv"):
            raise ValueError(f"serial format must be 'binary' or 'csv', got {format!r}")
        self.port = port
        self.format = format
        self.baudrate = baudrate
        self.read_timeout_s = read_timeout_s
        self.reopen_max_s = reopen_max_s
        self._decoder: FrameDecoder | CsvLineDecoder = (
            FrameDecoder() if format == "binary" else CsvLineDecoder(channels)
        )
        self.opens = 0
        self.open_failures = 0
        self.read_errors = 0
        self.decoder_errors = 0
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"serial-{self.port}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def link_up(self) -> bool:
        """The port is open."""
        return self.connected.is_set()

    @property
    def counters(self) -> SourceCounters:
        d = self._decoder
        return SourceCounters(**self._intake() | {
            "crc_errors": getattr(d, "crc_errors", 0), "bad_headers": getattr(d, "bad_headers", 0),
            "bytes_discarded": d.bytes_discarded, "bad_lines": getattr(d, "bad_lines", 0),
            "open_failures": self.open_failures, "read_errors": self.read_errors + self.decoder_errors})

    # ------------------------------------------------------------------ reader thread
    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                port = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=self.read_timeout_s)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.open_failures += 1
                self._warn("open", "serial %s: cannot open (%s); retrying in %.1f s", self.port, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.reopen_max_s)
                continue
            if self.opens:
                self.reconnects += 1
            self.opens += 1
            backoff = 0.1
            log.info("serial %s: open (%s)", self.port, self.format)
            self.connected.set()
            try:
                self._read_until_error(port)
            finally:
                self.connected.clear()
                port.close()

    def _read_until_error(self, port: serial.SerialBase) -> None:
        while not self._stop.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                self.read_errors += 1
                self._warn("read", "serial %s: port lost (%s); reopening", self.port, exc)
                return
            if data:
                self.consume(data)
                self.budget.spend()

    def consume(self, data: bytes) -> None:
        """Decode bytes read from the port and queue the frames; never raises (the reader thread's hot path)."""
        self.bytes += len(data)
        try:
            frames = self._decoder.feed(data)
        except Exception:  # the decoders never raise by contract; if one did, the stream must go on
            self.decoder_errors += 1
            log.exception("serial %s: decoder failed on %d bytes (dropped)", self.port, len(data))
            return
        for frame in frames:
            self._put(frame)
