"""Bearing fault diagnosis by envelope analysis: which of BPFO, BPFI, BSF, FTF stands out in a raw window.

A local defect on a rolling bearing (a spall on a race or a ball) is struck once per pass of the rolling
elements; each strike rings the structure at its resonances. The strikes are too weak to see in the plain
spectrum, but band-passing the window around a resonance, taking its envelope and the spectrum of the
envelope shows a line at the rate of the strikes: the defect frequency of the part that is damaged, with
harmonics and, where the load on the defect is modulated, sidebands (inner race: the shaft rate; rolling
element: the cage rate). This module computes that squared-envelope spectrum (SES) with numpy alone and
judges each defect's lines against the window's own local spectral floor and against the healthy baseline::

    geometry = BearingGeometry(shaft_rpm=1800, rolling_elements=13, ball_diameter=3.5, pitch_diameter=25.6)
    defect_frequencies(geometry)   # {"bpfo": 168.3, "bpfi": 221.7, "bsf": 107.7, "ftf": 12.9} Hz
    baseline = EnvelopeBaseline.learn(healthy_windows, sample_rate, geometry)   # [(n, C) float32, ...]
    report = diagnose(window, sample_rate, geometry, baseline)                  # (n, C) float32
    report = diagnose(windows, sample_rate, geometry, baseline)                 # (K, n, C): K windows averaged
    report.verdict   # "likely outer race" | "likely inner race" | "likely rolling element" | "likely cage"
                     # | "no bearing defect pattern";  report.as_dict() for a sink

The defect frequencies (shaft frequency f_r, n rolling elements of diameter d on pitch diameter D, contact
angle phi; the outer race fixed)::

    FTF  = f_r / 2 * (1 - d/D cos phi)              cage (fundamental train)
    BPFO = n f_r / 2 * (1 - d/D cos phi)            ball pass, outer race
    BPFI = n f_r / 2 * (1 + d/D cos phi)            ball pass, inner race
    BSF  = D f_r / (2 d) * (1 - (d/D cos phi)^2)    ball spin

How the window is judged (each number argued and measured in docs/maintenance/bearing-diagnosis.md):

* Speed: the shaft's 1x line in the window's plain spectrum, within ``tolerance`` of the configured speed, else
  within ``speed_search`` (5 %), refined by its 2x .. 5x lines (``_measure_speed``); off the configured speed by
  more than ``tolerance``, every line is placed at the measured speed (the report's ``shaft_hz`` and notes), and the
  mask on the shaft's k-th harmonic widens by k x ``SPEED_ERROR`` (how well a measured speed is placed).
  The candidate bands stay the configured speed's, so a baseline fits any measured speed.
* Band: candidate bands ``BAND_FACTOR`` x the highest line wide (half overlapping, from ``BAND_FLOOR_FACTOR`` x
  it up to ``BAND_TOP`` x Nyquist); per channel the one whose complex envelope is most impulsive (spectral
  kurtosis), or with ``band_rule="evidence"`` the one where a defect's lines are most significant (the
  threshold then pays for the search).
* Line: its computed frequency +- ``geometry.tolerance`` (slip, speed error), at least ``GUARD_BINS`` bins; the
  largest SES bin there must be a local maximum and not on a shaft harmonic (looseness puts lines on all of
  them). Lines of two defects that overlap, or near 0 Hz, are not judged.
* Prominence: the peak over the median of the SES around the line (lines and shaft harmonics left out). Noise-
  only SES bins are exponential, so the chance that noise alone puts the largest of m bins R times over the
  median of k others has a closed form (``_log_line_p``); a line stands out below ``ALPHA_LINE``.
* Defect: the p-values of its lines (harmonics, and sidebands: BPFI +- shaft, BSF +- FTF) combined by Fisher's
  method; present below ``ALPHA_DEFECT`` (per defect, channel and band searched) and, with a baseline, when its
  lines over their floor are ``BASELINE_DB`` above the largest they were in any healthy window (a line the
  machine always had, even now and then, is no finding). The verdict is the present defect with the strongest evidence; a cage pattern beside a
  rolling-element one is that defect's modulation.
* Averaging: K windows of one fault that do not overlap (an alert's) are judged on the mean of their SES (Welch):
  a noise bin is then Gamma(K, 1/K) instead of exponential, its variance K times less, so lines about sqrt(K)
  weaker reach the same p-value; ``_log_line_p`` uses that law, and the baseline the largest healthy average of K.

Refused with a ValueError that names the problem: windows that are not (n, C) numbers, hold NaN/inf or differ in
shape, a
sample rate too low for the band the lines need (``required_sample_rate``), a window too short to tell the
defect frequencies apart (``min_window_samples``), a baseline of another rate, length, geometry or width.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.settings import setting

#: defect key -> the part it points at, as the verdict names it
PARTS = {"bpfo": "outer race", "bpfi": "inner race", "bsf": "rolling element", "ftf": "cage"}
DEFECTS = tuple(PARTS)
NO_PATTERN = "no bearing defect pattern"

HARMONICS = 3  # lines at 1x, 2x, 3x each defect frequency
SIDEBAND_HARMONICS = 2  # sidebands around 1x and 2x (BPFI +- shaft, BSF +- FTF)
GUARD_BINS = 2  # a line's search interval is at least +- this many bins (the Hann window's main lobe)
SHAFT_BINS = 1  # a peak within this many bins of a shaft harmonic is the shaft's, not a bearing line
LOW_BINS = 3  # the SES's first bins hold the envelope's mean (Hann leakage): no line is judged below
HANN_ENBW = 1.5  # the Hann window's equivalent noise bandwidth, bins
ALPHA_LINE = 1e-3  # a line stands out when noise alone would put a peak this high in its interval this rarely
ALPHA_DEFECT = 1e-4  # a defect's lines together (Fisher): noise alone, per defect, channel and band searched
BASELINE_DB = 3.0  # ... and its lines (over their floor) above the largest they were in a healthy window
LINE_BASELINE_DB = 3.0  # a line, for the report, stands out this far over its healthy mean (the verdict is per defect)
MIN_LINES = 2  # shaft-rate lines that stand out before the summary mentions them
MIN_FLOOR_BINS = 8  # a line is judged against a floor of at least this many SES bins
QUIET_BAND = 1e-10  # a channel whose envelope band holds less of its energy than this is not analysed
BAND_FACTOR = 2.5  # the envelope band is this many times the highest line wide ...
BAND_FLOOR_FACTOR = 2.0  # ... and starts at least this many times the highest line up
BAND_TOP = 0.9  # ... and ends below this fraction of the Nyquist frequency (the sensor's anti-alias filter)
FLOOR_SPAN = 0.25  # the local floor is taken within +- this fraction of the line's frequency ...
FLOOR_MIN_BINS = 30  # ... and at least this many bins either side
AVERAGE_WINDOWS = 5  # the baseline learns averages of up to this many windows (an alert's windows averaged)
AVERAGE_DRAWS = 3  # ... each separate healthy window closing, for each K, the consecutive average and this many
AVERAGE_POOL = 32  # ... with K-1 drawn at random from up to this many earlier separate windows (kept)
SPEED_QUANTUM = 0.001  # a measured speed factor is rounded to this (plans are cached per factor)
SPEED_HARMONICS = 5  # the shaft's 2x .. this x lines in the raw spectrum refine the measured speed
SPEED_ERROR = 0.003  # ... to within about this fraction (measured on the simulator at noise x2: +-0.3 %)
MAINS_HZ = (50.0, 60.0)  # supply frequencies: their lines are not taken for the shaft's off the configured speed
NULL_GRID = 400  # points of the numerical law of the floor's median (averaged spectra), ...
NULL_TRIM = 60.0  # ... over the range where its density is within e^this of its peak


@dataclass(frozen=True)
class BearingGeometry:
    """A bearing and its shaft speed: the geometry or the four defect frequencies (``[sensors.bearing]``).

    Give the shaft speed once (``shaft_hz`` or ``shaft_rpm``), and either the geometry (``rolling_elements``,
    ``ball_diameter``, ``pitch_diameter`` in one length unit, ``contact_angle_deg``) or all four defect
    frequencies from the bearing maker's table (``bpfo_hz``, ``bpfi_hz``, ``bsf_hz``, ``ftf_hz`` at that speed).
    """

    shaft_hz: float | None = setting(None, lo=0.1, hi=1000.0, doc="shaft speed, Hz (or give shaft_rpm)")
    shaft_rpm: float | None = setting(None, lo=6.0, hi=60_000.0, doc="shaft speed, rpm (or give shaft_hz)")
    rolling_elements: int | None = setting(None, lo=3, hi=200, doc="number of balls or rollers in one row")
    ball_diameter: float | None = setting(None, lo=0.0, hi=10_000.0,
                                          doc="ball or roller diameter, in the unit of pitch_diameter")
    pitch_diameter: float | None = setting(None, lo=0.0, hi=10_000.0,
                                           doc="pitch diameter (of the circle through the balls' centres)")
    contact_angle_deg: float = setting(0.0, lo=0.0, hi=45.0, doc="contact angle, degrees (0 for a deep-groove "
                                       "ball bearing under radial load)")
    bpfo_hz: float | None = setting(None, lo=0.0, hi=100_000.0, doc="ball pass frequency, outer race, Hz "
                                    "(instead of the geometry)")
    bpfi_hz: float | None = setting(None, lo=0.0, hi=100_000.0, doc="ball pass frequency, inner race, Hz")
    bsf_hz: float | None = setting(None, lo=0.0, hi=100_000.0, doc="ball spin frequency, Hz")
    ftf_hz: float | None = setting(None, lo=0.0, hi=100_000.0, doc="fundamental train (cage) frequency, Hz")
    tolerance: float = setting(0.01, lo=0.001, hi=0.05, doc="how far a line may lie from its computed frequency, "
                               "as a fraction of it (rolling-element slip, speed error)")
    speed_search: float = setting(0.05, lo=0.0, hi=0.2, doc="measure the running speed from the shaft's 1x line "
                                  "within this fraction of the configured speed (an induction motor runs 1-5 % "
                                  "below its synchronous speed, loaded below its rated one); 0: always use the "
                                  "configured speed")

    def __post_init__(self) -> None:
        def bad(key: str, value: object, why: str) -> ValueError:
            return ValueError(f"bearing geometry: {key} = {value!r}: {why}")

        s = self.speed_search
        if isinstance(s, bool) or not (isinstance(s, (int, float)) and math.isfinite(s) and 0.0 <= s <= 0.2):
            raise bad("speed_search", s, "must be a fraction in [0, 0.2] (0: use the configured speed)")
        speeds = {k: v for k, v in (("shaft_hz", self.shaft_hz), ("shaft_rpm", self.shaft_rpm)) if v is not None}
        if len(speeds) != 1:
            raise ValueError("bearing geometry: give the shaft speed once, as shaft_hz or shaft_rpm"
                             + (f" (both given: {speeds})" if speeds else " (neither given)"))
        (key, speed), = speeds.items()
        if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
            raise bad(key, speed, "the shaft speed must be a number > 0")
        geo = {"rolling_elements": self.rolling_elements, "ball_diameter": self.ball_diameter,
               "pitch_diameter": self.pitch_diameter}
        freqs = {"bpfo_hz": self.bpfo_hz, "bpfi_hz": self.bpfi_hz, "bsf_hz": self.bsf_hz, "ftf_hz": self.ftf_hz}
        has_geo = [k for k, v in geo.items() if v is not None]
        has_freqs = [k for k, v in freqs.items() if v is not None]
        if has_geo and has_freqs:
            raise ValueError(f"bearing geometry: give either the geometry ({', '.join(has_geo)}) or the defect "
                             f"frequencies ({', '.join(has_freqs)}), not both")
        if has_freqs:
            if len(has_freqs) != 4:
                missing = [k for k in freqs if k not in has_freqs]
                raise ValueError(f"bearing geometry: the defect frequencies need all four; missing {', '.join(missing)}")
            for k, v in freqs.items():
                if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                    raise bad(k, v, "a defect frequency must be a number > 0 Hz")
            fr = self.shaft_frequency
            if not self.ftf_hz < fr:
                raise bad("ftf_hz", self.ftf_hz, f"the cage turns slower than the shaft ({fr:g} Hz): FTF must be "
                          "below the shaft frequency (is the speed right?)")
            if not self.bpfo_hz < self.bpfi_hz:
                raise bad("bpfo_hz", self.bpfo_hz, f"BPFO must be below BPFI ({self.bpfi_hz:g} Hz): the elements "
                          "pass a point of the outer race less often than one of the inner race")
            return
        if len(has_geo) != 3:
            missing = [k for k in geo if k not in has_geo]
            raise ValueError("bearing geometry: give the geometry (rolling_elements, ball_diameter, pitch_diameter"
                             "[, contact_angle_deg]) or the four defect frequencies (bpfo_hz, bpfi_hz, bsf_hz, "
                             f"ftf_hz); missing {', '.join(missing)}")
        n = self.rolling_elements
        if isinstance(n, bool) or not isinstance(n, int) or n < 3:
            raise bad("rolling_elements", n, "a bearing has a whole number of rolling elements, at least 3")
        for k in ("ball_diameter", "pitch_diameter"):
            v = geo[k]
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(k, v, "a diameter must be a number > 0")
        if not self.ball_diameter < self.pitch_diameter:
            raise bad("ball_diameter", self.ball_diameter, f"the balls must be smaller than the pitch diameter "
                      f"({self.pitch_diameter!r}, same unit): is one of them a radius, or in another unit?")
        if n * self.ball_diameter > math.pi * self.pitch_diameter:
            raise bad("rolling_elements", n, f"{n} balls of {self.ball_diameter!r} do not fit on a pitch circle of "
                      f"diameter {self.pitch_diameter!r} (circumference {math.pi * self.pitch_diameter:.4g})")
        a = self.contact_angle_deg
        if not (isinstance(a, (int, float)) and math.isfinite(a) and 0.0 <= a <= 45.0):
            raise bad("contact_angle_deg", a, "the contact angle must be 0..45 degrees (0 for a deep-groove ball "
                      "bearing; angular-contact bearings are 15-40)")
        if not 0.0 < self.tolerance <= 0.05:
            raise bad("tolerance", self.tolerance, "must be in (0, 0.05]")

    @property
    def shaft_frequency(self) -> float:
        """The shaft speed, Hz."""
        return float(self.shaft_hz) if self.shaft_hz is not None else float(self.shaft_rpm) / 60.0


def windows_apart(earlier: int | None, later: int | None, n: int) -> bool:
    """Whether windows of ``n`` samples ending at sequence numbers ``earlier`` and ``later`` (mod 2**32) share no
    sample (their envelope spectra are independent); an unknown end counts as apart."""
    return earlier is None or later is None or (later - earlier) % (1 << 32) >= n


def defect_frequencies(geometry: BearingGeometry) -> dict[str, float]:
    """``{"bpfo", "bpfi", "bsf", "ftf"}`` -> Hz, from the geometry and the shaft speed (or as given)."""
    if geometry.bpfo_hz is not None:
        return {"bpfo": float(geometry.bpfo_hz), "bpfi": float(geometry.bpfi_hz), "bsf": float(geometry.bsf_hz),
                "ftf": float(geometry.ftf_hz)}
    fr = geometry.shaft_frequency
    r = geometry.ball_diameter / geometry.pitch_diameter * math.cos(math.radians(geometry.contact_angle_deg))
    n = geometry.rolling_elements
    return {
        "bpfo": n / 2 * fr * (1 - r),
        "bpfi": n / 2 * fr * (1 + r),
        "bsf": geometry.pitch_diameter / (2 * geometry.ball_diameter) * fr * (1 - r * r),
        "ftf": fr / 2 * (1 - r),
    }


# --------------------------------------------------------------------------- the plan: lines, bands, checks
@dataclass(frozen=True)
class _Line:
    family: str  # bpfo | bpfi | bsf | ftf | shaft
    name: str  # "2x BPFI", "1x BPFI - shaft"
    hz: float
    harmonic: bool  # a harmonic of the family's frequency, not a sideband
    fundamental: bool


def _lines(freqs: dict[str, float], fr: float) -> list[_Line]:
    out = []
    for fam, f in (*freqs.items(), ("shaft", fr)):
        label = fam.upper() if fam != "shaft" else "shaft"
        for h in range(1, HARMONICS + 1):
            out.append(_Line(fam, f"{h}x {label}", h * f, True, h == 1))
        side = {"bpfi": ("shaft", fr), "bsf": ("FTF", freqs["ftf"])}.get(fam)
        if side:
            for h in range(1, SIDEBAND_HARMONICS + 1):
                for sign, s in (("-", -1), ("+", 1)):
                    out.append(_Line(fam, f"{h}x {label} {sign} {side[0]}", h * f + s * side[1], False, False))
    return out


def _top_line_hz(geometry: BearingGeometry) -> float:
    return max(x.hz for x in _lines(defect_frequencies(geometry), geometry.shaft_frequency))


def required_sample_rate(geometry: BearingGeometry) -> float:
    """Lowest sample rate (Hz) envelope analysis of this bearing needs: one band of ``BAND_FACTOR`` x the highest
    line, starting ``BAND_FLOOR_FACTOR`` x it up, below ``BAND_TOP`` x Nyquist."""
    top = _top_line_hz(geometry)
    return 2.0 * (BAND_FLOOR_FACTOR + BAND_FACTOR) * top / BAND_TOP


def _half_width(hz: float, tolerance: float, df: float) -> float:
    return max(GUARD_BINS * df, tolerance * hz)


def _scaled(geometry: BearingGeometry, speed: float = 1.0) -> tuple[dict[str, float], float]:
    """The defect frequencies and the shaft rate (Hz) at ``speed`` x the configured speed."""
    return {k: v * speed for k, v in defect_frequencies(geometry).items()}, geometry.shaft_frequency * speed


def _fundamentals_clash(geometry: BearingGeometry, df: float, keys: Sequence[str], speed: float = 1.0) -> str | None:
    """Why the fundamentals of ``keys`` (and the shaft, and 0 Hz) cannot be told apart at resolution ``df``."""
    freqs, fr = _scaled(geometry, speed)
    pts = [("0 Hz", 0.0, LOW_BINS * df), ("shaft", fr, _half_width(fr, geometry.tolerance, df))]
    pts += [(k.upper(), freqs[k], _half_width(freqs[k], geometry.tolerance, df)) for k in keys]
    pts.sort(key=lambda p: p[1])
    for (na, fa, ha), (nb, fb, hb) in zip(pts, pts[1:], strict=False):
        if fb - fa < ha + hb:
            return f"{na} ({fa:.1f} Hz) and {nb} ({fb:.1f} Hz)"
    return None


def min_window_samples(geometry: BearingGeometry, sample_rate: float) -> int:
    """Fewest samples of a window in which BPFO, BPFI, BSF and the shaft rate are resolved (the cage too)."""
    n = 64
    while n < 1 << 26:
        if _fundamentals_clash(geometry, sample_rate / n, DEFECTS) is None:
            return n
        n = int(n * 1.05) + 1
    return n


@dataclass(frozen=True)
class _Plan:
    sample_rate: float
    n: int
    df: float
    bands: tuple[tuple[int, int], ...]  # candidate envelope bands, FFT bin ranges [k1, k2)
    m: int  # envelope length (complex envelope of a band, resampled)
    lines: tuple[_Line, ...]
    intervals: tuple[tuple[int, int], ...]  # per line, SES bins [a, b); (0, 0) when not usable
    unusable: tuple[str, ...]  # per line, why not judged ("" when usable)
    floors: tuple[np.ndarray, ...]  # per line, SES bins of its local floor
    cage_note: str  # why the cage is not assessable ("" when it is)
    family_lines: dict  # defect -> indices of its judged lines
    on_shaft: np.ndarray  # (m/2,) bool: SES bins within SHAFT_BINS of a shaft harmonic
    used_bins: int  # SES bins [0, used_bins) hold every line's interval and floor

    def __hash__(self) -> int:
        return id(self)


def _check_rate(geometry: BearingGeometry, sample_rate: float) -> None:
    if not (isinstance(sample_rate, (int, float)) and math.isfinite(sample_rate) and sample_rate > 0):
        raise ValueError(f"sample rate must be a number > 0 Hz, got {sample_rate!r}")
    need = required_sample_rate(geometry)
    if sample_rate < need:
        line = max(_lines(defect_frequencies(geometry), geometry.shaft_frequency), key=lambda x: x.hz)
        top = line.hz
        raise ValueError(
            f"sample rate {sample_rate:g} Hz is too low for envelope analysis of this bearing: its highest line "
            f"({line.name}, {top:.0f} Hz) needs an envelope band {BAND_FACTOR * top:.0f} Hz wide from "
            f"{BAND_FLOOR_FACTOR * top:.0f} Hz up, below {BAND_TOP:.0%} of Nyquist: a sample rate of at least "
            f"{need:.0f} Hz")


@functools.lru_cache(maxsize=128)
def _plan(geometry: BearingGeometry, sample_rate: float, n: int, speed: float = 1.0) -> _Plan:
    """Lines, their intervals and floors at ``speed`` x the configured speed; the candidate bands and the SES bins
    kept (``used_bins``) are the configured speed's at any measured speed, so a baseline's levels and spectra fit
    every plan of its geometry."""
    _check_rate(geometry, sample_rate)
    df = sample_rate / n
    clash = _fundamentals_clash(geometry, df, ("bpfo", "bpfi", "bsf"), speed)
    if clash:
        need = min_window_samples(geometry, sample_rate)
        raise ValueError(
            f"window of {n} samples ({n / sample_rate:.3g} s, frequency resolution {df:.3g} Hz) is too short to "
            f"tell {clash} apart: give at least {need} samples ({need / sample_rate:.3g} s)")
    cage_clash = _fundamentals_clash(geometry, df, DEFECTS, speed)
    cage_note = "" if cage_clash is None else (
        f"cage not assessable: at {df:.3g} Hz resolution {cage_clash} cannot be told apart "
        + (f"(needs {min_window_samples(geometry, sample_rate)} samples)" if speed == 1.0 else
           f"at the measured shaft speed ({speed - 1:+.1%} from the configured one)"))
    freqs, fr = _scaled(geometry, speed)
    lines = _lines(freqs, fr)
    top = _top_line_hz(geometry)
    width = BAND_FACTOR * top
    lo = BAND_FLOOR_FACTOR * top
    hi = BAND_TOP * sample_rate / 2
    bands = []
    start = lo
    while start + width <= hi + 1e-9:
        bands.append((int(round(start / df)), int(round((start + width) / df))))
        start += width / 2
    m = 1 << math.ceil(math.log2(2 * (bands[0][1] - bands[0][0]) + 1))
    ses_bins = m // 2  # the SES of an envelope of m samples over the window: bins 0..m/2 at df each
    half = [_half_width(x.hz, geometry.tolerance, df) for x in lines]
    spans = [(x.hz - h, x.hz + h) for x, h in zip(lines, half, strict=True)]
    intervals, unusable = [], []
    for i, x in enumerate(lines):
        a, b = spans[i]
        why = ""
        if x.family == "ftf" or (x.family == "bsf" and not x.harmonic):
            why = cage_note and "FTF not resolved in this window"
        if not why and a < LOW_BINS * df:
            why = f"within {LOW_BINS} bins of 0 Hz"
        if not why and b / df >= ses_bins:
            why = "above the envelope band's range"
        if not why:
            other = [lines[j].name for j in range(len(lines)) if lines[j].family != x.family
                     and not (spans[j][1] < a or b < spans[j][0])
                     and not (x.fundamental and not lines[j].fundamental)]
            if other:
                why = "coincides with " + ", ".join(other)
        unusable.append(why)
        intervals.append((0, 0) if why else (max(int(math.ceil(a / df)), LOW_BINS), int(math.floor(b / df)) + 1))
    # the shaft's harmonics: looseness, rub and a loose mount put lines on every one of them
    on_shaft = np.zeros(ses_bins, bool)
    slack = 0.0 if speed == 1.0 else SPEED_ERROR  # a measured speed is placed this well: the k-th harmonic k times
    for k in range(1, int(ses_bins * df / fr) + 2):
        c, w = int(round(k * fr / df)), SHAFT_BINS + int(math.ceil(k * fr * slack / df))
        on_shaft[max(0, c - w): c + w + 1] = True
    excluded = on_shaft.copy()
    excluded[:LOW_BINS] = True
    for x, h in zip(lines, half, strict=True):
        excluded[max(0, int(math.ceil((x.hz - h) / df)) - 1): int(math.floor((x.hz + h) / df)) + 2] = True
    floors = []
    for i, x in enumerate(lines):
        span = max(FLOOR_SPAN * x.hz, FLOOR_MIN_BINS * df)
        k = np.arange(max(0, int((x.hz - span) / df)), min(ses_bins, int((x.hz + span) / df) + 1))
        floors.append(k[~excluded[k]])
        if not unusable[i] and len(floors[-1]) < MIN_FLOOR_BINS:
            unusable[i] = f"no floor: the shaft's harmonics and other lines cover the spectrum around it at {df:.3g} Hz"
            intervals[i] = (0, 0)
    family_lines = {d: tuple(i for i, x in enumerate(lines) if x.family == d and not unusable[i]) for d in DEFECTS}
    # SES bins kept: every line's interval and floor at the fastest speed searched (the same at every speed)
    fastest = [x.hz / speed * (1.0 + geometry.speed_search) for x in lines]
    used = min(ses_bins, int(max(f + max(FLOOR_SPAN * f, FLOOR_MIN_BINS * df) for f in fastest) / df) + 2)
    return _Plan(sample_rate, n, df, tuple(bands), m, tuple(lines), tuple(intervals), tuple(unusable),
                 tuple(floors), cage_note, family_lines, on_shaft, used)


def _check_window(samples: np.ndarray, what: str = "window") -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{what}: expected raw samples of shape (n, channels), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"{what}: expected real numbers, got dtype {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        per = bad.sum(axis=0)
        where = ", ".join(f"channel {c}: {int(k)}" for c, k in enumerate(per) if k)
        raise ValueError(f"{what}: {int(bad.sum())} NaN or infinite values ({where}): envelope analysis needs a "
                         "window of valid samples")
    return x


def _check_windows(samples) -> np.ndarray:
    """(K, n, C) windows of one shape from an (n, C) window, a (K, n, C) array or a sequence of (n, C) windows."""
    if isinstance(samples, np.ndarray) and samples.ndim != 3:
        return _check_window(samples)[None]
    if isinstance(samples, np.ndarray):
        xs = list(samples)
    else:
        try:
            xs = list(samples)
        except TypeError:
            raise ValueError(f"window: expected raw samples of shape (n, channels), (K, n, channels) or a sequence of "
                             f"(n, channels) windows, got {type(samples).__name__}") from None
    if not xs:
        raise ValueError("windows: none given; diagnose needs at least one (n, channels) window")
    out = [_check_window(xs[0], "window 0" if len(xs) > 1 else "window")]
    for i, x in enumerate(xs[1:], 1):
        x = _check_window(x, f"window {i}")
        if x.shape != out[0].shape:
            raise ValueError(f"window {i}: shape {x.shape}, window 0 has {out[0].shape}: averaged windows must have "
                             "one length and width (the same sensor, rate and window)")
        same = next((j for j, y in enumerate(out) if np.array_equal(x, y)), None)
        if same is not None:  # a copy does not lower the noise: the K-window law would read its peaks as lines
            raise ValueError(f"window {i} repeats window {same}: averaged windows must be independent (a stuck or "
                             "replayed stream repeats its samples); give each window once")
        out.append(x)
    return np.stack(out)


# --------------------------------------------------------------------------- the envelope spectrum
def _spectrum(x: np.ndarray) -> np.ndarray:
    """The FFT (n/2+1, C) of a raw window (n, C), mean removed (no taper: the bands are cut from it)."""
    x = x.astype(np.float64)
    return np.fft.rfft(x - x.mean(axis=0), axis=0)


def _hann_power(specs: Sequence[np.ndarray], lo: int, hi: int) -> np.ndarray:
    """Hann-windowed power (hi - lo,) of bins lo..hi-1 (the untapered bins convolved with -1/4, 1/2, -1/4), summed
    over the channels and averaged over K windows' spectra (``_spectrum``)."""
    power = np.zeros(hi - lo)
    for spec in specs:
        x = spec[lo - 1: hi + 1]
        h = 0.5 * x[1:-1] - 0.25 * (x[:-2] + x[2:])
        power += (h.real**2 + h.imag**2).sum(axis=1)
    return power / len(specs)


