"""Threshold methods against distributions whose quantiles are known analytically."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.contract import threshold as th


@pytest.fixture
def rng():
    return np.random.default_rng(20240215)


def test_quantile_recovers_true_quantiles(rng):
    exp = rng.exponential(2.0, 50_000)
    assert th.quantile(exp, 0.99).value == pytest.approx(-2.0 * math.log(0.01), rel=0.05)
    gauss = rng.normal(1.0, 0.5, 50_000)
    assert th.quantile(gauss, 0.975).value == pytest.approx(1.0 + 0.5 * 1.959964, rel=0.02)
    r = th.quantile(gauss, 0.995)
    assert r.method == "quantile" and r.params == {"q": 0.995, "n": 50_000}


def test_mean_std_and_max_margin_are_exact():
    s = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    r = th.mean_std(s, k=2.0)
    assert r.value == pytest.approx(3.0 + 2.0 * math.sqrt(2.0))
    assert r.params["mean"] == pytest.approx(3.0) and r.params["k"] == 2.0
    m = th.max_margin(s, margin=1.2)
    assert m.value == pytest.approx(6.0) and m.params["max"] == 5.0


def test_mean_std_default_matches_gaussian_tail(rng):
    gauss = rng.normal(0.1, 0.02, 20_000)
    r = th.calibrate(gauss)  # the default method
    assert r.method == th.DEFAULT_METHOD == "mean_std"
    assert r.value == pytest.approx(0.1 + 4 * 0.02, rel=0.02)


def test_pot_recovers_the_exponential_quantile(rng):
    scores = rng.exponential(1.0, 20_000)
    r = th.pot(scores, risk=1e-3)
    assert r.value == pytest.approx(math.log(1e3), rel=0.10)
    assert abs(r.params["gpd_shape"]) < 0.15  # the exponential tail has shape 0
    assert r.params["n_peaks"] == pytest.approx(400, abs=2)
    # risk beyond the sample: 1e-5 is the 0.99999 quantile, far past the largest of 20 000 scores
    far = th.pot(scores, risk=1e-5)
    assert far.value == pytest.approx(math.log(1e5), rel=0.15)
    assert far.value > scores.max()


def test_pot_on_gaussian_and_uniform_tails(rng):
    assert th.pot(rng.normal(0, 1, 50_000), risk=1e-3).value == pytest.approx(3.0902, rel=0.05)
    uniform = th.pot(rng.uniform(0, 1, 20_000), risk=1e-3)
    assert uniform.params["gpd_shape"] < -0.5  # bounded tail
    assert uniform.value == pytest.approx(0.999, abs=0.002)


def test_gpd_fit_recovers_parameters(rng):
    shape, scale = 0.25, 2.0
    u = rng.random(20_000)
    y = scale / shape * ((1 - u) ** (-shape) - 1)  # inverse CDF of the GPD
    xi, sigma = th.fit_gpd(y)
    assert xi == pytest.approx(shape, abs=0.05)
    assert sigma == pytest.approx(scale, rel=0.05)


@pytest.mark.parametrize("method", th.METHODS)
def test_too_few_scores_are_refused(method):
    with pytest.raises(ValueError, match="at least"):
        th.calibrate(np.ones(5), method)


def test_pot_needs_enough_peaks(rng):
    with pytest.raises(ValueError, match="needs at least 500 healthy scores, got 200"):
        th.pot(rng.exponential(1.0, 200))


def test_bad_input_and_parameters_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        th.quantile(np.array([1.0] * 20 + [np.nan]))
    with pytest.raises(ValueError, match="unknown threshold method 'median'"):
        th.calibrate(np.ones(20), "median")
    with pytest.raises(ValueError, match="q must be"):
        th.quantile(np.ones(20), q=1.5)
    with pytest.raises(ValueError, match="margin"):
        th.max_margin(np.ones(20), margin=0.5)
    assert th.mean_std(np.zeros(20)).value == th.MIN_THRESHOLD  # a constant signal: any change is an anomaly
    with pytest.raises(ValueError, match="risk must be"):
        th.pot(np.ones(1000), risk=0.5)


def test_result_serialises_for_the_manifest(rng):
    d = th.pot(rng.exponential(1.0, 2000)).to_dict()
    assert set(d) == {"method", "value", "params"} and d["method"] == "pot"
    assert all(isinstance(v, int | float) for v in d["params"].values())
    q = th.score_quantiles(np.arange(101.0))
    assert q["q0.5"] == 50.0 and q["q1"] == 100.0


def test_with_floor_raises_a_threshold_and_says_why():
    base = th.mean_std(np.linspace(1.0, 2.0, 50))
    assert th.with_floor(base, base.value / 2, "x") is base
    raised = th.with_floor(base, 10.0, "training windows' q0.99")
    assert raised.value == 10.0 and raised.method == "mean_std"
    assert raised.params["method_value"] == base.value and raised.params["floor_from"] == "training windows' q0.99"
    assert raised.params["k"] == base.params["k"]  # a device calibration still finds the method's own parameters
