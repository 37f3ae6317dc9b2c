"""Sources: serial over real ptys (garbage, CSV, unplug/replug), MQTT with a real mosquitto."""

from __future__ import annotations

import json
import os
import tty

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.contract import topics
from edge_agent.contract.binary import SYNC, encode_frame
from edge_agent.contract.csv_lines import encode_csv_lines
from edge_agent.contract.frames import Frame
from edge_agent.contract.mqtt_payload import encode_json_payload
from edge_agent.mqtt_client import MqttConnection
from edge_agent.sources import SampleSource
from edge_agent.sources.mqtt import MqttSource
from edge_agent.sources.serial import SerialSource
from tests.waiting import wait_for


class Pty:
    """A real pseudo-terminal pair; the source opens the slave by path (through a symlink we can re-point)."""

    def __init__(self, link=None):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line discipline
        self.name = os.ttyname(self.slave)
        self._fds = (self.master, self.slave)
        if link is not None:
            tmp = link.with_suffix(".new")
            os.symlink(self.name, tmp)
            os.replace(tmp, link)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view[:4096])
            view = view[n:]

    def close(self) -> None:
        """Close both ends once (a second call must not close fd numbers reused since)."""
        fds, self._fds = self._fds, ()
        for fd in fds:
            os.close(fd)


def _stream(n_frames: int, n: int = 64, c: int = 2, seq0: int = 0) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n_frames * n, c)).astype(np.float32)
    frames = [encode_frame(seq0 + i * n, x[i * n : (i + 1) * n], sample_type="float32") for i in range(n_frames)]
    return frames, x


def _drain(source, want: int, timeout: float = 10.0) -> list[Frame]:
    got: list[Frame] = []

    def more() -> bool:
        got.extend(source.read(0.05))
        return len(got) >= want

    wait_for(more, timeout)
    return got


def test_sources_share_one_interface(tmp_path):
    assert isinstance(SerialSource("loop://"), SampleSource)
    assert isinstance(MqttSource(MqttConnection("127.0.0.1", 1, "x"), "vib/dev/samples"), SampleSource)


def test_serial_pty_with_ten_percent_garbage_keeps_every_good_frame():
    pty = Pty()
    frames, x = _stream(200)
    rng = np.random.default_rng(7)
    total = sum(len(f) for f in frames)
    garbage = 0
    corrupted = {17, 90}
    blob = bytearray()
    for i, f in enumerate(frames):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 2 * 0.1 * len(f)))).astype(np.uint8).tobytes()
        junk = junk.replace(SYNC, b"\x00\x00")  # keep the count of garbage bytes exact
        garbage += len(junk)
        blob += junk
        if i in corrupted:  # a bit flip inside the payload: must fail the CRC, and not take the next frame with it
            f = bytearray(f)
            f[30] ^= 0x40
        blob += f
    assert 0.07 < garbage / total < 0.13
    src = SerialSource(pty.name, read_timeout_s=0.02)
    try:
        src.start()
        assert src.connected.wait(5)
        pty.write(bytes(blob))
        got = _drain(src, len(frames) - len(corrupted))
        assert [f.seq for f in got] == [i * 64 for i in range(len(frames)) if i not in corrupted]
        np.testing.assert_array_equal(got[0].samples, x[:64])
        c = src.counters
        assert c.crc_errors >= len(corrupted)
        assert c.bytes_discarded >= garbage
        assert c.bytes == len(blob)
    finally:
        src.stop()
        pty.close()


def test_serial_csv_lines_over_pty():
    pty = Pty()
    x = np.arange(40, dtype=np.float32).reshape(20, 2) / 3
    text = encode_csv_lines(100, x, 0, 1000.0) + b"garbage line\n" + encode_csv_lines(120, x, 0, 1000.0)
    src = SerialSource(pty.name, format="csv", channels=2)
    try:
        src.start()
        assert src.connected.wait(5)
        pty.write(text)
        got = _drain(src, 2)
        assert sum(f.n_samples for f in got) == 40
        np.testing.assert_array_equal(got[0].samples, x)
        assert src.counters.bad_lines == 1
    finally:
        src.stop()
        pty.close()


def test_serial_port_unplugged_and_replugged(tmp_path):
    link = tmp_path / "ttyV0"
    first = Pty(link)
    src = SerialSource(str(link), read_timeout_s=0.02, reopen_max_s=0.2)
    frames, _ = _stream(4)
    second = None
    try:
        src.start()
        assert src.connected.wait(5)
        first.write(b"".join(frames[:2]))
        assert [f.seq for f in _drain(src, 2)] == [0, 64]
        first.close()  # unplug: the reader sees the port vanish
        assert wait_for(lambda: not src.connected.is_set(), 5)
        second = Pty(link)  # replug (a new device node, same name)
        assert src.connected.wait(5)
        second.write(b"".join(frames[2:]))
        assert [f.seq for f in _drain(src, 2)] == [128, 192]
        assert src.counters.reconnects == 1
    finally:
        src.stop()
        first.close()
        if second is not None:
            second.close()