def _near_mains(hz: float, df: float) -> bool:
    """Whether ``hz`` lies within 1.5 bins of a multiple of 50 or 60 Hz (the supply's lines, in a motor's
    vibration at 1x and 2x the supply frequency and their harmonics)."""
    return any(abs(hz - round(hz / m) * m) <= 1.5 * df for m in MAINS_HZ if hz >= m / 2)


def _peak_hz(specs: Sequence[np.ndarray], df: float, k1: int, k2: int, *, mains: bool = True) -> float | None:
    """Where the largest Hann power bin of k1..k2-1 lies (Hz, a parabola through its log power and its
    neighbours'), when it is a local maximum standing out from the 2 x ``FLOOR_MIN_BINS`` bins around it (p <
    ``ALPHA_LINE`` by the line law; the channels counted as one, the windows as averaged); None otherwise.
    ``mains=False``: bins near the supply's lines (``_near_mains``) are not candidates."""
    n2 = len(specs[0]) - 1
    lo, hi = max(1, k1 - FLOOR_MIN_BINS - 4), min(n2, k2 + FLOOR_MIN_BINS + 4)
    if k1 < lo + 1 or k2 > hi - 1 or k2 <= k1:
        return None
    power = _hann_power(specs, lo, hi)
    cand = np.arange(k1, k2)
    if not mains:
        cand = cand[[not _near_mains(k * df, df) for k in cand]]
        if not len(cand):
            return None
    k = int(cand[np.argmax(power[cand - lo])]) - lo
    if not (power[k] > 0 and power[k] >= power[k - 1] and power[k] >= power[k + 1]):
        return None
    floor = np.r_[power[max(0, k - 3 - FLOOR_MIN_BINS): max(0, k - 3)], power[k + 4: k + 4 + FLOOR_MIN_BINS]]
    median = float(np.median(floor)) if len(floor) >= 8 else 0.0
    if not median > 0 or _log_line_p(power[k] / median, len(cand), len(floor), len(specs)) > math.log(ALPHA_LINE):
        return None
    la, lb, lc = np.log(power[k - 1: k + 2] + 1e-300)
    den = la - 2 * lb + lc
    shift = float(np.clip(0.5 * (la - lc) / den, -0.5, 0.5)) if den < 0 else 0.0
    return (k + lo + shift) * df


