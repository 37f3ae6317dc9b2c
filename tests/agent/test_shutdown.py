"""SIGTERM always stops: the handler must not take the lock of an Event the main thread is waiting on.

The child process loops as the agent's main loop does (``stop.wait`` with short timeouts, so it often holds the
Event's internal lock) and is sent SIGTERM hundreds of times; each one must be seen. With a handler calling
``stop.set()`` directly, a run like this deadlocks within a few hundred signals (measured: 1 hang in 40 single
signals).
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent("""
    import sys, threading
    from edge_agent.shutdown import stop_on_signals
    stop = threading.Event()
    stop_on_signals(stop)
    print("ready", flush=True)
    while True:
        while not stop.is_set():
            stop.wait(0.00001)
        stop.clear()
        print("stopped", flush=True)
""")


def test_every_sigterm_is_seen_while_the_main_thread_waits_on_the_stop_event() -> None:
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        for i in range(400):
            p.send_signal(signal.SIGTERM)
            ready, _, _ = select.select([p.stdout], [], [], 5.0)
            assert ready, f"signal {i + 1}: the process hung in its signal handler"
            assert p.stdout.readline().strip() == "stopped"
            time.sleep(0.0005 * (i % 3))  # land the next signal at different points of the loop
    finally:
        p.kill()
        p.wait()
