"""Signal sources of the simulated sensor node: Lorenz attractor, bearing vibration, replay.

Every source is a stateful stream with the same small interface::

    source.sample_rate   # Hz
    source.n_channels    # C
    source.full_scale    # physical units at int16 full scale (used for the int16 wire scale)
    source.read(n)       # -> float32 (m, C), m == n except at the end of a finite replay

``read`` continues where the previous call stopped, and the data do not depend on how the
stream is cut into reads: streaming in real time and ``generate`` give identical arrays.
Synthetic sources are seeded (``numpy.random.default_rng(seed)``) and deterministic.

Degradation: a run of ``life_s`` seconds goes healthy -> incipient -> severe -> failure.
``severity(u)`` maps the life fraction ``u = t / life_s`` to ``s`` in [0, 1], piecewise linear
through ``SEVERITY_PROFILE``; ``s`` stays 1 after the end of life. State ``healthy`` is s = 0,
``broken`` is s = 1, ``degrading`` follows the profile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_agent.contract import preprocess
from edge_agent.contract import recordings as tdata  # the project's loaders: numpy only, never TensorFlow

log = logging.getLogger(__name__)

STATES = ("healthy", "broken", "degrading")

#: (life fraction, severity) knots: healthy until 60 % of life, incipient to 85 % (s -> 0.2),
#: severe to 97 % (s -> 0.6), then failure (s -> 1 at end of life).
SEVERITY_PROFILE = ((0.0, 0.0), (0.60, 0.0), (0.85, 0.2), (0.97, 0.6), (1.0, 1.0))
_STAGES = ((0.0, "healthy"), (1e-9, "incipient"), (0.2, "severe"), (0.6, "failure"))


def severity(u: np.ndarray | float) -> np.ndarray:
    """Severity in [0, 1] at life fraction ``u`` (array or scalar; u > 1 gives 1)."""
    xs, ys = zip(*SEVERITY_PROFILE, strict=True)
    return np.interp(u, xs, ys, right=1.0)


def stage(s: float) -> str:
    """Name of the degradation stage for severity ``s``."""
    name = "healthy"
    for lo, label in _STAGES:
        if s >= lo:
            name = label
    return name


class Source(Protocol):
    sample_rate: float
    n_channels: int
    full_scale: float

    def read(self, n: int) -> np.ndarray: ...


def _check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")


class _Severity:
    """Severity per sample index for a state and a life in samples."""

    def __init__(self, state: str, life_samples: float) -> None:
        _check_state(state)
        if state == "degrading" and not life_samples > 0:
            raise ValueError("a degrading state needs a positive life")
        self.state = state
        self.life_samples = life_samples

    def at(self, idx: np.ndarray) -> np.ndarray:
        """Severity (float64, same shape as ``idx``) at absolute sample indices."""
        if self.state == "healthy":
            return np.zeros(np.shape(idx))
        if self.state == "broken":
            return np.ones(np.shape(idx))
        return severity(np.asarray(idx, dtype=np.float64) / self.life_samples)


# --------------------------------------------------------------------------- Lorenz
LORENZ_HEALTHY = (10.0, 28.0, 8.0 / 3.0)
LORENZ_BROKEN = (30.0, 128.0, 28.0 / 3.0)
LORENZ_STEP = 0.008
LORENZ_START = (2.0, 3.0, 4.0)
LORENZ_RATE = 100.0  # Hz: the tutorial has no physical rate; one Euler step per sample


class LorenzSource:
    """Lorenz attractor as three accelerometer axes, as the IBM Watson IoT tutorial simulator.

    Explicit sequential Euler with step h = 0.008 from (2, 3, 4): ``x += h*a*(y-x)``, then
    ``y += h*(x*(b-z)-y)`` with the new x, then ``z += h*(x*y-c*z)`` with the new x and y.
    One step per sample; the first sample is the state after the first step. Parameters
    (a, b, c): healthy (10, 28, 8/3), broken (30, 128, 28/3); degrading interpolates them
    with ``severity``. The state is float64; ``read`` returns float32 (n, 3) columns x, y, z.
    """

    n_channels = 3
    full_scale = 256.0

    def __init__(self, state: str = "healthy", *, sample_rate: float = LORENZ_RATE, life_s: float = 0.0) -> None:
        self.sample_rate = float(sample_rate)
        self._sev = _Severity(state, life_s * self.sample_rate)
        self._xyz = LORENZ_START
        self._i = 0

    def read(self, n: int) -> np.ndarray:
        out = np.empty((n, 3), dtype=np.float32)
        if n == 0:
            return out
        h = LORENZ_STEP
        x, y, z = self._xyz
        if self._sev.state in ("healthy", "broken"):
            a, b, c = LORENZ_HEALTHY if self._sev.state == "healthy" else LORENZ_BROKEN
            rows = []
            for _ in range(n):
                x = x + h * a * (y - x)
                y = y + h * (x * (b - z) - y)
                z = z + h * (x * y - c * z)
                rows.append((x, y, z))
        else:
            s = self._sev.at(np.arange(self._i, self._i + n))
            lo, hi = np.array(LORENZ_HEALTHY), np.array(LORENZ_BROKEN)
            params = (lo + s[:, None] * (hi - lo)).tolist()
            rows = []
            for a, b, c in params:
                x = x + h * a * (y - x)
                y = y + h * (x * (b - z) - y)
                z = z + h * (x * y - c * z)
                rows.append((x, y, z))
        out[:] = rows
        self._xyz = (x, y, z)
        self._i += n
        return out


# --------------------------------------------------------------------------- bearing
@dataclass(frozen=True)
class BearingGeometry:
    """Rolling bearing geometry; defect frequencies follow from it and the shaft speed."""

    n_balls: int
    ball_d: float
    pitch_d: float
    contact_deg: float = 0.0

    def defect_hz(self, rpm: float) -> dict[str, float]:
        """Shaft, cage (ftf), outer race (bpfo), inner race (bpfi) and ball spin (bsf) frequencies."""
        fr = rpm / 60.0
        r = self.ball_d / self.pitch_d * math.cos(math.radians(self.contact_deg))
        return {
            "shaft": fr,
            "ftf": fr / 2 * (1 - r),
            "bpfo": self.n_balls / 2 * fr * (1 - r),
            "bpfi": self.n_balls / 2 * fr * (1 + r),
            "bsf": self.pitch_d / (2 * self.ball_d) * fr * (1 - r * r),
        }


@dataclass(frozen=True)
class BearingPreset:
    """Parameters of the bearing vibration model (accelerations in g).

    Per channel: shaft harmonics + white noise + impacts that ring a structural resonance
    (a decaying sinusoid per impact). Healthy bearings see sparse random "roughness" impacts
    (Poisson, ``roughness_rate`` per second); a defect adds an impact train at its defect
    frequency (intervals jittered by ``slip``), amplitude-modulated (inner race by the shaft
    rotation, ball by the cage), of peak ``defect_g * s``. Noise, harmonics and roughness grow
    by ``(1 + gain * s)``. Channels in ``fault_channels`` carry the defect; the others get
    ``coupling`` times it (sympathetic vibration).

    Two machine faults that are not the bearing's (``fault``): ``looseness`` (a loose foot or bearing
    seat: one knock of peak ``defect_g * s`` per shaft turn, at a fixed shaft angle (no slip), ringing the
    same resonance) and
    ``imbalance`` (no knocks: the once-per-turn vibration grows by ``imbalance_g * s``).
    """

    name: str
    sample_rate: float
    n_channels: int
    rpm: float
    geometry: BearingGeometry
    resonance_hz: float
    decay_s: float
    noise_g: float
    harmonics_g: tuple[float, ...]
    roughness_rate: float
    roughness_g: float
    defect_g: float
    noise_gain: float
    harmonic_gain: float
    roughness_gain: float
    full_scale: float
    fault: str = "outer"
    fault_channels: tuple[int, ...] = (0,)
    coupling: float = 0.05
    slip: float = 0.01
    channel_gain: tuple[float, ...] = field(default=())
    imbalance_g: float = 1.0

    @property
    def frequencies(self) -> dict[str, float]:
        return self.geometry.defect_hz(self.rpm)


#: IMS rig: Rexnord ZA-2115 (16 rollers, 0.331 in, pitch 2.815 in, 15.17 deg) at 2000 rpm:
#: BPFO 236.4, BPFI 296.9, BSF 139.9, FTF 14.8 Hz; 20 kHz, 4 channels; outer race fault on ch 0.
IMS = BearingPreset(
    name="ims",
    sample_rate=20000.0,
    n_channels=4,
    rpm=2000.0,
    geometry=BearingGeometry(16, 0.331, 2.815, 15.17),
    resonance_hz=4000.0,
    decay_s=0.0006,
    noise_g=0.069,
    harmonics_g=(0.02, 0.012, 0.006),
    roughness_rate=300.0,
    roughness_g=0.12,
    defect_g=2.2,
    noise_gain=1.2,
    harmonic_gain=1.0,
    roughness_gain=1.0,
    full_scale=10.0,
    channel_gain=(1.0, 1.2, 1.3, 0.75),
)

#: FEMTO PRONOSTIA, condition 1: 1800 rpm, 25.6 kHz, 2 channels (horizontal, vertical);
#: bearing of 13 balls 3.5 mm on a 25.6 mm pitch: BPFO 168.3, BPFI 221.7, BSF 107.7, FTF 12.9 Hz.
#: The real sensors saturate near 50 g.
FEMTO = BearingPreset(
    name="femto",
    sample_rate=25600.0,
    n_channels=2,
    rpm=1800.0,
    geometry=BearingGeometry(13, 3.5, 25.6, 0.0),
    resonance_hz=3000.0,
    decay_s=0.0008,
    noise_g=0.42,
    harmonics_g=(0.15, 0.08, 0.04),
    roughness_rate=20.0,
    roughness_g=0.4,
    defect_g=18.0,
    noise_gain=3.0,
    harmonic_gain=2.0,
    roughness_gain=2.0,
    full_scale=50.0,
    fault="outer",
    fault_channels=(0, 1),
    channel_gain=(1.0, 1.2),
)

PRESETS = {"ims": IMS, "femto": FEMTO}


def parse_overrides(items: Sequence[str]) -> dict:
    """``["noise_g=0.074", "harmonics_g=0.03,0.02"]`` -> BearingPreset field overrides (``--override``).

    Numbers, comma-separated tuples and the fault name; the preset's name and geometry are fixed.
    Raises ValueError naming the item.
    """
    known = {f.name: getattr(IMS, f.name) for f in fields(BearingPreset) if f.name not in ("name", "geometry")}
    out: dict = {}
    for item in items:
        key, sep, value = (s.strip() for s in item.partition("="))
        if key not in known or not sep or not value:
            raise ValueError(f"{item!r} is not NAME=VALUE with NAME one of {', '.join(sorted(known))}")
        like = known[key]
        try:
            if isinstance(like, tuple):
                out[key] = tuple(type(like[0])(v) for v in value.split(","))
            else:
                out[key] = value if isinstance(like, str) else type(like)(value)
        except ValueError:
            raise ValueError(f"{item!r}: {value!r} is not a {type(like).__name__} value") from None
    return out
#: fault -> the rate of its impact train (a key of ``BearingGeometry.defect_hz``)
_DEFECT_KEY = {"outer": "bpfo", "inner": "bpfi", "ball": "bsf", "looseness": "shaft", "imbalance": "shaft"}


class _ImpactTrain:
    """Impact times and amplitudes, generated in order and independent of chunking."""

    def __init__(self, rng: np.random.Generator, first_t: float) -> None:
        self.rng = rng
        self.next_t = first_t

    def until(self, idx_end: int, fs: float, interval) -> list[float]:
        """Impact times (s) whose sample index ``floor(t * fs + 0.5)`` is below ``idx_end``."""
        times = []
        while math.floor(self.next_t * fs + 0.5) < idx_end:
            times.append(self.next_t)
            self.next_t += interval(self.rng)
        return times


class BearingSource:
    """Synthetic rolling-bearing vibration (see ``BearingPreset``), float32 (n, C) in g.

    Args:
        preset: "ims", "femto" or a BearingPreset.
        state: healthy | broken | degrading (see ``severity``).
        life_s: seconds from new to failure for ``degrading``.
        seed: seeds every random stream (one per channel and purpose).
        sample_rate: overrides the preset's rate (defect frequencies stay physical).
        **overrides: any BearingPreset field (e.g. ``fault="inner"``, ``n_channels=2``).
    """

    def __init__(
        self,
        preset: str | BearingPreset = "ims",
        state: str = "healthy",
        *,
        life_s: float = 0.0,
        seed: int = 0,
        sample_rate: float | None = None,
        **overrides,
    ) -> None:
        p = PRESETS[preset] if isinstance(preset, str) else preset
        if sample_rate is not None:
            overrides["sample_rate"] = float(sample_rate)
        self.p = p = replace(p, **overrides) if overrides else p
        if p.fault not in _DEFECT_KEY:
            raise ValueError(f"fault must be one of {sorted(_DEFECT_KEY)}, got {p.fault!r}")
        self.sample_rate = p.sample_rate
        self.n_channels = p.n_channels
        self.full_scale = p.full_scale
        self._sev = _Severity(state, life_s * p.sample_rate)
        self._i = 0
        fs = p.sample_rate
        m = np.arange(max(8, math.ceil(6 * p.decay_s * fs)))
        self._kernel = np.exp(-m / (p.decay_s * fs)) * np.sin(2 * np.pi * p.resonance_hz * m / fs)
        self._kernel /= np.abs(self._kernel).max()
        self._tail = np.zeros((len(self._kernel) - 1, p.n_channels))
        root = np.random.SeedSequence(seed)
        streams = root.spawn(5 * p.n_channels)
        self._noise = [np.random.default_rng(s) for s in streams[0 : p.n_channels]]
        phase_rng = np.random.default_rng(root.spawn(1)[0])
        self._phases = phase_rng.uniform(0, 2 * np.pi, (p.n_channels, len(p.harmonics_g)))
        freqs = p.frequencies
        self._fd = freqs[_DEFECT_KEY[p.fault]]
        self._fr = freqs["shaft"]
        self._fmod = {"inner": freqs["shaft"], "ball": freqs["ftf"]}.get(p.fault, 0.0)
        self._rough = [_ImpactTrain(np.random.default_rng(s), 0.0) for s in streams[p.n_channels : 2 * p.n_channels]]
        self._defect = [
            _ImpactTrain(np.random.default_rng(s), 0.0) for s in streams[2 * p.n_channels : 3 * p.n_channels]
        ]
        self._rough_amp = [np.random.default_rng(s) for s in streams[3 * p.n_channels : 4 * p.n_channels]]
        self._defect_amp = [np.random.default_rng(s) for s in streams[4 * p.n_channels : 5 * p.n_channels]]
        gains = p.channel_gain or (1.0,) * p.n_channels
        self._gain = np.resize(np.asarray(gains, dtype=np.float64), p.n_channels)

    def read(self, n: int) -> np.ndarray:
        p = self.p
        fs = p.sample_rate
        idx = np.arange(self._i, self._i + n)
        t = idx / fs
        s = self._sev.at(idx)
        i_end = self._i + n
        out = np.empty((n, p.n_channels), dtype=np.float32)
        k = len(self._kernel)
        for c in range(p.n_channels):
            g = self._gain[c]
            harm = np.zeros(n)
            for j, a in enumerate(p.harmonics_g):
                harm += a * np.sin(2 * np.pi * (j + 1) * self._fr * t + self._phases[c, j])
            x = harm * (1 + p.harmonic_gain * s)
            if p.fault == "imbalance":
                x += p.imbalance_g * s * np.sin(2 * np.pi * self._fr * t + self._phases[c, 0])
            x += self._noise[c].standard_normal(n) * (p.noise_g * (1 + p.noise_gain * s))
            excite = np.zeros(n)
            rough_times = self._rough[c].until(i_end, fs, lambda r: r.exponential(1.0 / p.roughness_rate))
            self._add_impacts(excite, rough_times, p.roughness_g, self._rough_amp[c], rough=True)
            coupling = 0.0 if p.fault == "imbalance" else 1.0 if c in p.fault_channels else p.coupling
            fd = self._fd
            slip = 0.0 if p.fault == "looseness" else p.slip  # a knock at a fixed shaft angle does not slip
            defect_times = self._defect[c].until(i_end, fs, lambda r, fd=fd, slip=slip: (1.0 + slip * r.standard_normal()) / fd)
            self._add_impacts(excite, defect_times, p.defect_g * coupling, self._defect_amp[c], rough=False)
            ring = np.convolve(excite, self._kernel)
            ring[: k - 1] += self._tail[:, c]
            x += ring[:n]
            self._tail[:, c] = ring[n:]
            out[:, c] = g * x
        self._i += n
        return out

    def _add_impacts(self, excite: np.ndarray, times: list[float], peak: float, rng, *, rough: bool) -> None:
        """Add impacts at absolute ``times`` (s) into ``excite`` (n,) of this chunk."""
        if not times:
            return
        tt = np.asarray(times)
        pos = np.floor(tt * self.p.sample_rate + 0.5).astype(np.int64) - self._i
        # amplitudes are drawn for every impact, so the random streams do not depend on the state
        jitter = rng.standard_normal(len(tt))
        if not rough:
            jitter = 1.0 + 0.1 * jitter
        s = self._sev.at(tt * self.p.sample_rate)
        if rough:
            amp = peak * jitter * (1 + self.p.roughness_gain * s)
        else:
            mod = 1.0 if self._fmod == 0 else 0.5 * (1 + np.cos(2 * np.pi * self._fmod * tt))
            amp = peak * s * jitter * mod
        np.add.at(excite, pos, amp)


# --------------------------------------------------------------------------- replay
#: Format names ``ReplaySource`` accepts (those of ``edge_agent.contract.recordings.load``).
REPLAY_FORMATS = ("auto", "ims", "ims-avg", "femto", "snapshots", "nab", "csv", "npy")


def _nice_ceiling(x: float) -> float:
    """Smallest 1, 2 or 5 times a power of ten that is >= ``x`` (1.0 for x <= 0)."""
    if not x > 0:
        return 1.0
    e = math.floor(math.log10(x))
    for m in (1.0, 2.0, 5.0, 10.0):
        v = m * 10.0**e
        if v >= x:
            return v
    return 10.0 ** (e + 1)


class ReplaySource:
    """Replays a recording loaded by ``edge_agent.contract.recordings.load`` (the project's one loader).

    Any format the loader reads (``REPLAY_FORMATS``: an IMS snapshot folder of ``.gz`` files, a
    FEMTO ``acc_NNNNN.csv`` folder, a snapshot ``.npz``, a NAB or generic CSV, a ``.npy``) is
    streamed segment after segment in the recording's order; with ``loop`` it starts again
    at the first segment. ``read(n)`` continues where the last call stopped and returns
    float32 (m, C), m == n except at the end of the data without ``loop`` (then fewer rows,
    finally (0, C)); the stream does not depend on how it is cut into reads.

    Args:
        path: file or folder.
        format: one of ``REPLAY_FORMATS`` (``auto`` detects it).
        sample_rate: Hz; overrides the recording's own. Needed for recordings without one
            (NAB, ims-avg, csv, npy: their rows carry times or have no rate).
        loop: start again at the end.
        channels: names or 0-based indices of the channels to keep, in that order.
        full_scale: physical units at int16 full scale; default: the data's peak rounded up to
            1, 2 or 5 times a power of ten (so replay never clips on the int16 wire).

    Attributes:
        channels: channel names from the recording; ``units``, ``format``: the recording's.

    The whole recording is loaded at construction (``edge_agent.contract.recordings.load`` is eager), so a
    very large folder costs its size in memory (float32).

    Raises:
        edge_agent.contract.recordings.DataFormatError: the data are malformed (``path:line:column: message``)
            or their format cannot be detected.
        ValueError: no sample rate, an empty recording, or an unknown format name.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        format: str = "auto",
        sample_rate: float | None = None,
        loop: bool = False,
        channels: Sequence[str | int] | None = None,
        full_scale: float | None = None,
    ) -> None:
        if format not in REPLAY_FORMATS:
            raise ValueError(f"unknown replay format {format!r}; choose one of {', '.join(REPLAY_FORMATS)}")
        rec = tdata.load(path, format=format)
        if channels is not None:
            try:
                rec = rec.select_channels(list(channels))
            except KeyError as exc:
                raise ValueError(f"{path}: {exc.args[0]}") from None
        rate = sample_rate if sample_rate is not None else rec.sample_rate
        if rate is None or not rate > 0:
            raise ValueError(
                f"{path}: the {rec.format} recording has no sample rate (its rows carry their own times "
                "or none); give one with --rate"
            )
        self._segments = [seg.data for seg in rec.segments if seg.n_rows]  # read-only (n_i, C) float32
        if not self._segments:
            raise ValueError(f"{path}: the {rec.format} recording has no rows")
        self.recording = rec
        self.sample_rate = float(rate)
        self.channels = rec.channels
        self.n_channels = rec.n_channels
        self.units = rec.units
        self.format = rec.format
        self.loop = loop
        peak = max(float(np.abs(d).max()) for d in self._segments)
        self.full_scale = float(full_scale) if full_scale is not None else _nice_ceiling(peak)
        self._seg = 0  # index of the current segment; len(self._segments) once exhausted
        self._pos = 0  # next row in it
        log.info(
            "replaying %s (%s): %d segments, %d rows x %d channels %s at %g Hz",
            path, rec.format, len(self._segments), rec.n_rows, self.n_channels, list(self.channels), self.sample_rate,
        )

    def read(self, n: int) -> np.ndarray:
        out = np.empty((n, self.n_channels), dtype=np.float32)
        filled = 0
        segs = self._segments
        while filled < n and self._seg < len(segs):
            cur = segs[self._seg]
            take = min(n - filled, len(cur) - self._pos)
            out[filled : filled + take] = cur[self._pos : self._pos + take]
            filled += take
            self._pos += take
            if self._pos == len(cur):
                self._pos = 0
                self._seg += 1
                if self._seg == len(segs) and self.loop:
                    log.debug("replay: looping to the first segment")
                    self._seg = 0
        return out[:filled]


