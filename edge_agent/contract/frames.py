"""Frame, the block of samples every wire format decodes to, and the sequence numbers that chain frames.

A frame holds ``samples``, float32 of shape (n_samples, n_channels), 1 <= n_samples <= ``MAX_SAMPLES`` (4096),
1 <= n_channels <= ``MAX_CHANNELS`` (16), with the sensor clock ``t0_us`` (microseconds) of its first sample.

Sequence numbers: in every format ``seq`` is the *sample index* of a frame's first sample, modulo 2**32
(``SEQ_MOD``). The next frame is expected at ``expected_next(seq, n_samples)``; ``seq_gap`` says how many
samples were lost in between (see its docstring for wrap-around and resync).

The formats: ``binary`` (serial links, MQTT binary payloads), ``csv_lines`` (humans, slow links),
``mqtt_payload`` (what an MQTT sample topic carries), ``json_mapping`` (a sensor's own JSON).
``firmware_sim`` encodes with these modules and the agent decodes with them; nothing else re-implements them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

MAX_SAMPLES = 4096
MAX_CHANNELS = 16
SEQ_MOD = 2**32


def expected_next(seq: int, n_samples: int) -> int:
    """Sequence number of the frame that follows a frame at ``seq`` of ``n_samples`` samples."""
    return (seq + n_samples) % SEQ_MOD


def seq_gap(expected: int, got: int) -> int:
    """Samples missing between the expected sequence number and the one received.

    Wrap-aware modulo 2**32: ``0`` means contiguous; a positive value ``k`` (below 2**31)
    means ``k`` samples were lost; a negative value means the stream went *backwards*
    (duplicate, reordering or a restarted device), i.e. the receiver must resync. A jump of
    2**31 or more forward is indistinguishable from going backwards and also reads negative.
    Receivers may treat implausibly large positive gaps as a resync too.
    """
    d = (got - expected) % SEQ_MOD
    return d if d < SEQ_MOD // 2 else d - SEQ_MOD


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded block of samples.

    Attributes:
        seq: sample index of ``samples[0]`` modulo 2**32.
        t0_us: sensor clock of ``samples[0]`` in microseconds.
        samples: float32 array of shape (n_samples, n_channels), owned by the frame.
        saturated: number of values in ``samples`` that were saturated int16 codes
            (always 0 for float32, CSV and JSON sources).
        crc: the binary frame's CRC-32 as it came over the wire, or None (see ``checksum``).
    """

    seq: int
    t0_us: int
    samples: np.ndarray
    saturated: int = 0
    crc: int | None = None

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def next_seq(self) -> int:
        """Sequence number the next contiguous frame will carry."""
        return expected_next(self.seq, self.n_samples)

    @property
    def checksum(self) -> int:
        """CRC-32 identifying the frame's content (recognises a redelivered frame): the wire CRC of a binary
        frame, else ``zlib.crc32`` over the samples' memory, read in place (no copy when C-contiguous)."""
        if self.crc is not None:
            return self.crc
        return zlib.crc32(np.ascontiguousarray(self.samples))



def as_samples(samples: np.ndarray) -> np.ndarray:
    """Validate and view ``samples`` as a float (n, C) array (1-D input becomes one channel)."""
    arr = np.asarray(samples)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"samples must have shape (n, channels), got {arr.shape}")
    n, c = arr.shape
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"a frame holds 1..{MAX_SAMPLES} samples, got {n}")
    if not 1 <= c <= MAX_CHANNELS:
        raise ValueError(f"a frame holds 1..{MAX_CHANNELS} channels, got {c}")
    return arr
