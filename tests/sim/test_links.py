"""Frames through a real pty and a real mosquitto: bit-exact round trips, and decoder counts equal
to the fault injection ledger."""

from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import serial

from edge_agent.contract import topics
from edge_agent.contract.binary import FrameDecoder, int16_scale
from edge_agent.contract.csv_lines import CsvLineDecoder
from edge_agent.contract.errors import FrameError
from edge_agent.contract.frames import SEQ_MOD, Frame, seq_gap
from edge_agent.contract.mqtt_payload import decode_payload
from firmware_sim import link, signals
from firmware_sim.faults import FaultInjector
from firmware_sim.stream import StreamConfig, Streamer

from .conftest import drain_fd


def _lorenz(rate: float = 1000.0) -> signals.LorenzSource:
    return signals.LorenzSource("healthy", sample_rate=rate)


class _Run:
    """Runs a Streamer in a thread; ``report`` is set when it ends."""

    def __init__(self, streamer: Streamer, n: int) -> None:
        self.report = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._go, args=(streamer, n), name="streamer")
        self._thread.start()

    def _go(self, streamer, n):
        try:
            self.report = streamer.run(n)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = 30.0):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "streamer did not finish"
        if self.error is not None:
            raise self.error
        return self.report


def _stream_over_pty(cfg: StreamConfig, source, n: int, faults=None, decoder=None):
    """Stream ``n`` samples over a new pty while a pyserial reader decodes every byte sent;
    returns (frames, report, decoder)."""
    decoder = decoder or (CsvLineDecoder() if cfg.fmt == "csv" else FrameDecoder())
    frames: list[Frame] = []
    received = 0
    with link.PtyLink() as lk, serial.Serial(lk.path, timeout=0.2) as port:
        streamer = Streamer(source, lk, cfg, faults)
        run = _Run(streamer, n)
        sent = streamer.faults.ledger
        deadline = time.monotonic() + 30
        # pty data reaches the slave asynchronously: wait for every byte, not for an empty buffer
        while not (run.done.is_set() and received >= sent.bytes_sent) and time.monotonic() < deadline:
            data = port.read(max(1, port.in_waiting))
            received += len(data)
            frames += decoder.feed(data)
        report = run.join()
    assert received == report.ledger.bytes_sent
    return frames, report, decoder


def _gaps(frames: list[Frame], first_seq: int = 0, total: int | None = None) -> int:
    """Samples missing between consecutive frames (and before the first / after the last)."""
    missing, expected = 0, first_seq
    for f in frames:
        gap = seq_gap(expected, f.seq)
        assert gap >= 0, f"stream went backwards at {f.seq}"
        missing += gap
        expected = f.next_seq
    if total is not None:
        missing += seq_gap(expected, total % SEQ_MOD)
    return missing


# --------------------------------------------------------------------------- pty
def test_pty_float32_frames_round_trip_bit_exact():
    n = 20000
    cfg = StreamConfig(fmt="binary", sample_type="float32", frame_samples=250, speed=0)
    frames, report, dec = _stream_over_pty(cfg, _lorenz(), n)
    assert report.ledger.frames_sent == 80 and report.samples == n
    assert dec.frames == 80 and dec.crc_errors == 0 and dec.bytes_discarded == 0
    got = np.concatenate([f.samples for f in frames])
    assert got.tobytes() == signals.generate(_lorenz(), n).tobytes()
    assert [f.seq for f in frames] == list(range(0, n, 250))
    assert [f.t0_us for f in frames] == [s * 1000 for s in range(0, n, 250)]  # 1 kHz: 1000 µs per sample


def test_pty_int16_frames_round_trip_within_one_lsb_and_real_time_pacing_runs():
    src = signals.BearingSource("femto", "healthy", seed=5)
    n = 25600 // 2  # half a second, paced in real time
    frames, report, dec = _stream_over_pty(StreamConfig(frame_samples=256, speed=1.0), src, n)
    scale = int16_scale(src.full_scale)
    ref = signals.generate(signals.BearingSource("femto", "healthy", seed=5), n)
    got = np.concatenate([f.samples for f in frames])
    assert got.shape == ref.shape == (n, 2)
    assert np.max(np.abs(got - ref)) <= scale * 0.5 + 1e-6
    assert sum(f.saturated for f in frames) == 0
    assert report.achieved_rate > 0 and report.configured_rate == 25600