def _measure_speed(specs: Sequence[np.ndarray], n: int, sample_rate: float,
                   geometry: BearingGeometry) -> tuple[float, str]:
    """The running speed as a factor on the configured one, from the shaft's lines in K windows' spectra
    (``_spectrum``, (n/2+1, C) each), and a note for the report ("" when nothing to say).

    The 1x line is the largest Hann power bin within ``tolerance`` of the configured shaft rate (the nearest bin
    when no bin lies that close) that stands out (``_peak_hz``), else within ``speed_search`` of it, the supply's
    lines (multiples of 50 and 60 Hz) left out there; its 2x .. ``SPEED_HARMONICS``x lines, where they stand out
    within 2 bins of where it puts them and are not the supply's, refine it (each weighted by its order squared: a
    harmonic h places the rate h times more finely). The factor is kept within 1 +- ``speed_search``. Within
    ``tolerance`` of the configured speed, or no line standing out: 1.0 (the configured speed: the lines' intervals
    hold their lines, and a 1x line in noise is placed no better than about 0.5 %); else the factor rounded to
    ``SPEED_QUANTUM``.
    """
    search = geometry.speed_search
    if search <= 0:
        return 1.0, ""
    f0, df = geometry.shaft_frequency, sample_rate / n
    f1 = None
    for frac, mains in ((min(geometry.tolerance, search), True), (search, False)):
        k1, k2 = max(LOW_BINS, int(math.ceil(f0 * (1 - frac) / df))), int(math.floor(f0 * (1 + frac) / df)) + 1
        if k2 <= k1:  # no bin that close: the nearest one
            k1 = max(LOW_BINS, int(round(f0 / df)))
            k2 = k1 + 1
        f1 = _peak_hz(specs, df, k1, k2, mains=mains)
        if f1 is not None:
            break
    if f1 is None:
        return 1.0, (f"no shaft line stands out within {search * 100:.3g} % of the configured {f0:.4g} Hz: the "
                     "configured speed is used")
    estimates, weights = [f1], [1.0]
    for h in range(2, SPEED_HARMONICS + 1):
        c = int(round(h * f1 / df))
        fh = None if _near_mains(h * f1, df) else _peak_hz(specs, df, c - 2, c + 3)
        if fh is not None:
            estimates.append(fh / h)
            weights.append(float(h * h))
    speed = min(max(float(np.average(estimates, weights=weights)) / f0, 1.0 - search), 1.0 + search)
    if abs(speed - 1.0) <= geometry.tolerance:
        return 1.0, ""  # the lines' intervals hold them; a noisy 1x would only move the shaft harmonics' mask
    speed = round(round(speed / SPEED_QUANTUM) * SPEED_QUANTUM, 6)
    speed = min(max(speed, 1.0 - search), 1.0 + search)
    return speed, (f"shaft measured at {f0 * speed:.4g} Hz ({f0 * speed * 60:.4g} rpm), {speed - 1:+.1%} from the "
                   f"configured {f0:.4g} Hz: the defect frequencies are scaled by it (check shaft_rpm if the machine "
                   "runs at one speed)")