# --------------------------------------------------------------------------- helpers
def default_rate(signal: str, preset: str = "ims") -> float:
    """Sample rate a signal runs at when none is given (Hz)."""
    return LORENZ_RATE if signal == "lorenz" else PRESETS[preset].sample_rate


def make_source(
    signal: str,
    *,
    state: str = "healthy",
    preset: str = "ims",
    life_s: float = 0.0,
    seed: int = 0,
    sample_rate: float | None = None,
    data: str | Path | None = None,
    loop: bool = False,
    data_format: str = "auto",
    overrides: dict | None = None,
) -> Source:
    """Build a source by name: "lorenz", "bearing" or "replay" (which needs ``data``; its rate
    comes from the recording unless ``sample_rate`` is given, see ``ReplaySource``). ``overrides``:
    BearingPreset fields (``parse_overrides``), bearing only."""
    if overrides and signal != "bearing":
        raise ValueError(f"preset overrides are for the bearing signal, not {signal!r}")
    if signal == "lorenz":
        return LorenzSource(state, sample_rate=sample_rate or LORENZ_RATE, life_s=life_s)
    if signal == "bearing":
        return BearingSource(preset, state, life_s=life_s, seed=seed, sample_rate=sample_rate, **(overrides or {}))
    if signal == "replay":
        if data is None:
            raise ValueError("replay needs a data path")
        return ReplaySource(data, format=data_format, sample_rate=sample_rate, loop=loop)
    raise ValueError(f"unknown signal {signal!r}: lorenz, bearing or replay")


