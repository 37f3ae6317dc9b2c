"""The CSV line format (humans, slow links): one sample per line, ``seq,t_us,v0,v1,...`` in decimal.

``seq`` is the sample's index modulo 2**32 (see ``frames``), ``t_us`` the sensor clock in microseconds;
values are written with 9 significant digits, so float32 round-trips exactly (``nan`` allowed). Lines
starting with ``#`` and empty lines are ignored; ``\\r\\n`` line ends are accepted. ``encode_csv_lines``
writes, ``CsvLineDecoder`` reads a byte stream in any chunking into frames of consecutive lines.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from edge_agent.contract.frames import MAX_CHANNELS, MAX_SAMPLES, SEQ_MOD, Frame

_CSV_FLOAT = "%.9g"


def encode_csv_lines(seq: int, samples: np.ndarray, t0_us: int, sample_rate: float) -> bytes:
    """Encode samples as CSV lines ``seq,t_us,v0,...``, one line per sample.

    Args:
        seq: sample index of the first sample; line ``i`` carries ``(seq + i) % 2**32``.
        samples: array-like (n, C) (or (n,)); values written with 9 significant digits, so
            float32 values round-trip exactly.
        t0_us: sensor clock of the first sample in microseconds.
        sample_rate: Hz; line ``i`` carries ``t0_us + round(i * 1e6 / sample_rate)``.
    """
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"samples must have shape (n, channels), got {arr.shape}")
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
    n, c = arr.shape
    idx = np.arange(n, dtype=np.int64)
    seqs = ((seq + idx) % SEQ_MOD).tolist()
    ts = (t0_us + np.rint(idx * (1e6 / sample_rate)).astype(np.int64)).tolist()
    line = "%d,%d" + ("," + _CSV_FLOAT) * c + "\n"
    rows = arr.astype(np.float64).tolist()
    return "".join([line % (s, t, *r) for s, t, r in zip(seqs, ts, rows, strict=True)]).encode("ascii")


class CsvLineDecoder:
    """Incremental decoder of the CSV line format, with the same ``feed`` interface as FrameDecoder.

    Consecutive valid lines whose ``seq`` increase by one are batched into one Frame (its
    ``t0_us`` is the first line's ``t_us``); a sequence gap or a malformed line ends a batch.
    The partial last line is kept for the next feed. The channel count is ``n_channels`` when
    given, otherwise it is fixed by the first good line. Never raises.

    Counters: ``frames``, ``lines`` (valid sample lines), ``bad_lines`` (malformed, wrong
    channel count, seq/t_us not a non-negative integer in range, or a line longer than
    ``max_line`` bytes), ``bytes_discarded`` (bytes of bad lines).
    """

    def __init__(self, n_channels: int | None = None, *, max_line: int = 4096) -> None:
        if n_channels is not None and not 1 <= n_channels <= MAX_CHANNELS:
            raise ValueError(f"n_channels must be 1..{MAX_CHANNELS}, got {n_channels}")
        self.n_channels = n_channels
        self.max_line = max_line
        self._partial = b""
        self.frames = 0
        self.lines = 0
        self.bad_lines = 0
        self.bytes_discarded = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return the frames made of the complete lines they finished."""
        chunk = self._partial + bytes(data)
        cut = chunk.rfind(b"\n") + 1
        self._partial = chunk[cut:]
        if len(self._partial) > self.max_line:  # no newline in sight: drop it as one bad line
            self.bad_lines += 1
            self.bytes_discarded += len(self._partial)
            self._partial = b""
        if cut == 0:
            return []
        rows = self._parse(chunk[:cut])
        if rows is None:
            return []
        seqs, ts, values = rows
        return self._batch(seqs, ts, values)

    def _bad(self, line: bytes) -> None:
        self.bad_lines += 1
        self.bytes_discarded += len(line) + 1

    def _parse(self, text: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Parse complete lines into (seq int64 (m,), t_us int64 (m,), values float32 (m, C)).

        A batch break is encoded as seq = -1 (a bad line sits between two good ones).
        Clean text takes numpy's C parser; anything else is parsed line by line.
        """
        fast = self._parse_clean(text)
        if fast is not None:
            return fast
        parsed: list[list[float]] = []
        for raw in text.split(b"\n"):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            if len(line) > self.max_line:
                self._bad(raw)
                parsed.append([])
                continue
            try:
                fields = [float(f) for f in line.split(b",")]
            except ValueError:
                self._bad(raw)
                parsed.append([])
                continue
            c = len(fields) - 2
            if self.n_channels is None and 1 <= c <= MAX_CHANNELS and self._int_ok(fields):
                self.n_channels = c
            if c != self.n_channels or not self._int_ok(fields):
                self._bad(raw)
                parsed.append([])
                continue
            parsed.append(fields)
        if self.n_channels is None:
            return None
        width = self.n_channels + 2
        m = len(parsed)
        table = np.full((m, width), -1.0)
        ok = np.fromiter((len(p) == width for p in parsed), dtype=bool, count=m)
        if ok.any():
            table[ok] = np.array([p for p in parsed if p], dtype=np.float64).reshape(-1, width)
        return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2:].astype(np.float32)

    def _parse_clean(self, text: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Whole-chunk parse; None unless every line is good (then the caller parses per line)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "empty input" when a chunk holds only comments
                table = np.loadtxt(io.BytesIO(text), delimiter=",", comments="#", ndmin=2, dtype=np.float64)
        except ValueError:
            return None
        width = table.shape[1] - 2
        if table.shape[0] == 0 or not 1 <= width <= MAX_CHANNELS:
            return None
        if self.n_channels is not None and width != self.n_channels:
            return None
        s, t = table[:, 0], table[:, 1]
        if not (
            np.all((s >= 0) & (s < SEQ_MOD) & (s == np.floor(s)))
            and np.all((t >= 0) & (t < 2**53) & (t == np.floor(t)))
        ):
            return None
        self.n_channels = width
        return s.astype(np.int64), t.astype(np.int64), table[:, 2:].astype(np.float32)

    @staticmethod
    def _int_ok(fields: list[float]) -> bool:
        s, t = fields[0], fields[1]
        return 0 <= s < SEQ_MOD and s == int(s) and 0 <= t < 2**53 and t == int(t)

    def _batch(self, seqs: np.ndarray, ts: np.ndarray, values: np.ndarray) -> list[Frame]:
        good = seqs >= 0
        self.lines += int(good.sum())
        if len(seqs) == 0:
            return []
        # a new batch starts at a good line whose predecessor is bad or not seq-1 (mod 2**32),
        # or after MAX_SAMPLES lines
        prev = np.roll(seqs, 1)
        cont = good & np.roll(good, 1) & (seqs == (prev + 1) % SEQ_MOD)
        cont[0] = False
        out: list[Frame] = []
        breaks = np.flatnonzero(~cont)  # a run starting at s ends at the next break after s
        ends = np.append(breaks, len(seqs))
        for s in np.flatnonzero(good & ~cont):
            run_end = int(ends[np.searchsorted(breaks, s, side="right")])
            for a in range(s, run_end, MAX_SAMPLES):
                b = min(a + MAX_SAMPLES, run_end)
                out.append(Frame(int(seqs[a]), int(ts[a]), values[a:b].copy()))
        self.frames += len(out)
        return out