def test_serial_missing_port_is_retried_not_fatal(tmp_path):
    src = SerialSource(str(tmp_path / "nope"), reopen_max_s=0.1)
    try:
        src.start()
        assert wait_for(lambda: src.counters.open_failures >= 3, 5)
        assert src.read(0.01) == []
    finally:
        src.stop()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.binary(max_size=300), max_size=20), good_every=st.integers(1, 5))
def test_fuzz_serial_reader_path_never_raises(chunks, good_every):
    """Random bytes (with good frames mixed in) through the reader's decode path: no exception, good frames out."""
    src = SerialSource("loop://", queue_frames=64)
    good, _ = _stream(len(chunks) // good_every + 1, n=8)
    sent = 0
    for i, chunk in enumerate(chunks):
        src.consume(chunk)
        if i % good_every == 0:
            src.consume(good[sent])
            sent += 1
    c = src.counters
    assert c.bytes == sum(map(len, chunks)) + sum(len(g) for g in good[:sent])
    assert c.frames + c.frames_dropped <= sent + len(chunks)  # nothing invented beyond plausibility
    for frame in src.read(0):
        assert frame.samples.dtype == np.float32 and frame.samples.ndim == 2


def test_serial_queue_overflow_is_counted():
    src = SerialSource("loop://", queue_frames=8)
    frames, _ = _stream(20)
    src.consume(b"".join(frames))
    assert src.counters.frames == 8 and src.counters.frames_dropped == 12
    assert len(src.read(0.01)) == 8


def _publisher(broker, name="pub"):
    conn = MqttConnection(broker.host, broker.port, name)
    conn.start()
    assert conn.wait_connected(10)
    return conn


def test_mqtt_source_binary_json_and_malformed(mosquitto):
    conn = MqttConnection(mosquitto.host, mosquitto.port, "agent-src")
    src = MqttSource(conn, topics.samples_topic("pump-1"))
    pub = _publisher(mosquitto)
    topic = topics.samples_topic("pump-1")
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    try:
        src.start()
        conn.start()
        assert conn.wait_subscribed(10)
        probe = encode_json_payload(1000, x)  # valid, so it does not count as malformed
        assert wait_for(lambda: pub.publish(topic, probe, qos=1) is not None and src.counters.messages > 0, 10)
        bad = [b"", b"\xa5\x5a" + b"\x00" * 10, b"{not json", json.dumps({"seq": -1, "samples": [[1]]}).encode(),
               b"hello", encode_frame(0, x)[:-1] + b"\x00"]
        for p in bad:
            pub.publish(topic, p, qos=1)
        pub.publish(topic, encode_frame(6, x, sample_type="float32"), qos=1)
        pub.publish(topic, encode_json_payload(12, x), qos=1)
        got: list[Frame] = []

        def both() -> bool:
            got.extend(f for f in src.read(0.05) if f.seq != 1000)
            return len(got) >= 2

        assert wait_for(both, 10)
        assert [f.seq for f in got] == [6, 12]
        np.testing.assert_array_equal(got[1].samples, x)
        assert src.counters.bad_payloads == len(bad)  # QoS 1 keeps order: the bad ones came first
    finally:
        pub.stop()
        conn.stop()


def test_mqtt_source_resubscribes_after_broker_restart(mosquitto):
    conn = MqttConnection(mosquitto.host, mosquitto.port, "agent-src2")
    src = MqttSource(conn, topics.samples_topic("pump-2"))
    x = np.ones((4, 1), np.float32)
    topic = topics.samples_topic("pump-2")
    try:
        src.start()
        conn.start()
        assert conn.wait_subscribed(10)
        pub = _publisher(mosquitto)
        pub.publish(topic, encode_json_payload(0, x), qos=1)
        assert [f.seq for f in _drain(src, 1)] == [0]
        pub.stop()
        mosquitto.restart()
        assert wait_for(lambda: src.counters.reconnects >= 1 and src.connection.connected, 20)
        pub = _publisher(mosquitto, "pub2")
        got: list[Frame] = []

        def arrived() -> bool:  # the subscription may land just after CONNACK: publish until one arrives
            pub.publish(topic, encode_json_payload(4, x), qos=1)
            got.extend(src.read(0.2))
            return bool(got)

        assert wait_for(arrived, 10, interval=0.05)
        assert got[0].seq == 4
        pub.stop()
    finally:
        conn.stop()