def generate(source: Source, n: int, *, chunk: int = 65536) -> np.ndarray:
    """Read ``n`` samples (fewer if a finite replay ends) into one float32 (n, C) array."""
    out = np.empty((n, source.n_channels), dtype=np.float32)
    filled = 0
    while filled < n:
        block = source.read(min(chunk, n - filled))
        if len(block) == 0:
            break
        out[filled : filled + len(block)] = block
        filled += len(block)
    return out[:filled]


def snapshot_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RMS and excess kurtosis per channel of one (n, C) snapshot, n >= 2: two float32 (C,) arrays.

    Computed by ``edge_agent.contract.preprocess.steps`` with one block of n samples and the features
    ``rms`` (mean not removed) and ``kurtosis`` (excess, mean removed; 0 for a constant channel),
    so the simulator is judged with the same numbers the agent computes.
    """
    x = np.asarray(x)
    n, c = x.shape
    spec = preprocess.PreprocessSpec(
        mode="features", channels=tuple(f"ch{j}" for j in range(c)), window=1, block=n, features=("rms", "kurtosis")
    )
    feats = preprocess.steps(x, spec).reshape(c, 2)  # (1, C * 2) channel-major -> (C, [rms, kurtosis])
    return feats[:, 0].copy(), feats[:, 1].copy()
