"""Stopping on SIGTERM / SIGINT without a deadlock.

A Python signal handler runs in the main thread between two bytecodes, possibly while that thread holds the
lock inside a ``threading.Event`` it is waiting on; ``event.set()`` from the handler then waits for that lock
forever (the agent hung on SIGTERM until systemd killed it: no final status, no "offline"). Here the handler
takes no lock: the interpreter's C-level wakeup fd writes the signal number to a pipe, and a small thread that
reads the pipe sets the event.
"""

from __future__ import annotations

import os
import signal
import threading


def stop_on_signals(stop: threading.Event, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """Set ``stop`` when one of ``signals`` arrives (main thread only; replaces any previous wakeup fd)."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for sig in signals:
        signal.signal(sig, lambda *_: None)  # a Python handler must exist; the wakeup fd does the work

    def wait_for_signals() -> None:
        while os.read(r, 1):
            stop.set()

    threading.Thread(target=wait_for_signals, name="signals", daemon=True).start()
