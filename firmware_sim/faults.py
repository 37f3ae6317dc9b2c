"""Fault injection for the simulated sensor node, with a ledger of everything injected.

Each fault is switched on by a rate in ``FAULTS`` and draws from its own seeded random stream,
so switching one fault on or off does not change what the others do. The ``Ledger`` records
what was injected (counts and sequence numbers) so a test can compare it with what a decoder
saw:

* ``drop``    -> sequence gaps of exactly ``dropped_samples`` samples; the frames never leave.
* ``flip``    -> one byte after the header changed (binary: CRC error; CSV/JSON: unparsable).
* ``garbage`` -> 1..64 junk bytes before a frame; binary junk never contains 0xA5 or 0x5A,
  so it cannot fake a sync marker; CSV junk is one line of letters.
* ``nan`` / ``saturate`` -> values replaced by NaN / pushed beyond full scale (int16: saturated
  codes; float32: exactly +-full scale); NaN in int16 frames encodes as -32768, the no-reading code.
* ``noise``   -> a burst of white noise (a quarter of full scale RMS) over part of a frame.
* ``disconnect`` -> the link drops; frames produced during the outage are lost (counted in
  ``outage_samples``) and the link reconnects after the outage.
* ``jitter``  -> Gaussian error on each frame's ``t0_us`` (this rate is a standard deviation
  in microseconds, not a probability).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from edge_agent.contract.binary import HEADER_SIZE

log = logging.getLogger(__name__)

#: fault name -> meaning of its rate
FAULTS = {
    "noise": "probability per frame of a noise burst",
    "drop": "probability per frame of dropping it (a sequence gap)",
    "flip": "probability per frame of corrupting one byte (CRC error / bad line)",
    "garbage": "probability per frame of junk bytes before it",
    "nan": "probability per value of NaN",
    "saturate": "probability per value of a reading beyond full scale",
    "disconnect": "probability per frame of a link drop and reconnect",
    "jitter": "standard deviation of the timestamp error in microseconds",
}
_BINARY_JUNK = np.array([b for b in range(256) if b not in (0xA5, 0x5A)], dtype=np.uint8)
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


def parse_faults(specs: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Parse ``NAME=RATE`` strings; raises ValueError naming the bad item."""
    out: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or name not in FAULTS:
            raise ValueError(f"bad fault {spec!r}: expected NAME=RATE with NAME in {sorted(FAULTS)}")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"bad fault {spec!r}: rate {value!r} is not a number") from None
        if not (rate >= 0 and (name == "jitter" or rate <= 1)):
            raise ValueError(f"bad fault {spec!r}: a rate is a probability in [0, 1] (jitter: µs >= 0)")
        out[name] = rate
    return out


@dataclass
class Ledger:
    """What the simulator did and injected. Sequence numbers are sample indices mod 2**32."""

    frames_sent: int = 0
    samples_sent: int = 0
    bytes_sent: int = 0
    dropped_seqs: list[int] = field(default_factory=list)
    dropped_samples: int = 0
    flipped_seqs: list[int] = field(default_factory=list)
    flipped_bytes: int = 0  # total size of the frames (or lines) that were corrupted
    garbage_chunks: int = 0
    garbage_bytes: int = 0
    nan_values: int = 0
    saturated_values: int = 0
    noise_bursts: list[int] = field(default_factory=list)
    disconnects: int = 0
    outage_samples: int = 0
    jittered_frames: int = 0

    def summary(self) -> dict[str, int]:
        """Counts only (no sequence lists), for printing."""
        return {
            "frames_sent": self.frames_sent,
            "samples_sent": self.samples_sent,
            "bytes_sent": self.bytes_sent,
            "dropped_frames": len(self.dropped_seqs),
            "dropped_samples": self.dropped_samples,
            "flipped_frames": len(self.flipped_seqs),
            "garbage_chunks": self.garbage_chunks,
            "garbage_bytes": self.garbage_bytes,
            "nan_values": self.nan_values,
            "saturated_values": self.saturated_values,
            "noise_bursts": len(self.noise_bursts),
            "disconnects": self.disconnects,
            "outage_samples": self.outage_samples,
            "jittered_frames": self.jittered_frames,
        }