def test_pty_gaps_crc_errors_and_garbage_equal_the_ledger():
    n = 400 * 128
    faults = FaultInjector({"drop": 0.05, "flip": 0.05, "garbage": 0.05}, seed=11, full_scale=256.0)
    cfg = StreamConfig(frame_samples=128, speed=0)
    frames, report, dec = _stream_over_pty(cfg, _lorenz(), n, faults)
    led = report.ledger
    assert len(led.dropped_seqs) > 5 and len(led.flipped_seqs) > 5 and led.garbage_chunks > 5
    assert dec.crc_errors == len(led.flipped_seqs)
    assert dec.bad_headers == 0
    assert dec.bytes_discarded == led.garbage_bytes + led.flipped_bytes
    assert dec.frames == led.frames_sent - len(led.flipped_seqs)
    lost = set(led.dropped_seqs) | set(led.flipped_seqs)
    assert [f.seq for f in frames] == [s for s in range(0, n, 128) if s not in lost]
    assert _gaps(frames, total=n) == led.dropped_samples + 128 * len(led.flipped_seqs)


def test_pty_saturation_nan_noise_and_jitter_are_as_injected():
    n = 100 * 200
    cfg = StreamConfig(frame_samples=200, speed=0)
    faults = FaultInjector({"saturate": 1e-3, "jitter": 50.0}, seed=3, full_scale=256.0)
    frames, report, _ = _stream_over_pty(cfg, _lorenz(), n, faults)
    led = report.ledger
    assert led.saturated_values > 10 and led.jittered_frames == 100
    assert sum(f.saturated for f in frames) == led.saturated_values
    assert any(f.t0_us != f.seq * 1000 for f in frames)
    assert all(abs(f.t0_us - f.seq * 1000) < 1000 for f in frames)

    faults = FaultInjector({"noise": 0.1}, seed=3, full_scale=256.0)
    frames, report, _ = _stream_over_pty(cfg, _lorenz(), n, faults)
    assert len(report.ledger.noise_bursts) > 3
    clean = signals.generate(_lorenz(), n)
    scale = int16_scale(256.0)
    noisy = [f.seq for f in frames if np.max(np.abs(f.samples - clean[f.seq : f.seq + 200])) > 2 * scale]
    assert noisy == report.ledger.noise_bursts

    faults = FaultInjector({"nan": 1e-3}, seed=4, full_scale=256.0)
    cfg = StreamConfig(sample_type="float32", frame_samples=200, speed=0)
    frames, report, _ = _stream_over_pty(cfg, _lorenz(), n, faults)
    assert report.ledger.nan_values > 10
    assert sum(int(np.isnan(f.samples).sum()) for f in frames) == report.ledger.nan_values


def test_pty_csv_lines_round_trip_and_bad_lines_equal_the_ledger():
    n = 5000
    faults = FaultInjector({"flip": 0.1, "garbage": 0.1}, seed=2, full_scale=256.0)
    cfg = StreamConfig(fmt="csv", frame_samples=50, speed=0)
    frames, report, dec = _stream_over_pty(cfg, _lorenz(), n, faults)
    led = report.ledger
    assert len(led.flipped_seqs) > 3 and led.garbage_chunks > 3
    assert dec.bad_lines == len(led.flipped_seqs) + led.garbage_chunks
    assert dec.lines == led.samples_sent - len(led.flipped_seqs)
    clean = signals.generate(_lorenz(), n)
    for f in frames:
        assert f.samples.tobytes() == clean[f.seq : f.seq + f.n_samples].tobytes()
    assert _gaps(frames, total=n) == len(led.flipped_seqs)


def test_pty_link_drop_and_reconnect_through_the_symlink(tmp_path):
    """The agent's view of a pulled USB adapter: EOF/EIO, then the same path works again."""
    path = tmp_path / "ttySIM"
    faults = FaultInjector({"disconnect": 0.05}, seed=1, full_scale=256.0)
    cfg = StreamConfig(frame_samples=100, speed=1.0, outage_s=0.3)
    n = 4000  # 2 s at 2 kHz
    frames, reopened = [], 0
    with link.PtyLink(path) as lk:
        run = _Run(Streamer(_lorenz(2000.0), lk, cfg, faults), n)
        while not run.done.is_set():
            try:
                port = serial.Serial(str(path), timeout=0.2)
            except serial.SerialException:
                run.done.wait(0.05)  # the symlink is being replaced; bounded by the streamer's end
                continue
            dec = FrameDecoder()  # a new connection starts a new stream
            try:
                while not run.done.is_set():
                    frames += dec.feed(port.read(max(1, port.in_waiting)))
            except (serial.SerialException, OSError):
                reopened += 1
            finally:
                port.close()
        report = run.join()
    led = report.ledger
    assert led.disconnects >= 1 and reopened >= 1
    assert frames and frames[-1].seq > frames[0].seq
    assert _gaps(frames, total=n) >= led.outage_samples > 0
    assert not path.exists()


