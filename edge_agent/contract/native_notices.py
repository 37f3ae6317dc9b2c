"""Notices that native libraries write straight to file descriptor 2, filtered out by line.

The TFLite runtime's C++ code prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` on a process's
first model load, and TensorFlow (in the trainer) prints more, to descriptor 2 where no Python logging setting
reaches them (``TF_CPP_MIN_LOG_LEVEL`` does not silence the runtime's line, and it has no option of its own).
To a technician they read like errors. :class:`NativeNoticeFilter` passes descriptor 2 through a pipe while it is
started and drops the lines its pattern matches; every other line goes through unchanged and in order.

Descriptor 2 belongs to the whole process: filters nest (each restores what it found), and code that may filter
from several threads serializes its filters (``contract.interpreter`` holds a lock around each model load).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

log = logging.getLogger(__name__)

#: What the TFLite runtime announces on a process's first model load (matched from the start of a line).
RUNTIME_NOTICES = re.compile(rb"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$")
#: A line longer than this is no notice: it is passed on before its end arrives.
MAX_NOTICE = 65536
#: Seconds ``close`` waits for the pipe to drain (a child process still holding it keeps it open longer).
DRAIN_S = 2.0


class NativeNoticeFilter:
    """Passes file descriptor 2 through a pipe and drops the lines ``notices`` matches.

    ``start`` redirects descriptor 2 (or, if it cannot, leaves it alone: filtering is never worth failing for);
    ``close`` restores it and waits for the pipe to drain. A thread forwards the other lines to the real
    descriptor 2; if it ever fails to read, it restores descriptor 2 itself, so no writer can block on a pipe
    nobody reads. ``hidden``: lines dropped so far.
    """

    def __init__(self, notices: re.Pattern[bytes] = RUNTIME_NOTICES) -> None:
        self.notices = notices
        self.hidden = 0
        self._lock = threading.Lock()
        self._target: int | None = None  # a duplicate of the real descriptor 2; the pump thread closes it
        self._redirected = False
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """Whether descriptor 2 goes through this filter now."""
        return self._redirected

    def start(self) -> NativeNoticeFilter:
        if self._thread is not None:
            raise RuntimeError("a NativeNoticeFilter starts once")
        _flush_stderr()
        fds: list[int] = []
        try:
            target = os.dup(2)
            fds.append(target)
            read_fd, write_fd = os.pipe()
            fds += [read_fd, write_fd]
            thread = threading.Thread(target=self._pump, args=(read_fd,), name="native-notice-filter", daemon=True)
            with self._lock:
                os.dup2(write_fd, 2)
                self._target, self._redirected = target, True
            os.close(write_fd)  # descriptor 2 is now the pipe's only write end
            fds.remove(write_fd)
            thread.start()
        except (OSError, RuntimeError) as exc:  # no descriptor 2, no descriptors left, no threads at shutdown
            self._restore()
            for fd in fds:
                os.close(fd)
            self._target = None
            log.debug("native notices not filtered: %s", exc)
            return self
        self._thread = thread
        return self

    def close(self) -> None:
        """Restore descriptor 2 (what this process wrote before goes through the filter first)."""
        _flush_stderr()
        self._restore()
        if self._thread is not None:
            self._thread.join(DRAIN_S)
        if self.hidden:
            log.debug("%d native notice line(s) hidden", self.hidden)

    def __enter__(self) -> NativeNoticeFilter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _restore(self) -> None:
        with self._lock:
            if not self._redirected:
                return
            try:
                os.dup2(self._target, 2)  # closes the pipe's write end: the pump reads to its end and stops
            except OSError as exc:
                log.warning("cannot restore stderr after filtering native notices: %s", exc)
            finally:
                self._redirected = False  # after the dup2: ``active`` is false once writes reach the real stderr

    def _pump(self, read_fd: int) -> None:
        """Forward the lines that are not notices until the pipe ends; on a failed read, restore descriptor 2
        first (nothing would drain the pipe any more), then close both descriptors this thread owns."""
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(read_fd, MAX_NOTICE)
                except OSError:
                    break
                if not chunk:
                    break
                pending = self._forward(pending + chunk)
            self._write(pending)
        finally:
            self._restore()  # a no-op after close(): only a pump that stopped early still finds it redirected
            with self._lock:
                os.close(self._target)
                self._target = None
            os.close(read_fd)

    def _forward(self, data: bytes) -> bytes:
        """Write the complete lines of ``data`` that are not notices; return the unfinished last line."""
        try:
            *lines, pending = data.split(b"\n")
            lines = [ln + b"\n" for ln in lines]
            if len(pending) > MAX_NOTICE:
                lines, pending = [*lines, pending], b""
            kept = [ln for ln in lines if not self.notices.match(ln)]
            self.hidden += len(lines) - len(kept)
            out = b"".join(kept)
        except Exception:  # whatever goes wrong here, the bytes go through and the pipe keeps draining
            out, pending = data, b""
        self._write(out)
        return pending

    def _write(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self._target, data):]
            except OSError:  # the real stderr is gone (a closed pipe): drop the output, keep draining
                return


def _flush_stderr() -> None:
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):  # closed or broken: nothing of ours is waiting in it
        pass