def _band_envelopes(spec: np.ndarray, n: int, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """Squared envelopes (C, B, m) of each channel in each candidate band of an n-sample window's spectrum
    (``_spectrum``), and their spectral kurtosis (C, B)."""
    c = spec.shape[1]
    env = np.empty((c, len(plan.bands), plan.m))
    for j, (k1, k2) in enumerate(plan.bands):
        env[:, j] = _envelope(spec[k1:k2], plan.m, n)
    mean = env.mean(axis=2)
    sk = (env * env).mean(axis=2) / np.maximum(mean * mean, 1e-300) - 2.0
    return env, sk


def _envelope(bins: np.ndarray, m: int, n: int) -> np.ndarray:
    """Squared envelope (C, m) of a band from its FFT bins (K, C) of an n-sample window: the analytic signal
    shifted to 0 Hz and resampled to m samples over the window (m >= 2K), in the signal's units squared."""
    buf = np.zeros((m, bins.shape[1]), complex)
    buf[: len(bins)] = bins
    z = np.fft.ifft(buf, axis=0) * (2.0 * m / n)
    return (z.real**2 + z.imag**2).T


@functools.lru_cache(maxsize=8)
def _hann(m: int) -> np.ndarray:
    return np.hanning(m)


def _ses(env: np.ndarray) -> np.ndarray:
    """Power spectrum (..., m/2) of squared envelopes (..., m) over the window: mean removed, Hann window."""
    m = env.shape[-1]
    e = env - env.mean(axis=-1, keepdims=True)
    s = np.fft.rfft(e * _hann(m), axis=-1)[..., : m // 2]
    return (s.real**2 + s.imag**2) * (2.0 / m) ** 2


def _log_fisher(logp: np.ndarray) -> float:
    """ln of Fisher's combined p-value of k independent p-values given as their logs (k,): under the null
    X = -2 sum ln p is chi-squared with 2k degrees of freedom, P(X > x) = e^(-x/2) sum_{j<k} (x/2)^j / j!."""
    k = len(logp)
    if k == 0:
        return 0.0
    half = -float(np.sum(logp))
    if half <= 0:
        return 0.0
    terms = [j * math.log(half) - math.lgamma(j + 1) for j in range(k)]
    top = max(terms)
    return min(0.0, -half + top + math.log(sum(math.exp(t - top) for t in terms)))


@dataclass
class _Judged:
    """One channel's SES in one band, judged line by line and defect by defect."""

    peak: np.ndarray  # (L,) peak power in each line's interval
    found: np.ndarray  # (L,) its bin, -1 when the peak is the flank of something outside (or not judged)
    floor: np.ndarray  # (L,) local floor (mean power)
    logp: np.ndarray  # (L,) ln of the probability that noise alone makes the line this prominent (0: not judged)
    family_logp: dict  # defect -> ln of Fisher's combined p-value of its lines
    ratio: np.ndarray  # (L,) each line's peak over its floor (0 where not judged)


def _log_line_p(ratio: float, m: int, k: int, windows: int = 1) -> float:
    """ln of the probability that noise alone puts the largest of ``m`` bins ``ratio`` times over the median of
    ``k`` other bins, in an SES averaged over ``windows`` independent windows (1: one window's SES).

    Noise-only SES bins of one window are exponential; the mean of K independent ones is Gamma(K, 1/K) (in units
    of its mean). With U = F(median) ~ Beta(j, k - j + 1) (the median the j-th smallest, j = ceil(k/2)), one bin
    exceeds ratio x median with q = E[Q(K, K ratio t)] over the median t's law (Q the regularized upper incomplete
    gamma function), which counts the median's own error. For K = 1, Q = e^(-ratio t) and q = E[V^ratio] =
    B(k-j+1+ratio, j) / B(k-j+1, j) in closed form; for K > 1 it is integrated numerically (``_median_law``). The
    largest of m is bounded by 1 - (1 - q)^m (Jensen)."""
    k = k / HANN_ENBW  # neighbouring bins of a Hann-windowed spectrum are correlated: k / 1.5 independent values
    if windows == 1:
        j = (k + 1) / 2
        a = k - j + 1
        if ratio > 1e6:  # lgamma(a + r) - lgamma(a + r + j) -> -j ln(a + r): the difference cancels in floats
            log_q = -j * math.log(a + ratio) - math.lgamma(a) + math.lgamma(a + j)
        else:
            log_q = math.lgamma(a + ratio) - math.lgamma(a + ratio + j) - math.lgamma(a) + math.lgamma(a + j)
        log_q = min(log_q, 0.0)
    else:
        t, log_w, log_tail = _median_law(windows, round(k, 6))
        x = (windows * ratio) * t
        v = log_w - x + np.log(np.polyval(_exp_series(windows), x))  # ln(weight x Q(K, x)) on the grid
        top = max(float(v.max()), log_tail)
        log_q = min(0.0, top + math.log(float(np.exp(v - top).sum()) + math.exp(log_tail - top)))
    q = math.exp(log_q)
    if q >= 1.0:
        return 0.0
    if q < 1e-12:
        return math.log(m) + log_q if m * q < 1e-6 else math.log(-math.expm1(m * math.log1p(-q)))
    return math.log(max(-math.expm1(m * math.log1p(-q)), 1e-300))


@functools.lru_cache(maxsize=8)
def _exp_series(windows: int) -> np.ndarray:
    """Coefficients (K,) of sum_{i<K} x^i / i!, highest first (``np.polyval``): Q(K, x) = e^-x times it."""
    return np.array([1.0 / math.factorial(i) for i in range(windows)][::-1])


def _log_gamma_tails(windows: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ln P(K, x) and ln Q(K, x) (G,), the regularized lower and upper incomplete gamma functions of integer K at
    x > 0: Q = e^-x sum_{i<K} x^i / i!; P = 1 - Q, or below x = K + 1 its series x^K e^-x / K! sum_i x^i / ((K+1)
    ... (K+i)) (accurate where P is tiny)."""
    lx = np.log(x)
    terms = np.arange(windows)[:, None] * lx[None] - np.array([math.lgamma(i + 1) for i in range(windows)])[:, None]
    top = terms.max(axis=0)
    log_q = np.minimum(-x + top + np.log(np.exp(terms - top).sum(axis=0)), 0.0)
    with np.errstate(divide="ignore"):
        log_p = np.log(-np.expm1(log_q))
    small = x < windows + 1.0
    xs = x[small]
    total, term = np.ones_like(xs), np.ones_like(xs)
    for i in range(1, 80):
        term = term * xs / (windows + i)
        total = total + term
    log_p[small] = -xs + windows * np.log(xs) - math.lgamma(windows + 1) + np.log(total)
    return log_p, log_q


@functools.lru_cache(maxsize=512)
def _median_law(windows: int, k: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The law of the median of ``k`` independent Gamma(K, 1/K) bins (an averaged SES's floor, in units of the
    noise's mean): grid t (G,), ln of each point's probability weight (G,, summing to 1), and ln of a bound on the
    probability below the grid.

    Its density is f(t) F(t)^(j-1) (1 - F(t))^(k-j) / B(j, k-j+1) with f, F those of Gamma(K, 1/K), j = (k+1)/2;
    integrated in ln t on ``NULL_GRID`` points where it is within e^``NULL_TRIM`` of its peak. Below the grid the
    density in ln t falls at least as fast as t, so the probability there is at most the density at the grid's
    first point (added to q: p-values are never below about e^-``NULL_TRIM``, which no threshold needs)."""
    j = (k + 1) / 2
    a = k - j + 1
    log_beta = math.lgamma(j) + math.lgamma(a) - math.lgamma(j + a)

    def log_density(lt: np.ndarray) -> np.ndarray:  # the median's density in ln t
        t = np.exp(lt)
        lp, lq = _log_gamma_tails(windows, windows * t)
        log_f = windows * math.log(windows) + (windows - 1) * lt - windows * t - math.lgamma(windows)
        return log_f + (j - 1) * lp + (a - 1) * lq - log_beta + lt

    coarse = np.linspace(math.log(1e-6), math.log(50.0), 6000)
    d = log_density(coarse)
    lo, hi = np.flatnonzero(d > d.max() - NULL_TRIM)[[0, -1]]
    lt = np.linspace(coarse[max(lo - 1, 0)], coarse[min(hi + 1, len(coarse) - 1)], NULL_GRID)
    d = log_density(lt)
    w = d + math.log(lt[1] - lt[0])
    top = float(w.max())
    w = w - (top + math.log(float(np.exp(w - top).sum())))
    return np.exp(lt), w, float(d[0])


def _judge(ses: np.ndarray, plan: _Plan, windows: int = 1, pvalues: bool = True) -> _Judged:
    """Judge an SES (m/2,) averaged over ``windows`` independent windows; ``pvalues=False``: the ratios only."""
    nl = len(plan.lines)
    peak, found, floor, logp = np.zeros(nl), np.full(nl, -1), np.zeros(nl), np.zeros(nl)
    for i, (a, b) in enumerate(plan.intervals):
        if b <= a:
            continue
        k = int(np.argmax(ses[a:b])) + a
        peak[i] = ses[k]
        fl = plan.floors[i]
        if not len(fl):
            continue
        median = float(np.partition(ses[fl], (len(fl) - 1) // 2)[(len(fl) - 1) // 2])
        floor[i] = median / _median_over_mean(windows)
        if k > 0 and ses[k] < ses[k - 1] or k + 1 < len(ses) and ses[k] < ses[k + 1] or not median > 0:
            continue  # a flank: the interval's largest bin leans on a line outside it
        if plan.on_shaft[k] and plan.lines[i].family != "shaft":
            found[i] = -2  # the peak is a shaft harmonic's
            continue
        found[i] = k
        if pvalues:
            logp[i] = _log_line_p(peak[i] / median, b - a, len(fl), windows)
    fam = {d: _log_fisher(logp[list(plan.family_lines[d])]) for d in DEFECTS}
    return _Judged(peak, found, floor, logp, fam, np.divide(peak, floor, out=np.zeros(nl), where=floor > 0))


@functools.lru_cache(maxsize=16)
def _median_over_mean(windows: int) -> float:
    """The median of Gamma(K, 1/K), whose mean is 1 (ln 2 for K = 1): the floor is the median over this."""
    if windows == 1:
        return math.log(2.0)
    lo, hi = 0.0, 2.0  # P(K, K t) = 1/2 by bisection
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _log_gamma_tails(windows, np.array([windows * mid]))[0][0] < math.log(0.5) else (lo, mid)
    return (lo + hi) / 2


def candidate_bands(geometry: BearingGeometry, sample_rate: float) -> list[tuple[float, float]]:
    """The envelope bands (lo, hi) Hz ``diagnose`` chooses from for this bearing at this rate (1 s windows)."""
    plan = _plan(geometry, float(sample_rate), max(int(sample_rate), min_window_samples(geometry, sample_rate)))
    return [(a * plan.df, b * plan.df) for a, b in plan.bands]


def envelope_spectrum(samples: np.ndarray, sample_rate: float,
                      band: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Squared-envelope spectrum of each channel of a raw window (n, C) in ``band`` (lo, hi) Hz.

    Returns frequencies (K,) Hz (``sample_rate / n`` apart, up to the band's width), power (K, C) in the
    samples' unit squared (mean removed, Hann window) and each channel's spectral kurtosis in the band (C,).
    """
    x = _check_window(samples)
    n = x.shape[0]
    lo, hi = (float(v) for v in band)
    if not (0 <= lo < hi <= sample_rate / 2):
        raise ValueError(f"band: {band!r} Hz must lie within 0..{sample_rate / 2:g} Hz (Nyquist)")
    df = sample_rate / n
    k1, k2 = int(round(lo / df)), max(int(round(hi / df)), int(round(lo / df)) + 2)
    xd = x.astype(np.float64)
    env = _envelope(np.fft.rfft(xd - xd.mean(axis=0), axis=0)[k1:k2], 1 << math.ceil(math.log2(2 * (k2 - k1) + 1)), n)
    mean = env.mean(axis=1)
    kurt = (env * env).mean(axis=1) / np.maximum(mean * mean, 1e-300) - 2.0
    ses = _ses(env)
    return np.arange(ses.shape[1]) * df, ses.T.copy(), kurt


# --------------------------------------------------------------------------- the baseline
@dataclass(frozen=True)
class EnvelopeBaseline:
    """Healthy envelope-spectrum levels, per channel, candidate band and line, at one rate and window length.

    ``levels``: (C, B, L) float64, the mean over the healthy windows of each line's peak over its floor;
    ``family_max``: (C, B, 4) the largest, over the healthy windows, of each defect's lines' summed peak over
    floor (BPFO, BPFI, BSF, FTF); ``windows``: how many windows it was learned from. ``averaged_max``:
    (AVERAGE_WINDOWS - 1, C, B, 4), the same largest over the SES averaged over K = 2 .. AVERAGE_WINDOWS
    non-overlapping healthy windows (``BaselineLearner``: consecutive ones and random sets), and ``averages``
    (AVERAGE_WINDOWS - 1,) how many windows closed averages of each K (0: none yet; an average of K windows is then judged against ``family_max``, a higher bound, since
    averaging lowers the noise's peaks over their floor).
    """

    sample_rate: float
    n_samples: int
    geometry: BearingGeometry
    levels: np.ndarray
    family_max: np.ndarray
    windows: int
    averaged_max: np.ndarray | None = None
    averages: tuple[int, ...] = ()

    @classmethod
    def learn(cls, windows: Iterable[np.ndarray], sample_rate: float, geometry: BearingGeometry) -> EnvelopeBaseline:
        """Learn from healthy raw windows, each (n, C) of the same n and C, in time order and not overlapping (at
        least one; 10 or more make the largest healthy level a fair bound: a healthy window exceeds the largest of
        N with probability 1/(N+1))."""
        learner = BaselineLearner(sample_rate, geometry)
        for w in windows:
            learner.add(w)
        return learner.baseline()

    def family_bound(self, windows: int) -> np.ndarray:
        """(C, B, 4): the healthy bound an SES averaged over ``windows`` windows is compared with."""
        if 2 <= windows <= len(self.averages) + 1 and self.averages[windows - 2] > 0:
            return self.averaged_max[windows - 2]
        return self.family_max

    def check(self, sample_rate: float, n: int, channels: int, geometry: BearingGeometry) -> None:
        """Raise ValueError unless this baseline fits windows of ``n`` x ``channels`` at ``sample_rate``."""
        if self.geometry != dataclasses.replace(geometry, speed_search=self.geometry.speed_search):
            raise ValueError("baseline: learned for another bearing geometry or speed; learn it again")
        if self.sample_rate != float(sample_rate) or self.n_samples != n:
            raise ValueError(f"baseline: learned on windows of {self.n_samples} samples at {self.sample_rate:g} Hz, "
                             f"this window has {n} at {sample_rate:g} Hz; learn it again or diagnose windows like "
                             "the baseline's")
        if self.levels.shape[0] != channels:
            raise ValueError(f"baseline: learned on {self.levels.shape[0]} channels, this window has {channels}")

    def to_dict(self) -> dict:
        """JSON-able form (``from_dict`` reads it back)."""
        out = {"sample_rate": self.sample_rate, "n_samples": self.n_samples, "windows": self.windows,
               "geometry": {f.name: getattr(self.geometry, f.name) for f in dataclasses.fields(self.geometry)},
               "levels": self.levels.tolist(), "family_max": self.family_max.tolist()}
        if self.averaged_max is not None:
            out |= {"averaged_max": self.averaged_max.tolist(), "averages": list(self.averages)}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> EnvelopeBaseline:
        """Read ``to_dict``'s form (one without averages too); ValueError naming what is wrong."""
        try:
            geometry = BearingGeometry(**d["geometry"])
            avg = d.get("averaged_max")
            base = cls(float(d["sample_rate"]), int(d["n_samples"]), geometry, np.asarray(d["levels"], np.float64),
                       np.asarray(d["family_max"], np.float64), int(d["windows"]),
                       None if avg is None else np.asarray(avg, np.float64),
                       tuple(int(v) for v in d.get("averages", ())))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"baseline: not a stored envelope baseline ({exc!r})") from None
        plan = _plan(geometry, base.sample_rate, base.n_samples)
        want = (len(plan.bands), len(plan.lines))
        if (base.levels.ndim != 3 or base.levels.shape[1:] != want
                or base.family_max.shape != (*base.levels.shape[:2], len(DEFECTS))):
            raise ValueError(f"baseline: levels of shape {base.levels.shape} and family_max {base.family_max.shape}, "
                             f"expected (channels, {want[0]}, {want[1]}) and (channels, {want[0]}, {len(DEFECTS)}) "
                             "for this geometry, rate and window length")
        if base.averaged_max is not None and (base.averaged_max.shape != (len(base.averages), *base.family_max.shape)
                                              or any(v < 0 for v in base.averages)):
            raise ValueError(f"baseline: averaged_max of shape {base.averaged_max.shape} with {len(base.averages)} "
                             f"counts, expected (counts, {', '.join(map(str, base.family_max.shape))})")
        for name, arr in (("levels", base.levels), ("family_max", base.family_max),
                          ("averaged_max", base.averaged_max)):
            if arr is not None and not (np.isfinite(arr).all() and (arr >= 0).all()):
                raise ValueError(f"baseline: {name} must be finite and >= 0")
        return base


class BaselineLearner:
    """Learns an :class:`EnvelopeBaseline` one healthy window at a time (a gateway learns it from a sensor's first
    healthy windows): ``add`` each (n, C) window, then ``baseline()``.

    Every window counts for the one-window levels. Windows that do not overlap the last one counted for averages
    (``end``: the window's end in samples; None: windows given do not overlap) also feed the averaged bounds:
    the SES of such windows are kept (their first ``used_bins`` bins, float32: (C, B, used_bins) each; up to
    ``AVERAGE_POOL``, then a random one is replaced), and each new one closes, for K = 2 .. AVERAGE_WINDOWS, the
    average with the K-1 before it and ``AVERAGE_DRAWS`` averages with K-1 earlier ones drawn at random (seeded:
    the same windows learn the same baseline). Any K separate healthy windows make a healthy average: the random
    sets give the bound many more distinct averages than the consecutive ones alone (S separate windows hold
    only about S/K disjoint averages of K), so the largest is a firmer bound (the maximum of a few consecutive
    averages let a healthy 3-window average read "cage" +3 dB over it in the benchmark).
    """

    def __init__(self, sample_rate: float, geometry: BearingGeometry) -> None:
        self.sample_rate = float(sample_rate)
        self.geometry = geometry
        self.count = 0
        self.separate = 0  # windows that fed the averaged bounds
        self._shape: tuple[int, int] | None = None
        self._plan: _Plan | None = None
        self._total: np.ndarray | None = None
        self._top: np.ndarray | None = None
        self._avg_top: np.ndarray | None = None
        self._averages = [0] * (AVERAGE_WINDOWS - 1)
        # the separate windows' (used SES, measured speed factor): the last AVERAGE_WINDOWS - 1, and up to AVERAGE_POOL
        self._recent: collections.deque = collections.deque(maxlen=AVERAGE_WINDOWS - 1)
        self._pool: list[tuple[np.ndarray, float]] = []
        self._rng = np.random.default_rng(0)
        self._last_end: int | None = None

    def add(self, window: np.ndarray, end: int | None = None) -> None:
        """Account one healthy window (n, C); ``end``: its last sample's index + 1 in the sensor's stream (mod
        2**32), to tell overlapping windows apart. ValueError (naming it) for one of another shape or with
        NaN/inf."""
        x = _check_window(window, f"healthy window {self.count}")
        if self._shape is None:
            self._shape = x.shape
            self._plan = _plan(self.geometry, self.sample_rate, x.shape[0])
        elif x.shape != self._shape:
            raise ValueError(f"healthy window {self.count}: shape {x.shape}, the first was {self._shape}: the baseline "
                             "needs windows of one length and width")
        spec = _spectrum(x)
        ses = _ses(_band_envelopes(spec, x.shape[0], self._plan)[0])
        with np.errstate(over="ignore"):
            used = ses[..., : self._plan.used_bins].astype(np.float32)
        if not (np.isfinite(ses).all() and np.isfinite(used).all()):
            raise ValueError(f"healthy window {self.count}: its envelope spectrum overflows (peak sample "
                             f"{float(np.abs(x).max()):.3g}): an absurd amplitude, left out of the baseline")
        speed = _measure_speed([spec], x.shape[0], self.sample_rate, self.geometry)[0]
        lv, fam = self._levels(ses, 1, speed)
        self._total = lv if self._total is None else self._total + lv
        self._top = fam if self._top is None else np.maximum(self._top, fam)
        self.count += 1
        if end is not None and not windows_apart(self._last_end, end, x.shape[0]):
            return  # overlaps the last window of the averages: not independent of it
        self._last_end = end
        self.separate += 1
        total, speeds = used.astype(np.float64), [speed]
        for k, (prev, prev_speed) in enumerate(reversed(self._recent), 2):
            total += prev
            speeds.append(prev_speed)
            sets = [(total, float(np.mean(speeds)))]
            for _ in range(AVERAGE_DRAWS):
                drawn = [self._pool[i] for i in self._rng.choice(len(self._pool), k - 1, replace=False)]
                sets.append((used.astype(np.float64) + sum(d for d, _ in drawn),
                             float(np.mean([speed] + [s for _, s in drawn]))))
            for tot, mean_speed in sets:
                fam = self._levels(tot / k, k, round(mean_speed / SPEED_QUANTUM) * SPEED_QUANTUM)[1]
                top = self._avg_top if self._avg_top is not None else np.zeros((AVERAGE_WINDOWS - 1, *fam.shape))
                top[k - 2] = np.maximum(top[k - 2], fam)
                self._avg_top = top
            self._averages[k - 2] += 1
        self._recent.append((used, speed))
        if len(self._pool) < AVERAGE_POOL:
            self._pool.append((used, speed))
        else:
            self._pool[int(self._rng.integers(AVERAGE_POOL))] = (used, speed)

    def _levels(self, ses: np.ndarray, windows: int, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Each line's peak over floor (C, B, L) and each defect's sum of them (C, B, 4) in SES (C, B, m) averaged
        over ``windows`` windows whose shaft ran at ``speed`` x the configured speed."""
        plan = _plan(self.geometry, self.sample_rate, self._shape[0], speed)
        c, b = ses.shape[:2]
        lv = np.zeros((c, b, len(plan.lines)))
        for ch in range(c):
            for j in range(b):
                lv[ch, j] = _judge(ses[ch, j], plan, windows, pvalues=False).ratio
        fam = np.stack([lv[:, :, list(plan.family_lines[d])].sum(axis=2) for d in DEFECTS], axis=2)
        return lv, fam

    def baseline(self) -> EnvelopeBaseline:
        if not self.count:
            raise ValueError("a baseline needs at least one healthy window")
        avg = (self._avg_top.copy() if self._avg_top is not None
               else np.zeros((AVERAGE_WINDOWS - 1, *self._top.shape)))
        return EnvelopeBaseline(self.sample_rate, self._shape[0], self.geometry, self._total / self.count,
                                self._top.copy(), self.count, avg, tuple(self._averages))


# --------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class LineEvidence:
    """One line of a defect in one channel's envelope spectrum.

    ``prominence_db``: its peak's power over the local floor; ``p_value``: the probability that noise alone
    puts a peak this high in its search interval; ``baseline_db``: its prominence over the healthy windows' mean
    (None without a baseline); ``stands_out``: p_value < ``ALPHA_LINE`` and baseline_db >= ``LINE_BASELINE_DB``;
    ``note``: why it was not judged (then the numbers are None).
    """

    name: str
    expected_hz: float
    found_hz: float | None
    prominence_db: float | None
    p_value: float | None
    baseline_db: float | None
    stands_out: bool
    note: str = ""


@dataclass(frozen=True)
class DefectEvidence:
    """One defect (BPFO, BPFI, BSF, FTF) in one channel: its lines, and whether its pattern is there.

    ``evidence``: -log10 of the combined p-value of its lines (Fisher); ``baseline_db``: the lines' summed
    prominence over the largest it was in a healthy window; ``present``: evidence above ``-log10(ALPHA_DEFECT x bands searched)`` and
    baseline_db >= ``BASELINE_DB``.
    """

    defect: str
    part: str
    frequency_hz: float
    channel: int
    present: bool
    evidence: float
    baseline_db: float | None
    lines_out: int
    lines_judged: int
    lines: tuple[LineEvidence, ...]
    note: str = ""


@dataclass(frozen=True)
class BearingReport:
    """What the envelope spectrum says: ``verdict``, the ``defect`` key and ``channel`` it rests on (None for no
    pattern), a one-line ``summary``, each channel's envelope band (Hz) and its spectral kurtosis, every
    defect's evidence per channel, and the shaft-rate lines (they stand out with looseness, and with an
    inner-race defect, which the shaft modulates); ``windows``: how many windows' spectra were averaged;
    ``shaft_hz``: the shaft rate the lines were placed at (measured from the window's 1x line, or configured:
    ``notes`` says which when they differ)."""

    verdict: str
    defect: str | None
    channel: int | None
    channel_name: str | None
    summary: str
    bands_hz: tuple[tuple[float, float], ...]
    kurtosis: tuple[float, ...]
    evidence: tuple[DefectEvidence, ...]
    shaft_lines: tuple[tuple[LineEvidence, ...], ...]
    baseline: bool
    notes: tuple[str, ...] = ()
    windows: int = 1  # windows whose envelope spectra were averaged
    shaft_hz: float | None = None  # the shaft rate the lines were placed at: measured, or the configured one

    def as_dict(self) -> dict:
        """JSON-able form for a sink: the verdict, and the evidence in numbers (rounded)."""
        def r(v, nd=2):
            return None if v is None else round(float(v), nd)

        def line(x: LineEvidence) -> dict:
            return {"name": x.name, "expected_hz": r(x.expected_hz), "found_hz": r(x.found_hz),
                    "prominence_db": r(x.prominence_db), "p_value": None if x.p_value is None else float(f"{x.p_value:.3g}"),
                    "baseline_db": r(x.baseline_db), "stands_out": x.stands_out, **({"note": x.note} if x.note else {})}
        return {
            "verdict": self.verdict, "defect": self.defect, "channel": self.channel, "channel_name": self.channel_name,
            "summary": self.summary, "baseline": self.baseline, "windows": self.windows, "shaft_hz": r(self.shaft_hz, 3),
            "bands_hz": [[r(a, 1), r(b, 1)] for a, b in self.bands_hz], "kurtosis": [r(k) for k in self.kurtosis],
            "defects": [{"defect": e.defect, "part": e.part, "frequency_hz": r(e.frequency_hz), "channel": e.channel,
                         "present": e.present, "evidence": r(e.evidence), "baseline_db": r(e.baseline_db),
                         "lines_out": e.lines_out, "lines_judged": e.lines_judged, **({"note": e.note} if e.note else {}),
                         "lines": [line(x) for x in e.lines]} for e in self.evidence],
            "shaft_lines": [[line(x) for x in lines] for lines in self.shaft_lines],
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- diagnosis
BAND_RULES = ("kurtosis", "evidence")


def diagnose(samples, sample_rate: float, geometry: BearingGeometry,
             baseline: EnvelopeBaseline | None = None, *, channels: Sequence[str] | None = None,
             band: tuple[float, float] | None = None, band_rule: str = "kurtosis") -> BearingReport:
    """Judge raw samples for BPFO/BPFI/BSF/FTF patterns (see the module docstring).

    Args:
        samples: one window (n, C) of raw samples, any unit, or K windows of the same fault: a (K, n, C) array or
            a sequence of K (n, C) arrays of one shape, not overlapping (independent noise). Their squared-envelope
            spectra are averaged (the band chosen on their mean spectral kurtosis): the noise bins' variance falls
            by K, so lines about sqrt(K) weaker stand out; each line is judged against the law of an average of K
            (Gamma(K, 1/K) bins), and the defect against the healthy bound for averages of K. n >=
            ``min_window_samples(geometry, sample_rate)``.
        sample_rate: Hz, >= ``required_sample_rate(geometry)``.
        geometry: the bearing and its shaft speed.
        baseline: healthy levels learned on windows like these; without it only the local floor is used.
        channels: channel names for the report (default ch0, ch1, ...).
        band: an envelope band (lo, hi) in Hz instead of a candidate band chosen by ``band_rule``.
        band_rule: ``kurtosis`` (each channel's most impulsive candidate band) or ``evidence`` (the band where a
            defect's lines are most significant; the threshold pays for the search).

    Raises:
        ValueError: the windows, rate, geometry or baseline cannot support the analysis, or the windows differ in
            shape (the message says why).
    """
    xs = _check_windows(samples)  # (K, n, C)
    nw, n, c = xs.shape
    _plan(geometry, float(sample_rate), n)  # the rate and the window length can support the analysis
    specs = [_spectrum(x) for x in xs]
    speed, speed_note = _measure_speed(specs, n, float(sample_rate), geometry)
    plan = _plan(geometry, float(sample_rate), n, speed)
    if baseline is not None:
        baseline.check(sample_rate, n, c, geometry)
    if band_rule not in BAND_RULES:
        raise ValueError(f"band_rule: {band_rule!r} is not one of {', '.join(BAND_RULES)}")
    names = [str(v) for v in channels] if channels is not None else [f"ch{j}" for j in range(c)]
    if len(names) != c:
        raise ValueError(f"channels: {len(names)} names for a window of {c} channels")
    top = max(ln.hz for ln in plan.lines)
    searched = 1
    if band is not None:
        lo, hi = (float(v) for v in band)
        if not (0 < lo < hi <= sample_rate / 2) or hi - lo < 2 * top:
            raise ValueError(f"band: {band!r} Hz must lie in (0, {sample_rate / 2:g}] Hz and be at least twice the "
                             f"highest line ({top:.0f} Hz) wide")
        k1, k2 = int(round(lo / plan.df)), int(round(hi / plan.df))
        envs, sks = [], []
        for spec in specs:
            env = _envelope(spec[k1:k2], 1 << math.ceil(math.log2(2 * (k2 - k1) + 1)), n)[:, None, :]
            mean = env.mean(axis=2)
            envs.append(env)
            sks.append((env * env).mean(axis=2) / np.maximum(mean * mean, 1e-300) - 2.0)
        band_hz = [(lo, hi)]
        band_index = [-1]
    else:
        envs, sks = zip(*(_band_envelopes(spec, n, plan) for spec in specs), strict=True)
        band_hz = [(a * plan.df, b * plan.df) for a, b in plan.bands]
        band_index = list(range(len(plan.bands)))
    sk = sks[0] if nw == 1 else np.mean(sks, axis=0)  # (C, B)
    if band is None and band_rule == "kurtosis":
        chosen = [int(np.argmax(sk[ch])) for ch in range(c)]
        ses = _mean_ses([np.stack([env[ch, j] for ch, j in enumerate(chosen)]) for env in envs])  # (C, m/2)
        judged = [{j: _judge(ses[ch], plan, nw)} for ch, j in enumerate(chosen)]
    else:
        ses = _mean_ses(envs)  # (C, B, m/2)
        judged = [[_judge(ses[ch, j], plan, nw) for j in range(ses.shape[1])] for ch in range(c)]
        chosen = [0 if band is not None else int(np.argmin([min(jd.family_logp.values()) for jd in judged[ch]]))
                  for ch in range(c)]
        searched = 1 if band is not None else len(plan.bands)
    # a band holding only round-off (a pure tone, a calibrator, a signal synthesised without noise) has no envelope
    cut = [(k1, k2) if band is not None else plan.bands[j] for j in chosen]
    energy = sum(np.sum(sp.real**2 + sp.imag**2, axis=0) for sp in specs)  # (C,)
    quiet = [ch for ch, (a, b) in enumerate(cut)
             if not sum(float(np.sum(np.abs(sp[a:b, ch]) ** 2)) for sp in specs) > QUIET_BAND * energy[ch]]
    freqs = _scaled(geometry, speed)[0]
    log_alpha = math.log(ALPHA_DEFECT / searched)
    bound = None if baseline is None else baseline.family_bound(nw)
    evidence: list[DefectEvidence] = []
    shaft: list[tuple[LineEvidence, ...]] = []
    for ch, j in enumerate(chosen):
        jd = judged[ch][j]
        known = baseline is not None and band_index[j] >= 0
        base = baseline.levels[ch, band_index[j]] if known else None
        lines = [_line_evidence(i, jd, base, plan) for i in range(len(plan.lines))]
        shaft.append(tuple(ev for ev, ln in zip(lines, plan.lines, strict=True) if ln.family == "shaft"))
        for f, d in enumerate(DEFECTS):
            idx = plan.family_lines[d]
            fam = tuple(ev for ev, ln in zip(lines, plan.lines, strict=True) if ln.family == d)
            bdb = None
            if known and idx:
                num, den = float(jd.ratio[list(idx)].sum()), float(bound[ch, band_index[j], f])
                bdb = 10 * math.log10(num / den) if num > 0 and den > 0 else (99.0 if num > 0 else 0.0)
            lp = jd.family_logp[d]
            present = bool(idx) and lp < log_alpha and (bdb is None or bdb >= BASELINE_DB) and ch not in quiet
            evidence.append(DefectEvidence(d, PARTS[d], freqs[d], ch, present, -lp / math.log(10), bdb,
                                           sum(ev.stands_out for ev in fam), len(idx), fam,
                                           plan.cage_note if d == "ftf" else ""))
    verdict, defect, channel = _verdict(evidence)
    cname = None if channel is None else names[channel]
    summary = _summary(verdict, defect, channel, cname, evidence, shaft, names)
    if nw > 1:
        summary += f" [{nw} windows averaged]"
    if speed != 1.0:
        summary += (f" [shaft measured at {geometry.shaft_frequency * speed:.2f} Hz, {speed - 1:+.1%} from the configured "
                    "speed]")
    quiet_note = quiet and (f"{', '.join(names[ch] for ch in quiet)}: not analysed, no vibration in the envelope band "
                            f"(below {QUIET_BAND:g} of the window's energy: a pure tone, a calibrator or a signal "
                            "without noise; check the sensor)")
    notes = tuple(v for v in (speed_note, plan.cage_note, quiet_note) if v)
    return BearingReport(verdict, defect, channel, cname, summary, tuple(band_hz[j] for j in chosen),
                         tuple(float(sk[ch, j]) for ch, j in enumerate(chosen)), tuple(evidence), tuple(shaft),
                         baseline is not None, notes, nw, geometry.shaft_frequency * speed)


def _mean_ses(envs: Sequence[np.ndarray]) -> np.ndarray:
    """The mean SES (..., m/2) of K windows' squared envelopes, each (..., m)."""
    if len(envs) == 1:
        return _ses(envs[0])
    total = _ses(envs[0])
    for env in envs[1:]:
        total += _ses(env)
    return total / len(envs)


def _line_evidence(i: int, jd: _Judged, base: np.ndarray | None, plan: _Plan) -> LineEvidence:
    ln = plan.lines[i]
    if plan.unusable[i]:
        return LineEvidence(ln.name, ln.hz, None, None, None, None, False, plan.unusable[i])
    prom = 10 * math.log10(jd.peak[i] / jd.floor[i]) if jd.peak[i] > 0 and jd.floor[i] > 0 else None
    bdb = None
    if base is not None:
        bdb = 10 * math.log10(jd.ratio[i] / base[i]) if jd.ratio[i] > 0 and base[i] > 0 else None
    if jd.found[i] == -2:
        return LineEvidence(ln.name, ln.hz, None, prom, 1.0, bdb, False, "not counted: the peak lies on a shaft "
                            "harmonic (looseness, rub)")
    if jd.found[i] < 0:
        return LineEvidence(ln.name, ln.hz, None, prom, 1.0, bdb, False, "no peak: the interval's largest bin is "
                            "the flank of a line outside it")
    p = math.exp(jd.logp[i])
    out = p < ALPHA_LINE and (bdb is None or bdb >= LINE_BASELINE_DB)
    return LineEvidence(ln.name, ln.hz, float(jd.found[i] * plan.df), prom, p, bdb, out)


def _verdict(evidence: list[DefectEvidence]) -> tuple[str, str | None, int | None]:
    """The defect with the strongest evidence; a cage pattern on a channel with a rolling-element one is the
    latter's modulation (a damaged ball is loaded once per cage turn), not a second finding."""
    present = [e for e in evidence if e.present]
    ball_channels = {e.channel for e in present if e.defect == "bsf"}
    present = [e for e in present if not (e.defect == "ftf" and e.channel in ball_channels)]
    if not present:
        return NO_PATTERN, None, None
    best = max(present, key=lambda e: e.evidence)
    return f"likely {best.part}", best.defect, best.channel


def _summary(verdict, defect, channel, cname, evidence, shaft, names) -> str:
    if defect is None:
        loud = [names[ch] for ch, lines in enumerate(shaft) if sum(ln.stands_out for ln in lines) >= MIN_LINES]
        return NO_PATTERN + (f"; shaft-rate lines stand out on {', '.join(loud)} (looseness, rub, a loose mount?)"
                             if loud else "")
    e = next(x for x in evidence if x.defect == defect and x.channel == channel)
    others = [x for x in evidence if x.present and x is not e
              and not (x.defect == "ftf" and any(y.present and y.defect == "bsf" and y.channel == x.channel
                                                 for y in evidence))]
    same = [names[x.channel] for x in others if x.defect == defect]
    also = ([f"the same on {', '.join(same)}"] if same else []) + [
        f"also {x.part} on {names[x.channel]}" for x in others if x.defect != defect]
    lines = ", ".join(f"{x.name} +{x.prominence_db:.0f} dB" for x in e.lines if x.stands_out)
    base = f", {e.baseline_db:+.0f} dB over healthy" if e.baseline_db is not None else ""
    return (f"{verdict}: {e.defect.upper()} {e.frequency_hz:.1f} Hz pattern on {cname} "
            f"(evidence {e.evidence:.1f}{base}; lines over the floor: {lines or 'none alone'})"
            + (f"; {'; '.join(also)}" if also else ""))
