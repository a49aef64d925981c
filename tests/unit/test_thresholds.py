"""Unit tests of monitor.thresholds: warm-up, each method's value, convergence, snapshots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from libspot import Spot

from monitor.thresholds import (
    EWMAThreshold,
    QuantileThreshold,
    SpotThreshold,
    Threshold,
    ThresholdConfig,
    _fit_gpd,
    make_threshold,
    threshold_from_snapshot,
)

METHODS = ["quantile", "ewma", "spot"]


def run(threshold: Threshold, scores: np.ndarray) -> float:
    """Classify and learn like the pipeline does; return the exceedance rate."""
    exceedances = 0
    for x in scores:
        if threshold.classify(x):
            exceedances += 1
            threshold.learn_anomalous(x)
        else:
            threshold.learn_one(x)
    return exceedances / len(scores)


def test_make_threshold_picks_the_class() -> None:
    assert isinstance(make_threshold(ThresholdConfig()), SpotThreshold)
    assert isinstance(make_threshold(ThresholdConfig(method="quantile")), QuantileThreshold)
    assert isinstance(make_threshold(ThresholdConfig(method="ewma")), EWMAThreshold)


@pytest.mark.parametrize("method", METHODS)
def test_warm_up_never_alarms_and_never_raises(method: str) -> None:
    threshold = make_threshold(ThresholdConfig(method=method, min_warm_scores=50))
    assert threshold.value is None
    assert threshold.classify(1e9) is False
    threshold.warm_start(np.arange(20, dtype=float))  # fewer than min_warm_scores
    assert threshold.value is None and threshold.classify(1e9) is False
    threshold.learn_anomalous(1e9)  # ignored while warming up
    rng = np.random.default_rng(0)
    for x in rng.exponential(size=29):
        threshold.learn_one(float(x))
        assert threshold.value is None
    threshold.learn_one(0.5)  # the 50th score: ready
    assert threshold.value is not None and math.isfinite(threshold.value)
    assert threshold.classify(1e9) is True
    for bad in (float("nan"), None, "x"):
        assert threshold.classify(bad) is False  # type: ignore[arg-type]
        threshold.learn_one(bad)  # type: ignore[arg-type]
    assert threshold.classify(float("inf")) is True


@pytest.mark.parametrize("method", METHODS)
def test_warm_start_ignores_non_finite_scores_and_resets(method: str) -> None:
    config = ThresholdConfig(method=method, min_warm_scores=100)
    rng = np.random.default_rng(1)
    scores = rng.exponential(size=500)
    clean = make_threshold(config)
    clean.warm_start(scores)
    dirty = make_threshold(config)
    dirty.warm_start(np.concatenate([[np.nan, np.inf], scores, [-np.inf]]))
    assert dirty.value == clean.value
    dirty.warm_start(scores * 100)  # a new model: the old state is forgotten
    assert dirty.value is not None and clean.value is not None
    assert dirty.value > 10 * clean.value


def test_quantile_equals_numpy_on_the_rolling_history() -> None:
    config = ThresholdConfig(method="quantile", quantile=0.9, min_warm_scores=10, history=200)
    threshold = make_threshold(config)
    rng = np.random.default_rng(2)
    warm = rng.normal(size=150)
    threshold.warm_start(warm)
    assert threshold.value == pytest.approx(np.quantile(warm, 0.9), rel=1e-12)
    more = rng.normal(size=300)
    for x in more:
        threshold.learn_one(float(x))
    recent = np.concatenate([warm, more])[-200:]
    assert threshold.value == pytest.approx(np.quantile(recent, 0.9), rel=1e-12)


def test_quantile_converges_to_the_target_on_stationary_data() -> None:
    config = ThresholdConfig(method="quantile", quantile=0.99, history=5000)
    threshold = make_threshold(config)
    rng = np.random.default_rng(3)
    threshold.warm_start(rng.normal(size=2000))
    rate = run(threshold, rng.normal(size=30_000))
    # Anomalies enter as censored: the rate stays near 1 - q instead of ratcheting up.
    assert 0.007 < rate < 0.015
    assert threshold.value == pytest.approx(2.326, abs=0.12)


def test_quantile_without_censoring_would_ratchet_down() -> None:
    config = ThresholdConfig(method="quantile", quantile=0.99, history=5000)
    threshold = make_threshold(config)
    rng = np.random.default_rng(3)
    threshold.warm_start(rng.normal(size=2000))
    for x in rng.normal(size=30_000):
        if not threshold.classify(x):
            threshold.learn_one(float(x))
    assert threshold.value is not None and threshold.value < 2.0  # why learn_anomalous exists


def test_quantile_is_not_raised_by_a_long_anomaly() -> None:
    config = ThresholdConfig(method="quantile", quantile=0.99, min_warm_scores=100, history=1000)
    threshold = make_threshold(config)
    rng = np.random.default_rng(4)
    threshold.warm_start(rng.normal(size=1000))
    before = threshold.value
    assert before is not None
    run(threshold, np.full(300, 50.0))  # a level shift far above
    assert threshold.value is not None and threshold.value <= max(before, 4.0)
    assert threshold.classify(50.0)


def test_ewma_converges_to_median_plus_k_sigma() -> None:
    config = ThresholdConfig(method="ewma", ewma_k=3.0, ewma_alpha=0.01)
    threshold = make_threshold(config)
    rng = np.random.default_rng(5)
    threshold.warm_start(rng.normal(loc=10.0, scale=5.0, size=500))  # a poor start
    run(threshold, rng.normal(loc=1.0, scale=1.0, size=20_000))
    assert threshold.value == pytest.approx(1.0 + 3.0, abs=0.3)


def test_ewma_outlier_moves_it_by_a_bounded_step() -> None:
    config = ThresholdConfig(method="ewma", min_warm_scores=100)
    threshold = make_threshold(config)
    threshold.warm_start(np.random.default_rng(6).normal(size=1000))
    before = threshold.value
    threshold.learn_one(1e12)
    assert threshold.value is not None and before is not None
    # At most alpha * (c + k * (1.2545 * c - 1)) spreads: 0.01 * (3 + 4 * 2.76) ~ 0.14.
    assert abs(threshold.value - before) < 0.15 * 1.2


def test_fit_gpd_equals_libspots_own_fit() -> None:
    rng = np.random.default_rng(7)
    data = rng.exponential(size=3000)
    spot = Spot(q=1e-3, level=0.98, max_excess=1000)
    spot.fit(data)
    gamma, sigma = _fit_gpd(list(spot.excesses()))
    assert (gamma, sigma) == (spot.gamma, spot.sigma)


def test_spot_value_follows_the_papers_formula() -> None:
    config = ThresholdConfig(method="spot", spot_q=1e-3, spot_level=0.98, min_warm_scores=100)
    threshold = make_threshold(config)
    assert isinstance(threshold, SpotThreshold)
    scores = np.random.default_rng(8).exponential(size=5000)
    threshold.warm_start(scores)
    tail = threshold.tail
    t = np.quantile(scores, 0.98)
    assert tail["t"] == t and tail["n"] == 5000 and tail["Nt"] == int(np.sum(scores > t))
    gamma, sigma = float(tail["gamma"]), float(tail["sigma"])  # type: ignore[arg-type]
    ratio = 1e-3 * 5000 / tail["Nt"]  # type: ignore[operator]
    assert threshold.value == pytest.approx(t + sigma / gamma * (ratio**-gamma - 1))


def test_spot_warm_start_estimates_the_extreme_quantile() -> None:
    config = ThresholdConfig(method="spot", spot_q=1e-4, spot_max_excess=2000)
    rng = np.random.default_rng(9)
    estimates = []
    for _ in range(5):
        threshold = make_threshold(config)
        threshold.warm_start(rng.exponential(size=50_000))
        estimates.append(threshold.value)
    # Exponential(1): P(X > z) = 1e-4 at z = ln(1e4) = 9.21.
    assert float(np.median(estimates)) == pytest.approx(math.log(1e4), rel=0.08)


def test_spot_streaming_keeps_the_target_risk() -> None:
    rng = np.random.default_rng(10)
    warm, stream = rng.exponential(size=5000), rng.exponential(size=40_000)
    rates = {}
    for impute in (True, False):
        config = ThresholdConfig(method="spot", spot_q=1e-3, spot_impute_censored=impute)
        threshold = make_threshold(config)
        threshold.warm_start(warm)
        rates[impute] = run(threshold, stream)
    # Target 1e-3. Leaving the exceedances out of the tail (SPOT's rule) biases the realised
    # rate upward; imputing censored peaks at the nominal rate removes most of it.
    assert 5e-4 < rates[True] < 2e-3
    assert rates[True] < rates[False]


def test_spot_is_not_raised_by_a_long_anomaly() -> None:
    threshold = make_threshold(ThresholdConfig(method="spot", spot_q=1e-4))
    rng = np.random.default_rng(13)
    threshold.warm_start(rng.exponential(size=5000))
    before = threshold.value
    assert run(threshold, np.full(3000, 30.0)) == 1.0
    assert threshold.value == before
    assert isinstance(threshold, SpotThreshold) and threshold.tail["censored"] == 3000


def test_dspot_follows_a_drifting_level() -> None:
    rng = np.random.default_rng(11)
    n = 6000
    scores = np.linspace(0.0, 30.0, n) + rng.exponential(size=n)
    config = ThresholdConfig(method="spot", spot_q=1e-3, spot_depth=50, min_warm_scores=1000)
    dspot = make_threshold(config)
    dspot.warm_start(rng.exponential(size=2000))
    assert run(dspot, scores) < 0.01
    assert dspot.value is not None and 30.0 < dspot.value < 40.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("depth", [0, 20])
def test_snapshot_restore_continue_is_exact(method: str, depth: int) -> None:
    config = ThresholdConfig(method=method, min_warm_scores=200, history=500, spot_depth=depth)
    rng = np.random.default_rng(12)
    scores = np.concatenate([rng.gamma(2.0, size=1500), rng.gamma(2.0, size=100) + 8])
    whole = make_threshold(config)
    whole.warm_start(scores[:100])  # too few: warms up online
    values = []
    for x in scores:
        values.append(whole.value)
        (whole.learn_anomalous if whole.classify(x) else whole.learn_one)(float(x))
    for cut in (0, 50, 150, 700, 1550):
        part = make_threshold(config)
        part.warm_start(scores[:100])
        got = []
        for i, x in enumerate(scores):
            if i == cut:
                part = threshold_from_snapshot(config, json.loads(json.dumps(part.snapshot())))
            got.append(part.value)
            (part.learn_anomalous if part.classify(x) else part.learn_one)(float(x))
        assert got == values


def test_snapshot_of_another_method_is_refused() -> None:
    snapshot = make_threshold(ThresholdConfig(method="quantile")).snapshot()
    with pytest.raises(ValueError, match="config"):
        threshold_from_snapshot(ThresholdConfig(method="spot"), snapshot)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "median"}, "method"),
        ({"min_warm_scores": 1}, "min_warm_scores"),
        ({"history": 10}, "history"),
        ({"quantile": 1.0}, "quantile"),
        ({"ewma_k": 0.0}, "ewma_k"),
        ({"ewma_alpha": 0.0}, "ewma_alpha"),
        ({"spot_q": 0.05}, "spot_q"),
        ({"spot_level": 1.5}, "spot_level"),
        ({"spot_max_excess": 2}, "spot_max_excess"),
        ({"spot_depth": -1}, "spot_depth"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ThresholdConfig(**kwargs)


def test_config_round_trips_through_a_dict() -> None:
    config = ThresholdConfig(method="ewma", ewma_k=3.5)
    assert ThresholdConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="mehtod"):
        ThresholdConfig.from_dict({"mehtod": "spot"})
