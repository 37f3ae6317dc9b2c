"""Physical severity: broadband vibration velocity RMS in mm/s and its ISO 10816-3 / 20816-3 zone, A to D.

The model's score says how unlike its training data a window is; this module says how hard the machine shakes,
in the unit and the frequency band that maintenance people and the vibration-severity standard use. The two are
shown side by side and never replace each other: a machine can be anomalous in zone A, and a rough machine the
model was trained on is normal in zone C.

From acceleration samples (``g`` or ``m/s2``; ``unknown`` units give no velocity, and say why) each channel's
velocity is integrated in the frequency domain, one FFT per window: the window's mean is removed (a sensor's
offset, gravity on its axis), it is Hann-windowed, and each bin's acceleration is divided by 2πf inside the band
only, ``band_low_hz`` (10 Hz, or 2 Hz for machines at 120-600 r/min) to 1000 Hz; below the band (drift, DC, where
integration's 1/f² would blow up) and above it nothing counts. By Parseval the velocity mean square is the sum of
the band's bins, corrected for the window's power (÷ mean w²)::

    v_rms² = 2 / (n² · mean(w²)) · Σ_{f_lo ≤ f_k ≤ f_hi} |A_k|² / (2π f_k)²

A sine of amplitude a at f inside the band reads a / (2πf) / √2; one within two bins of an edge is partly counted
(on 10 Hz or 1000 Hz exactly: about 90 % of it). No linear detrend: on a 0.1 s window the line it would remove
lands in the band's first bin, weighted by 1/f², and reads a pure 200 Hz tone 6 % high, while a real drift of
0.05 g/s moves the value by 0.2 % there (0.5 g/s on a 1 s window: under 0.01 %).

The band stops at 0.4 × the sample rate (80 % of Nyquist, where the sensors' anti-alias filters roll off): from
2500 Hz up the standard's band is complete; from 1000 Hz to 2500 Hz it is cut at 0.4 × the rate, ``band_complete``
is false and a note says the value and the zone are a lower bound (energy left out of a band can only lower an
RMS: zone C on a cut band is at least zone C), which is more use than nothing on a 2 kHz sensor; below 1000 Hz
(a band ending under 400 Hz) the rate is refused. A window shorter than 1 / ``band_low_hz`` (0.1 s) cannot
resolve the band's lower edge and is refused; one shorter than 4 / ``band_low_hz`` is measured with a note.

The zone compares the largest channel's velocity with the boundaries of the machine's group and foundation
(ISO 10816-3:2009, Annex A, Tables A.1 and A.2) or with custom boundaries; a value on a boundary belongs to the
lower zone. :class:`SeverityTracker` keeps one sensor's running RMS over its last ``average_s`` seconds of
windows, the value a hand-held meter would show. Overlapping windows (a hop shorter than the window) are measured
once per window length, each measured window standing for the signal since the last one: every sample counts
once, as on a meter, and a window of 8192 samples scored every 2048 costs a quarter of the FFTs (the velocity
shown lags the newest samples by at most one window).
"""

from __future__ import annotations

import collections
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from edge_agent.settings import setting

#: m/s² per g (standard gravity).
STANDARD_GRAVITY = 9.80665
#: Units of acceleration samples a policy may name; ``unknown``: no velocity is computed.
UNITS = ("g", "m/s2", "unknown")
#: Spellings of the two units read from a bundle's ``signal.units`` or a config (lower-cased, spaces removed).
UNIT_ALIASES = {"g": "g", "m/s2": "m/s2", "m/s^2": "m/s2", "m/s²": "m/s2", "m/s/s": "m/s2", "ms-2": "m/s2",
                "m*s^-2": "m/s2", "ms^-2": "m/s2", "mps2": "m/s2"}
#: The standard's band, Hz: its lower edge is 10 Hz (2 Hz for machines at 120-600 r/min), its upper 1000 Hz.
BAND_LOW_HZ = (10.0, 2.0)
BAND_HIGH_HZ = 1000.0
#: The band stops at this share of the sample rate (0.8 × Nyquist: above, the sensors' anti-alias filters roll off).
USABLE_SHARE = 0.4
#: Below this sample rate velocity is refused: the band would end under 400 Hz.
MIN_SAMPLE_RATE_HZ = 1000.0
#: ISO 10816-3:2009, Annex A, Table A.1 (group 1) and Table A.2 (group 2): zone boundaries A/B, B/C, C/D in mm/s
#: r.m.s. of the velocity on bearing housings, by machine group and foundation.
ZONE_TABLE = {
    (1, "rigid"): (2.3, 4.5, 7.1),
    (1, "flexible"): (3.5, 7.1, 11.0),
    (2, "rigid"): (1.4, 2.8, 4.5),
    (2, "flexible"): (2.3, 4.5, 7.1),
}
#: What a zone means for the machine (ISO 10816-3's zone descriptions, in our words).
ZONE_MEANING = {
    "A": "newly commissioned machines normally run here",
    "B": "acceptable for unrestricted long-term operation",
    "C": "not acceptable for long-term continuous operation: run a limited time, plan the repair",
    "D": "severe enough to damage the machine",
}