class FaultInjector:
    """Decides, per frame, which faults happen, applies them and records them in ``ledger``.

    Args:
        rates: fault name -> rate (see ``FAULTS``); missing faults are off.
        seed: seeds one random stream per fault.
        full_scale: the sensor's full scale (saturation level, noise burst size).
    """

    def __init__(self, rates: dict[str, float] | None = None, *, seed: int = 0, full_scale: float = 1.0) -> None:
        self.rates = dict(rates or {})
        unknown = set(self.rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULTS)}")
        self.full_scale = full_scale
        seqs = np.random.SeedSequence(seed).spawn(len(FAULTS))
        self._rng = {name: np.random.default_rng(s) for name, s in zip(FAULTS, seqs, strict=True)}
        self.ledger = Ledger()

    def _hit(self, name: str) -> bool:
        rate = self.rates.get(name, 0.0)
        return rate > 0 and bool(self._rng[name].random() < rate)

    def disconnect(self) -> bool:
        if self._hit("disconnect"):
            self.ledger.disconnects += 1
            return True
        return False

    def drop(self, seq: int, n: int) -> bool:
        if self._hit("drop"):
            self.ledger.dropped_seqs.append(seq)
            self.ledger.dropped_samples += n
            return True
        return False

    def samples(self, seq: int, x: np.ndarray) -> np.ndarray:
        """Apply noise bursts, NaN and saturation; returns ``x`` itself or a modified copy (n, C)."""
        out = x
        if self._hit("noise"):
            rng = self._rng["noise"]
            out = out.copy()
            n = len(out)
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, n)) + 1
            out[a:b] += (rng.standard_normal((b - a, out.shape[1])) * (0.25 * self.full_scale)).astype(out.dtype)
            self.ledger.noise_bursts.append(seq)
        for name in ("saturate", "nan"):
            rate = self.rates.get(name, 0.0)
            if rate <= 0:
                continue
            rng = self._rng[name]
            mask = rng.random(out.shape) < rate
            k = int(mask.sum())
            if not k:
                continue
            if out is x:
                out = x.copy()
            if name == "nan":
                out[mask] = np.nan
                self.ledger.nan_values += k
            else:
                signs = np.where(rng.random(k) < 0.5, -1.0, 1.0)
                out[mask] = signs * self.full_scale * 1.5
                self.ledger.saturated_values += k
        return out

    def jitter(self, t0_us: int) -> int:
        sd = self.rates.get("jitter", 0.0)
        if sd <= 0:
            return t0_us
        self.ledger.jittered_frames += 1
        return max(0, t0_us + int(round(self._rng["jitter"].normal(0.0, sd))))

    def garbage(self, fmt: str) -> bytes:
        """Junk to send before the next frame, or b"" (fmt: binary | csv | json)."""
        if not self._hit("garbage"):
            return b""
        rng = self._rng["garbage"]
        n = int(rng.integers(1, 65))
        junk = rng.choice(_LETTERS, n).tobytes() + b"\n" if fmt == "csv" else rng.choice(_BINARY_JUNK, n).tobytes()
        self.ledger.garbage_chunks += 1
        self.ledger.garbage_bytes += len(junk)
        return junk

    def flip(self, seq: int, data: bytes, fmt: str) -> bytes:
        """Maybe corrupt one byte of an encoded frame so that decoding it must fail.

        binary: one byte after the header (payload or CRC) XOR a non-zero value, a certain
        CRC error; csv: one character of one line (not its newline) becomes ``x``; json: one
        character of the ``samples`` array becomes ``x``; a sensor's own JSON (json-*): one
        character that is not ``x`` becomes ``x`` (a number, a key or the syntax breaks).
        """
        if not self._hit("flip"):
            return data
        rng = self._rng["flip"]
        buf = bytearray(data)
        if fmt == "binary":
            i = int(rng.integers(HEADER_SIZE, len(buf)))
            buf[i] ^= int(rng.integers(1, 256))
            self.ledger.flipped_bytes += len(buf)
        elif fmt == "csv":
            ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A)
            line = int(rng.integers(0, len(ends)))
            start = int(ends[line - 1]) + 1 if line else 0
            buf[int(rng.integers(start, ends[line]))] = ord("x")
            self.ledger.flipped_bytes += int(ends[line]) + 1 - start
        elif fmt == "json":  # inside the samples array, where any "x" breaks the JSON
            start = data.index(b'"samples":') + len(b'"samples":')
            buf[int(rng.integers(start, data.index(b"]]", start) + 2))] = ord("x")
            self.ledger.flipped_bytes += len(buf)
        else:
            candidates = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) != ord("x"))
            buf[int(rng.choice(candidates))] = ord("x")
            self.ledger.flipped_bytes += len(buf)
        self.ledger.flipped_seqs.append(seq)
        return bytes(buf)
