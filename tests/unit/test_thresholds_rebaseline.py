"""Unit tests of ThresholdConfig.rebaseline_after: a lasting new level becomes the new normal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.thresholds import ThresholdConfig, make_threshold, threshold_from_snapshot
from tests.unit.test_thresholds import METHODS, run


@pytest.mark.parametrize("method", METHODS)
def test_a_level_shift_is_accepted_after_n_anomalous_windows(method: str) -> None:
    config = ThresholdConfig(method=method, spot_q=1e-3, rebaseline_after=50)
    rng = np.random.default_rng(0)
    threshold = make_threshold(config)
    threshold.warm_start(rng.exponential(size=2000))
    shifted = 30.0 + rng.exponential(size=2000)
    flags = []
    for x in shifted:
        flags.append(threshold.classify(x))
        (threshold.learn_anomalous if flags[-1] else threshold.learn_one)(float(x))
    assert all(flags[:50])  # the first n windows of the new level are anomalous
    assert np.mean(flags[100:]) < 0.05  # then it is the normal level
    assert threshold.value is not None and threshold.value > 30.0
    assert threshold.classify(60.0)  # and a spike above the new level is still anomalous


@pytest.mark.parametrize("method", METHODS)
def test_default_never_rebaselines(method: str) -> None:
    config = ThresholdConfig(method=method, spot_q=1e-3)
    assert config.rebaseline_after == 0
    threshold = make_threshold(config)
    threshold.warm_start(np.random.default_rng(1).exponential(size=2000))
    assert run(threshold, np.full(3000, 30.0)) == 1.0


def test_a_normal_window_restarts_the_count() -> None:
    config = ThresholdConfig(method="spot", spot_q=1e-3, rebaseline_after=10)
    threshold = make_threshold(config)
    threshold.warm_start(np.random.default_rng(2).exponential(size=2000))
    for _ in range(5):
        for _ in range(9):  # 9 anomalous windows, never 10 in a row
            threshold.learn_anomalous(30.0)
        threshold.learn_one(0.5)
    # Still the old level's tail (censored peaks may nudge SPOT up a little), not the anomaly's.
    assert threshold.value is not None and threshold.value < 10.0
    assert threshold.classify(30.0)


def test_non_finite_scores_do_not_count() -> None:
    config = ThresholdConfig(method="quantile", rebaseline_after=3)
    threshold = make_threshold(config)
    threshold.warm_start(np.arange(1000, dtype=float) / 1000)
    for x in (5.0, float("nan"), 6.0, float("inf")):
        threshold.learn_anomalous(x)
    assert threshold.classify(5.5)
    threshold.learn_anomalous(7.0)  # the third finite one
    assert threshold.value is not None and 5.0 < threshold.value <= 7.0


@pytest.mark.parametrize("method", METHODS)
def test_snapshot_in_the_middle_of_a_streak_is_exact(method: str) -> None:
    config = ThresholdConfig(method=method, min_warm_scores=200, rebaseline_after=40)
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.gamma(2.0, size=600), rng.gamma(2.0, size=400) + 20])
    whole = make_threshold(config)
    whole.warm_start(scores[:300])
    values = []
    for x in scores:
        values.append(whole.value)
        (whole.learn_anomalous if whole.classify(x) else whole.learn_one)(float(x))
    for cut in (620, 639, 700):
        part = make_threshold(config)
        part.warm_start(scores[:300])
        got = []
        for i, x in enumerate(scores):
            if i == cut:
                part = threshold_from_snapshot(config, json.loads(json.dumps(part.snapshot())))
            got.append(part.value)
            (part.learn_anomalous if part.classify(x) else part.learn_one)(float(x))
        assert got == values


@pytest.mark.parametrize("bad", [-1, 1, 2.5, True])
def test_rebaseline_after_is_validated(bad: object) -> None:
    with pytest.raises(ValueError, match="rebaseline_after"):
        ThresholdConfig(rebaseline_after=bad)  # type: ignore[arg-type]
    config = ThresholdConfig(rebaseline_after=64)
    assert ThresholdConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_provisional_threshold_from_a_burst_comes_down_once_the_new_level_is_known() -> None:
    # A burst of spikes rebaselines the threshold at the spikes' level; once min_warm_scores
    # scores of the new level are known, it restarts from all of them, where the burst is rarer
    # than the risk q, so spikes are anomalous again. (SPOT needs this: its tail never comes
    # down by itself; the quantile and EWMA methods forget the burst as they learn.)
    config = ThresholdConfig(method="spot", spot_q=1e-2, rebaseline_after=5, min_warm_scores=3000)
    rng = np.random.default_rng(4)
    threshold = make_threshold(config)
    threshold.warm_start(rng.exponential(size=2000))
    for x in 50.0 + rng.exponential(size=5):
        assert threshold.classify(x)
        threshold.learn_anomalous(float(x))
    provisional = threshold.value
    assert provisional is not None and provisional > 50.0  # the burst is the new normal
    run(threshold, 2.0 + rng.exponential(size=2994))  # 5 + 2994 scores of the new level
    assert threshold.value == provisional
    threshold.learn_one(2.5)  # the 3000th: restart from all of them
    assert threshold.value is not None and 2.0 < threshold.value < 10.0
    assert threshold.classify(50.0)