def normalize_units(text: object) -> str:
    """``"g"``, ``"m/s2"`` or ``"unknown"`` for a units string from a config or a bundle (``"m/s^2"``, ``"G"``, ...)."""
    if not isinstance(text, str):
        return "unknown"
    key = "".join(text.split()).lower()
    return UNIT_ALIASES.get(key, "unknown")


def units_of(manifest: dict) -> str:
    """The training data's units from a bundle manifest's ``signal.units``: ``"g"``, ``"m/s2"`` or ``"unknown"``."""
    signal = manifest.get("signal") if isinstance(manifest, dict) else None
    return normalize_units(signal.get("units") if isinstance(signal, dict) else None)


def resolve_units(policy: SeverityPolicy, manifest: dict) -> str:
    """The sensor's units: the policy's when set, else the bundle's ``signal.units``."""
    return policy.units if policy.units is not None else units_of(manifest)


@dataclass(frozen=True)
class SeverityPolicy:
    """``[severity]`` of the config: the sensor's units, the machine's ISO 10816-3 class and the averaging."""

    units: str | None = setting(None, choices=UNITS, doc="units of the acceleration samples: g or m/s2 (unknown: no "
                                "velocity); unset: the bundle's signal.units")
    machine_group: int = setting(2, choices=(1, 2), doc="ISO 10816-3 machine group: 1 large machines (300 kW to "
                                 "50 MW), 2 medium machines (15 kW to 300 kW)")
    foundation: str = setting("rigid", choices=("rigid", "flexible"), doc="rigid: the machine's lowest natural "
                              "frequency on its support is above its running speed (by 25 % or more); else flexible")
    band_low_hz: float = setting(10.0, choices=BAND_LOW_HZ, doc="lower edge of the band: 10 Hz for machines above "
                                 "600 r/min, 2 Hz for 120 to 600 r/min (the upper edge is 1000 Hz)")
    zone_ab_mm_s: float | None = setting(None, lo=0.01, hi=1000.0, doc="custom A/B zone boundary in mm/s RMS "
                                         "(with zone_bc_mm_s and zone_cd_mm_s) instead of the ISO table's")
    zone_bc_mm_s: float | None = setting(None, lo=0.01, hi=1000.0, doc="custom B/C zone boundary in mm/s RMS")
    zone_cd_mm_s: float | None = setting(None, lo=0.01, hi=1000.0, doc="custom C/D zone boundary in mm/s RMS")
    average_s: float = setting(10.0, lo=0.0, hi=3600.0, doc="the velocity shown is the RMS over this many seconds "
                               "of recent signal (0: each window alone)")

    def __post_init__(self) -> None:
        if self.units is not None and self.units not in UNITS:
            raise ValueError(f"units: must be one of {', '.join(UNITS)} (or unset: the bundle's), got {self.units!r}")
        if isinstance(self.machine_group, bool) or self.machine_group not in (1, 2):
            raise ValueError(f"machine_group: must be 1 (300 kW to 50 MW) or 2 (15 kW to 300 kW), "
                             f"got {self.machine_group!r}")
        if self.foundation not in ("rigid", "flexible"):
            raise ValueError(f"foundation: must be 'rigid' or 'flexible', got {self.foundation!r}")
        if self.band_low_hz not in BAND_LOW_HZ:
            raise ValueError(f"band_low_hz: must be 10 (machines above 600 r/min) or 2 (120 to 600 r/min), "
                             f"got {self.band_low_hz!r}")
        if not (isinstance(self.average_s, int | float) and math.isfinite(self.average_s) and self.average_s >= 0):
            raise ValueError(f"average_s: must be a finite number of seconds >= 0, got {self.average_s!r}")
        custom = {"zone_ab_mm_s": self.zone_ab_mm_s, "zone_bc_mm_s": self.zone_bc_mm_s,
                  "zone_cd_mm_s": self.zone_cd_mm_s}
        given = [k for k, v in custom.items() if v is not None]
        if given and len(given) < 3:
            missing = [k for k in custom if k not in given]
            raise ValueError(f"{missing[0]}: custom zone boundaries need all three of zone_ab_mm_s, zone_bc_mm_s "
                             f"and zone_cd_mm_s (only {', '.join(given)} given)")
        for key, value in custom.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{key}: must be a positive number of mm/s, got {value!r}")
        if given:
            ab, bc, cd = self.zone_ab_mm_s, self.zone_bc_mm_s, self.zone_cd_mm_s
            if not bc > ab:
                raise ValueError(f"zone_bc_mm_s: must be above zone_ab_mm_s ({ab:g} mm/s), got {bc:g}")
            if not cd > bc:
                raise ValueError(f"zone_cd_mm_s: must be above zone_bc_mm_s ({bc:g} mm/s), got {cd:g}")

    def boundaries(self) -> tuple[float, float, float]:
        """The A/B, B/C and C/D boundaries in mm/s RMS: the custom ones, else the ISO table's for group/foundation."""
        if self.zone_ab_mm_s is not None:
            return float(self.zone_ab_mm_s), float(self.zone_bc_mm_s), float(self.zone_cd_mm_s)
        return ZONE_TABLE[(self.machine_group, self.foundation)]

    def table(self) -> str:
        """Where the boundaries come from, in words (``"ISO 10816-3 group 2, rigid foundation"`` or ``"custom"``)."""
        if self.zone_ab_mm_s is not None:
            return "custom"
        return f"ISO 10816-3 group {self.machine_group}, {self.foundation} foundation"