def test_serial_url_link_writes_to_a_port():
    master, slave = os.openpty()
    try:
        dec = FrameDecoder()
        frames: list[Frame] = []
        with link.SerialUrlLink(os.ttyname(slave)) as lk:
            cfg = StreamConfig(sample_type="float32", frame_samples=100, speed=0)
            run = _Run(Streamer(_lorenz(), lk, cfg), 1000)
            assert drain_fd(master, lambda b: frames.extend(dec.feed(b)), lambda: len(frames) == 10)
            run.join()
        assert np.concatenate([f.samples for f in frames]).tobytes() == signals.generate(_lorenz(), 1000).tobytes()
    finally:
        os.close(master)
        os.close(slave)


# --------------------------------------------------------------------------- MQTT
class _Subscriber:
    """A real paho subscriber on ``vib/<device>/samples``: payloads land in a queue."""

    def __init__(self, host: str, port: int, device: str) -> None:
        self.payloads: queue.Queue[bytes] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{device}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.samples_topic(device), qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = lambda c, u, msg: self.payloads.put_nowait(msg.payload)
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK"

    def take(self, count: int, timeout: float = 15.0) -> list[bytes]:
        out, deadline = [], time.monotonic() + timeout
        while len(out) < count:
            try:
                out.append(self.payloads.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto):
    sub = _Subscriber(*mosquitto.address, "dev1")
    yield sub
    sub.close()


def _decode_all(payloads: list[bytes]) -> tuple[list[Frame], int]:
    frames, errors = [], 0
    for p in payloads:
        try:
            frames.append(decode_payload(p))
        except FrameError:
            errors += 1
    return frames, errors


@pytest.mark.parametrize(("fmt", "qos"), [("binary", 1), ("json", 1), ("binary", 0)])
def test_mqtt_frames_round_trip_bit_exact(mosquitto, subscriber, fmt, qos):
    n = 12000
    cfg = StreamConfig(fmt=fmt, sample_type="float32", frame_samples=400, speed=0 if qos else 1.0)
    src = _lorenz(12000.0)  # with QoS 0 pace at 30 messages/s: loopback never drops that
    with link.MqttLink(*mosquitto.address, "dev1", qos=qos) as lk:
        report = Streamer(src, lk, cfg).run(n)
    payloads = subscriber.take(report.ledger.frames_sent)
    frames, errors = _decode_all(payloads)
    assert errors == 0 and len(frames) == 30
    assert [f.seq for f in frames] == list(range(0, n, 400))
    assert np.concatenate([f.samples for f in frames]).tobytes() == signals.generate(_lorenz(), n).tobytes()


def test_mqtt_gaps_and_corrupt_payloads_equal_the_ledger(mosquitto, subscriber):
    n = 300 * 64
    faults = FaultInjector({"drop": 0.05, "flip": 0.05, "garbage": 0.05}, seed=5, full_scale=256.0)
    with link.MqttLink(*mosquitto.address, "dev1", qos=1) as lk:
        report = Streamer(_lorenz(), lk, StreamConfig(frame_samples=64, speed=0), faults).run(n)
    led = report.ledger
    payloads = subscriber.take(led.frames_sent + led.garbage_chunks)
    assert len(payloads) == led.frames_sent + led.garbage_chunks
    frames, errors = _decode_all(payloads)
    assert len(led.dropped_seqs) > 3 and len(led.flipped_seqs) > 3 and led.garbage_chunks > 3
    assert errors == len(led.flipped_seqs) + led.garbage_chunks
    assert _gaps(frames, total=n) == led.dropped_samples + 64 * len(led.flipped_seqs)


def test_mqtt_link_drop_and_reconnect(mosquitto, subscriber):
    """Messages in flight at the drop are resent after reconnecting (QoS 1 is at-least-once), so
    the subscriber may see duplicates; the unique frames show exactly the outage gap."""
    n = 200 * 50
    faults = FaultInjector({"disconnect": 0.02}, seed=2, full_scale=256.0)
    cfg = StreamConfig(fmt="binary", frame_samples=50, speed=0, outage_s=0.2)
    with link.MqttLink(*mosquitto.address, "dev1", qos=1) as lk:
        report = Streamer(_lorenz(), lk, cfg, faults).run(n)
    led = report.ledger
    unique: dict[int, Frame] = {}
    deadline = time.monotonic() + 15
    while len(unique) < led.frames_sent and time.monotonic() < deadline:
        for f in _decode_all(subscriber.take(1, timeout=1.0))[0]:
            unique.setdefault(f.seq, f)
    assert led.disconnects >= 1
    assert len(unique) == led.frames_sent
    frames = sorted(unique.values(), key=lambda f: f.seq)
    assert _gaps(frames, total=n) == led.outage_samples > 0


def test_mqtt_link_fails_clearly_without_a_broker():
    from firmware_sim.broker import free_port

    with pytest.raises(ConnectionError, match="not reachable"):
        link.MqttLink("127.0.0.1", free_port(), "dev1", connect_timeout=1.0)