def zone(velocity_mm_s: float, policy: SeverityPolicy) -> str:
    """``"A"``..``"D"`` for a velocity RMS in mm/s; a value on a boundary belongs to the lower zone.

    ValueError for a velocity that is negative or not a finite number."""
    v = float(velocity_mm_s)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"velocity_mm_s: must be a finite number >= 0, got {velocity_mm_s!r}")
    ab, bc, cd = policy.boundaries()
    return "A" if v <= ab else "B" if v <= bc else "C" if v <= cd else "D"


@dataclass(frozen=True)
class Band:
    """The band a velocity is measured in, for one sample rate and window length."""

    low_hz: float
    high_hz: float
    complete: bool  # the standard's whole band (low_hz .. 1000 Hz)
    resolution_hz: float  # the FFT's bin spacing: sample rate / window length
    notes: tuple[str, ...] = ()


def band_for(sample_rate: float, n_samples: int, low_hz: float = 10.0) -> Band:
    """The band for windows of ``n_samples`` at ``sample_rate`` Hz; ValueError (saying what to change) when the
    rate is under ``MIN_SAMPLE_RATE_HZ`` or the window too short to resolve ``low_hz``."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float) or not math.isfinite(sample_rate) \
            or sample_rate <= 0:
        raise ValueError(f"sample rate: must be a positive number of Hz, got {sample_rate!r}")
    if sample_rate < MIN_SAMPLE_RATE_HZ:
        raise ValueError(f"sample rate {sample_rate:g} Hz is too low for vibration velocity: the band would end at "
                         f"{USABLE_SHARE * sample_rate:g} Hz, the standard's is {low_hz:g}-{BAND_HIGH_HZ:g} Hz; "
                         f"sample at {BAND_HIGH_HZ / USABLE_SHARE:g} Hz or more (at least {MIN_SAMPLE_RATE_HZ:g})")
    resolution = sample_rate / n_samples
    if resolution > low_hz:
        raise ValueError(f"a window of {n_samples} samples ({n_samples / sample_rate:.3g} s) cannot resolve the "
                         f"band's lower edge {low_hz:g} Hz (bins {resolution:.3g} Hz apart): give windows of "
                         f"{math.ceil(sample_rate / low_hz)} samples ({1 / low_hz:g} s) or more")
    high = min(BAND_HIGH_HZ, USABLE_SHARE * sample_rate)
    notes = []
    if high < BAND_HIGH_HZ:
        notes.append(f"band cut at {high:g} Hz (sample rate {sample_rate:g} Hz; the standard's band ends at "
                     f"{BAND_HIGH_HZ:g} Hz): velocity and zone are a lower bound")
    if resolution > low_hz / 4:
        notes.append(f"window {n_samples / sample_rate:.3g} s: bins {resolution:.3g} Hz apart, vibration near the "
                     f"{low_hz:g} Hz edge is measured roughly; windows of {4 / low_hz:g} s or more resolve it")
    return Band(low_hz, high, high >= BAND_HIGH_HZ, resolution, tuple(notes))


@functools.lru_cache(maxsize=16)
def _plan(n: int, sample_rate: float, low_hz: float, high_hz: float):
    """What one window length needs, computed once: the Hann window (n,), the band's first and last + 1 bins and
    their weights (K,) = 2 / (n² mean w²) / (2π f)² (velocity mean square in (m/s)² per (m/s²)²)."""
    w = np.hanning(n) if n > 1 else np.ones(1)
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    k0 = int(np.searchsorted(f, low_hz - 1e-9 * low_hz))
    k1 = int(np.searchsorted(f, high_hz + 1e-9 * high_hz))
    weights = 2.0 / (n * n * float(np.mean(w * w))) / (2.0 * np.pi * f[k0:k1]) ** 2
    return w, k0, k1, weights


def _mean_square(samples: np.ndarray, sample_rate: float, band: Band) -> np.ndarray:
    """Velocity mean square in (m/s)² per (m/s²)² of input, (C,) float64; NaN for a channel with a non-finite
    sample (its sum is not finite) or a value too large to square."""
    x = np.ascontiguousarray(np.asarray(samples).T, dtype=np.float64)  # (C, n): one copy, each channel contiguous
    n = x.shape[1]
    w, k0, k1, weights = _plan(n, float(sample_rate), band.low_hz, band.high_hz)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = x.sum(axis=1) / n
        ok = np.isfinite(mean)
        if not ok.all():
            x[~ok] = 0.0
            mean[~ok] = 0.0
        x -= mean[:, None]
        x *= w
        spectrum = np.fft.rfft(x, axis=1)[:, k0:k1]
        ms = (spectrum.real ** 2 + spectrum.imag ** 2) @ weights
    ms[~(ok & np.isfinite(ms))] = np.nan
    return ms


def _checked(samples: object) -> np.ndarray:
    a = np.asarray(samples)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"samples: must be numbers shaped (n samples, C channels) with n >= 2, got "
                         f"{a.dtype} {a.shape}")
    return a


def _scale(units: str) -> float:
    """mm/s of velocity per (m/s per input unit): g → 9.80665 m/s², then m/s → mm/s."""
    u = normalize_units(units)
    if u == "unknown":
        raise ValueError(f"units {units!r} are not acceleration units this agent knows (g or m/s2): no velocity")
    return 1000.0 * (STANDARD_GRAVITY if u == "g" else 1.0)


def velocity_rms(samples: np.ndarray, sample_rate: float, units: str, low_hz: float = 10.0) -> np.ndarray:
    """Velocity RMS in mm/s per channel, (C,) float64, of acceleration ``samples`` (n, C) (or (n,)) in ``units``
    (``"g"`` or ``"m/s2"``), in the band ``low_hz``..1000 Hz (cut at 0.4 × ``sample_rate``: :func:`band_for`).

    A channel with a non-finite sample reads NaN. ValueError for unknown units, a rate or window too short."""
    scale = _scale(units)
    a = _checked(samples)
    band = band_for(sample_rate, a.shape[0], low_hz)
    return np.sqrt(_mean_square(a, sample_rate, band)) * scale


@dataclass(frozen=True)
class Severity:
    """One sensor's physical severity: velocity RMS per channel, the largest, its zone, the band and why not.

    ``velocity_mm_s`` (C,) holds None for a channel without a value (non-finite samples); all fields but ``units``,
    ``table`` and ``notes`` are None when no velocity could be computed (the notes say why)."""

    velocity_mm_s: tuple[float | None, ...] | None
    max_mm_s: float | None
    channel: int | None  # the channel of the largest velocity
    zone: str | None  # "A".."D"
    band_hz: tuple[float, float] | None
    band_complete: bool | None
    averaged_s: float | None  # seconds of signal the RMS covers
    units: str
    table: str  # where the boundaries come from
    boundaries_mm_s: tuple[float, float, float]
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """JSON-ready (no NaN): for the status document, alerts and the history."""
        return {
            "velocity_mm_s": None if self.velocity_mm_s is None else list(self.velocity_mm_s),
            "max_mm_s": self.max_mm_s,
            "channel": self.channel,
            "zone": self.zone,
            "zone_meaning": ZONE_MEANING.get(self.zone) if self.zone else None,
            "band_hz": None if self.band_hz is None else list(self.band_hz),
            "band_complete": self.band_complete,
            "averaged_s": self.averaged_s,
            "units": self.units,
            "table": self.table,
            "boundaries_mm_s": dict(zip(("A/B", "B/C", "C/D"), self.boundaries_mm_s, strict=True)),
            "notes": list(self.notes),
        }


@dataclass
class SeverityCounts:
    """What a tracker counted: windows given, windows without a velocity, channel-windows with non-finite
    samples (left out of the average), overlapping windows not measured again."""

    windows: int = 0
    refused: int = 0
    nonfinite: int = 0
    overlapping: int = 0


@dataclass
class SeverityTracker:
    """One sensor's velocity RMS over its last ``policy.average_s`` seconds of windows; ``update`` once per window
    (scoring thread). ``units`` as given by the config or the bundle (anything but g / m/s2 gives no velocity)."""

    policy: SeverityPolicy
    sample_rate: float | None
    units: str
    counts: SeverityCounts = field(default_factory=SeverityCounts, init=False)
    last: Severity | None = field(default=None, init=False)
    _history: collections.deque = field(default_factory=collections.deque, init=False, repr=False)
    _pending_s: float = field(default=0.0, init=False, repr=False)  # signal since the last measured window, s

    def reset(self, sample_rate: float | None = None, units: str | None = None) -> None:
        """Start the average over (a new bundle or sensor: its rate and units, when given)."""
        if sample_rate is not None:
            self.sample_rate = sample_rate
        if units is not None:
            self.units = units
        self._history.clear()
        self._pending_s = 0.0

    def update(self, samples: np.ndarray, new_s: float | None = None) -> Severity:
        """Measure a window of acceleration ``samples`` (n, C) and return the severity over the recent windows.

        ``new_s``: seconds of signal this window adds to the average (its hop, for overlapping windows); default
        the window's length. A window that adds less than its length since the last measured one is not measured
        again (the last severity is returned). Never raises on bad input: the result's notes say what is wrong, and it is counted."""
        self.counts.windows += 1
        units = normalize_units(self.units)
        try:
            if units == "unknown":
                raise ValueError(f"units {self.units!r} unknown: no velocity; set the sensor's [severity] units to "
                                 "\"g\" or \"m/s2\" (what its accelerometer reports)")
            if self.sample_rate is None:
                raise ValueError("sample rate unknown (neither the bundle nor [source] sample_rate gives one): "
                                 "no velocity")
            a = _checked(samples)
            band = band_for(self.sample_rate, a.shape[0], self.policy.band_low_hz)
        except ValueError as exc:
            self.counts.refused += 1
            self.last = self._empty(str(exc))
            return self.last
        duration = a.shape[0] / self.sample_rate
        self._pending_s += duration if new_s is None or not (new_s > 0 and math.isfinite(new_s)) else float(new_s)
        if self._history and self.last is not None and self.last.max_mm_s is not None \
                and self._pending_s < duration * (1.0 - 1e-9):
            self.counts.overlapping += 1  # most of its samples were measured in the last window: not again
            return self.last
        step, self._pending_s = self._pending_s, 0.0
        ms = _mean_square(a, self.sample_rate, band) * _scale(units) ** 2
        bad = int(np.isnan(ms).sum())
        self.counts.nonfinite += bad
        if self._history and self._history[-1][1].shape != ms.shape:
            self._history.clear()  # the channel count changed: a new sensor layout
        self._history.append((step, ms))
        span = sum(s for s, _ in self._history)
        while len(self._history) > 1 and span - self._history[0][0] >= self.policy.average_s:
            span -= self._history.popleft()[0]
        steps = np.array([s for s, _ in self._history])
        values = np.stack([m for _, m in self._history])  # (K, C)
        finite = np.isfinite(values)
        weight = (steps[:, None] * finite).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rms = np.sqrt(np.where(finite, values, 0.0).T @ steps / weight)
        notes = list(band.notes)
        if bad:
            chans = ", ".join(str(c) for c in np.flatnonzero(np.isnan(ms)))
            notes.append(f"channel {chans}: samples not finite (NaN or infinite) in this window: left out")
        per_channel = tuple(float(v) if weight[c] > 0 else None for c, v in enumerate(rms))
        known = [(v, c) for c, v in enumerate(per_channel) if v is not None]
        if not known:
            self.counts.refused += 1
            self.last = self._empty("; ".join(notes) or "no channel with a finite velocity")
            return self.last
        top, channel = max(known)
        self.last = Severity(per_channel, top, channel, zone(top, self.policy), (band.low_hz, band.high_hz),
                             band.complete, float(span), units, self.policy.table(), self.policy.boundaries(),
                             tuple(notes))
        return self.last

    def _empty(self, why: str) -> Severity:
        return Severity(None, None, None, None, None, None, None, normalize_units(self.units), self.policy.table(),
                        self.policy.boundaries(), (why,))
