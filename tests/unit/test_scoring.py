"""Tests of monitor.scoring: NAB's scoring rules for binary alarms, and event metrics.

Expected values come from three places: hand computation with NAB's scaled sigmoid, NAB's own
test suite (tests/integration/*_test.py in numenta/NAB, ported here with the same numbers), and
a row-by-row transcription of NAB's sweep (``_nab_sweep_reference``) used as an oracle for
random streams.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.scoring import (
    PROFILES,
    Profile,
    StreamResult,
    event_metrics,
    label_windows,
    nab_scores,
    probation_rows,
    scaled_sigmoid,
    score_stream,
    summary_table,
)

UNIT = {"unit": Profile("unit", tp=1.0, fp=1.0, fn=1.0, tn=1.0)}
SAMPLES = Path(__file__).resolve().parents[2] / "sample_streams" / "nab"


def _times(rows: int) -> pd.DatetimeIndex:
    return pd.date_range("2014-04-01", periods=rows, freq="5min", tz="UTC")


def _alarms(rows: int, *at: int) -> np.ndarray:
    alarms = np.zeros(rows, dtype=np.int64)
    alarms[list(at)] = 1
    return alarms


def _s(x: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def _nab_sweep_reference(
    times: list[int], alarms: list[int], windows: list[tuple[int, int]], probation: float
) -> dict[str, float]:
    """Row by row, the way NAB's Sweeper.calcSweepScore / calcScoreByThreshold score a file."""
    max_tp = _s(-1.0)
    first_scored = min(math.floor(probation * len(times)), probation * 5000)
    pending = list(windows)
    current = None
    right = width = prev_right = prev_width = None
    points = []  # (row, alarmed, window name or None, unit tp score, unit fp score)
    for i, t in enumerate(times):
        if pending and t == pending[0][0]:
            current = pending.pop(0)
            right = times.index(current[1])
            width = right - times.index(current[0]) + 1
        if current is not None:
            unit_tp, unit_fp = _s(-(right - i + 1) / width) / max_tp, None
        elif prev_right is None:
            unit_tp, unit_fp = None, -1.0
        else:
            distance = abs(prev_right - i) / (prev_width - 1)
            unit_tp, unit_fp = None, (-1.0 if distance > 3.0 else _s(distance))
        if i >= first_scored:
            points.append((i, alarms[i], None if current is None else current[0], unit_tp, unit_fp))
        if current is not None and t == current[1]:
            prev_right, prev_width = i, width
            current = None
    scores = {}
    for key, p in PROFILES.items():
        parts: dict[object, float] = {"fp": 0.0}
        for _, _, window, _, _ in points:
            if window is not None:
                parts[window] = -p.fn
        for _, alarmed, window, unit_tp, unit_fp in points:
            if not alarmed:
                continue
            if window is None:
                parts["fp"] += p.fp * unit_fp
            else:
                parts[window] = max(parts[window], p.tp * unit_tp)
        scores[key] = sum(parts.values())
    return scores


# --- the pieces: profiles, sigmoid, probation ------------------------------------------------


def test_profiles_are_nabs_cost_matrices() -> None:
    assert PROFILES["standard"] == Profile("standard", tp=1.0, fp=0.11, fn=1.0, tn=1.0)
    assert PROFILES["reward_low_FP_rate"] == Profile(
        "reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0, tn=1.0
    )
    assert PROFILES["reward_low_FN_rate"] == Profile(
        "reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0, tn=1.0
    )
    assert list(PROFILES) == ["standard", "reward_low_FP_rate", "reward_low_FN_rate"]


@pytest.mark.parametrize(
    ("position", "expected"),
    [(-1.0, 0.98661), (-0.5, 0.84828), (0.0, 0.0), (1.0, -0.98661), (3.0, -0.99999), (3.01, -1.0)],
)
def test_scaled_sigmoid_matches_nab_docstring_values(position: float, expected: float) -> None:
    assert scaled_sigmoid(position) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("rows", "fraction", "expected"),
    # NAB's own table (sweeper_test.py) plus the 15 % / 750-row cap the scoreboard uses.
    [
        (100, 0.0, 0),
        (100, 1.0, 100),
        (100, 0.1, 10),
        (100, 0.15, 15),
        (5000, 0.1, 500),
        (6000, 0.1, 500),
        (4032, 0.15, 604),
        (22695, 0.15, 750),
        (7, 0.15, 1),
    ],
)
def test_probation_rows(rows: int, fraction: float, expected: int) -> None:
    assert probation_rows(rows, fraction) == expected


def test_probation_rows_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="probation"):
        probation_rows(100, 1.5)


# --- one stream, hand-computed ---------------------------------------------------------------


def test_detection_at_window_start_scores_the_tp_weight() -> None:
    times = _times(100)
    result = score_stream(times, _alarms(100, 40), [(times[40], times[49])], probation=0.15)
    for key, profile in PROFILES.items():
        assert result.raw_scores[key] == pytest.approx(profile.tp, rel=1e-12)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (1, 0, 0)
    assert result.delays == ((0, 0.0),)


def test_later_detection_in_window_scores_less_and_by_the_sigmoid() -> None:
    times = _times(100)
    window = [(times[40], times[49])]  # width 10
    middle = score_stream(times, _alarms(100, 45), window)
    last = score_stream(times, _alarms(100, 49), window)
    assert middle.raw_scores["standard"] == pytest.approx(_s(-5 / 10) / _s(-1.0))
    assert last.raw_scores["standard"] == pytest.approx(_s(-1 / 10) / _s(-1.0))
    assert 1.0 > middle.raw_scores["standard"] > last.raw_scores["standard"] > 0.0
    assert middle.delays == ((5, 1500.0),)


def test_only_the_first_detection_in_a_window_counts() -> None:
    times = _times(100)
    window = [(times[40], times[49])]
    once = score_stream(times, _alarms(100, 42), window)
    thrice = score_stream(times, _alarms(100, 42, 43, 49), window)
    assert thrice.raw_scores == once.raw_scores
    assert thrice.true_positives == 1 and thrice.false_positives == 0
    assert thrice.detections == 3


def test_detection_after_window_end_is_a_false_positive() -> None:
    times = _times(100)
    window = [(times[40], times[49])]  # width 10: distance past it is measured in 9ths
    result = score_stream(times, _alarms(100, 52), window)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (0, 1, 1)
    for key, p in PROFILES.items():
        assert result.raw_scores[key] == pytest.approx(-p.fn + p.fp * _s(3 / 9))
    far = score_stream(times, _alarms(100, 90), window)  # 41/9 > 3: the full FP cost
    assert far.raw_scores["standard"] == pytest.approx(-1.0 - 0.11)


def test_false_positive_before_any_window_costs_the_full_fp_weight() -> None:
    times = _times(100)
    result = score_stream(times, _alarms(100, 20), [(times[60], times[69])])
    for key, p in PROFILES.items():
        assert result.raw_scores[key] == pytest.approx(-p.fp - p.fn)


def test_nab_scoring_all_metrics_example() -> None:
    """NAB scorer_test.testScoringAllMetrics: TP, extra TP, FP and a missed window: -0.9540."""
    times = _times(100)
    windows = [(times[30], times[34]), (times[65], times[69])]
    result = score_stream(times, _alarms(100, 30, 31, 37), windows, probation=0.0, profiles=UNIT)
    assert result.raw_scores["unit"] == pytest.approx(-0.9540, abs=5e-5)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (1, 1, 1)


def test_nab_tp_at_right_edge_and_fp_just_after_cancel() -> None:
    """NAB true_positive_test: TP on a window's last row + FP on the next row + 1 (miss) = 0."""
    times = _times(1000)
    window = [(times[450], times[549])]
    at_edge = score_stream(times, _alarms(1000, 549), window, probation=0.0, profiles=UNIT)
    after = score_stream(times, _alarms(1000, 550), window, probation=0.0, profiles=UNIT)
    assert at_edge.raw_scores["unit"] + after.raw_scores["unit"] + 1 == pytest.approx(0, abs=1e-3)


def test_probation_alarms_are_ignored() -> None:
    times = _times(1000)  # probation: 150 rows
    window = [(times[600], times[649])]
    quiet = score_stream(times, _alarms(1000), window)
    noisy = score_stream(times, _alarms(1000, 0, 10, 149), window)
    assert noisy.raw_scores == quiet.raw_scores
    assert noisy.detections == 0 and noisy.false_positives == 0
    assert noisy.probation_rows == 150 and noisy.scored_rows == 850
    counted = score_stream(times, _alarms(1000, 150), window)
    assert counted.false_positives == 1


def test_window_inside_probation_is_neither_hit_nor_miss() -> None:
    times = _times(1000)
    windows = [(times[50], times[59]), (times[600], times[649])]
    result = score_stream(times, _alarms(1000, 50), windows)
    assert result.windows == 2 and result.scored_windows == 1
    assert (result.true_positives, result.false_negatives) == (0, 1)
    assert result.null_scores["standard"] == -1.0
    # As NAB's normalisation: the perfect score counts every labelled window.
    assert result.perfect_scores["standard"] == 2.0


def test_timezones_and_naive_labels_agree() -> None:
    naive = pd.date_range("2014-04-01", periods=200, freq="5min")
    aware = naive.tz_localize("UTC")
    labels = {"s.csv": [[str(naive[80]), str(naive[99])]]}
    windows = label_windows(labels, "s.csv")
    assert windows[0][0] == aware[80] and windows[0][0].tzinfo is not None
    alarms = _alarms(200, 85, 150)
    assert (
        score_stream(pd.Series(naive), alarms, windows).raw_scores
        == score_stream(aware, alarms, windows).raw_scores
    )
    berlin = aware.tz_convert("Europe/Berlin")
    assert (
        score_stream(berlin, alarms, windows).raw_scores
        == score_stream(aware, alarms, windows).raw_scores
    )


def test_out_of_order_and_repeated_stamps_follow_nab() -> None:
    """Some NAB files repeat or step back a timestamp; NAB matches window limits by equality."""
    times = _times(60)
    stamps = times.to_series().reset_index(drop=True)
    stamps[10] = times[45]  # a later stamp early in the file
    stamps[55] = times[49]  # the window's end stamp again, after the window
    window = [(times[40], times[49])]
    result = score_stream(stamps, _alarms(60, 12, 55), window, probation=0.0)
    for key, p in PROFILES.items():
        # Row 12 precedes the window (entered on row 40, not row 10): full FP cost. Row 55 is
        # outside it, 6 rows past its end at row 49, width 10.
        assert result.raw_scores[key] == pytest.approx(-p.fn - p.fp + p.fp * _s(6 / 9))
    reference = _nab_sweep_reference(
        pd.DatetimeIndex(stamps).as_unit("ns").asi8.tolist(),
        _alarms(60, 12, 55).tolist(),
        [(times[40].value, times[49].value)],
        0.0,
    )
    assert result.raw_scores == pytest.approx(reference)


def test_label_windows_unknown_stream() -> None:
    with pytest.raises(KeyError, match=r"nope\.csv"):
        label_windows({"a.csv": []}, "nope.csv")


def test_window_limit_must_be_a_reading() -> None:
    times = _times(100)
    with pytest.raises(ValueError, match="not one of the stream's timestamps"):
        score_stream(times, _alarms(100), [(times[10] + pd.Timedelta("1min"), times[20])])


def test_alarm_length_must_match() -> None:
    with pytest.raises(ValueError, match="shape"):
        score_stream(_times(10), np.zeros(9), [])


# --- normalisation over streams ---------------------------------------------------------------


def _two_streams(first: list[int], second: list[int]) -> list[StreamResult]:
    times = _times(400)
    a = score_stream(times, _alarms(400, *first), [(times[100], times[119])], "cat/a.csv")
    b = score_stream(
        times, _alarms(400, *second), [(times[200], times[209]), (times[300], times[339])], "b.csv"
    )
    return [a, b]


def test_no_detections_normalise_to_zero() -> None:
    assert nab_scores(_two_streams([], [])) == pytest.approx(
        dict.fromkeys(PROFILES, 0.0), abs=1e-12
    )


def test_perfect_detections_normalise_to_hundred() -> None:
    assert nab_scores(_two_streams([100], [200, 300])) == pytest.approx(
        dict.fromkeys(PROFILES, 100.0), abs=1e-9
    )


def test_normalisation_sums_over_streams_before_dividing() -> None:
    results = _two_streams([100], [])  # one of three windows found at its first row
    # raw = 1 - 2 fn, null = -3 fn, perfect = 3: 100 * (1 + fn) / (3 + 3 fn)
    assert nab_scores(results)["standard"] == pytest.approx(100 * 2 / 6)
    assert nab_scores(results)["reward_low_FN_rate"] == pytest.approx(100 * 3 / 9)


def test_streams_without_windows_have_no_normalised_score() -> None:
    times = _times(100)
    result = score_stream(times, _alarms(100, 50), [])
    assert result.raw_scores["standard"] == pytest.approx(-0.11)
    assert all(math.isnan(v) for v in nab_scores([result]).values())


# --- properties --------------------------------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], np.ndarray, float]:
    rows = draw(st.integers(min_value=20, max_value=160))
    cuts = sorted(draw(st.sets(st.integers(0, rows - 1), max_size=6)))
    windows = [(cuts[k], cuts[k + 1]) for k in range(0, len(cuts) - 1, 2) if cuts[k + 1] > cuts[k]]
    alarms = np.asarray(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)), dtype=int)
    probation = draw(st.sampled_from([0.0, 0.1, 0.15, 0.3]))
    return rows, windows, alarms, probation


def _score(rows: int, windows: list[tuple[int, int]], alarms: np.ndarray, probation: float):
    times = _times(rows)
    return score_stream(times, alarms, [(times[a], times[b]) for a, b in windows], "p", probation)


@settings(max_examples=150, deadline=None)
@given(streams())
def test_matches_a_row_by_row_transcription_of_nab(stream) -> None:
    rows, windows, alarms, probation = stream
    times = _times(rows).as_unit("ns").asi8.tolist()
    expected = _nab_sweep_reference(
        times, alarms.tolist(), [(times[a], times[b]) for a, b in windows], probation
    )
    assert _score(*stream).raw_scores == pytest.approx(expected, abs=1e-9)


def _outside_free_rows(rows, windows, alarms, probation):
    inside = np.zeros(rows, dtype=bool)
    for a, b in windows:
        inside[a : b + 1] = True
    scored = np.arange(rows) >= probation_rows(rows, probation)
    return np.flatnonzero(~inside & scored & (alarms == 0)), inside, scored


@settings(max_examples=100, deadline=None)
@given(streams(), st.data())
def test_an_extra_alarm_outside_windows_never_raises_the_score(stream, data) -> None:
    rows, windows, alarms, probation = stream
    free, _, _ = _outside_free_rows(*stream)
    if free.size == 0:
        return
    extra = alarms.copy()
    extra[data.draw(st.sampled_from(free.tolist()))] = 1
    before, after = (
        _score(rows, windows, alarms, probation),
        _score(rows, windows, extra, probation),
    )
    for key in PROFILES:
        assert after.raw_scores[key] < before.raw_scores[key]
        before_n, after_n = nab_scores([before])[key], nab_scores([after])[key]
        assert math.isnan(before_n) or after_n < before_n
    assert after.false_positives == before.false_positives + 1


@settings(max_examples=100, deadline=None)
@given(streams(), st.data())
def test_an_extra_alarm_inside_a_window_never_lowers_the_score(stream, data) -> None:
    rows, windows, alarms, probation = stream
    _, inside, scored = _outside_free_rows(*stream)
    free = np.flatnonzero(inside & scored & (alarms == 0))
    if free.size == 0:
        return
    extra = alarms.copy()
    extra[data.draw(st.sampled_from(free.tolist()))] = 1
    before, after = (
        _score(rows, windows, alarms, probation),
        _score(rows, windows, extra, probation),
    )
    for key in PROFILES:
        assert after.raw_scores[key] >= before.raw_scores[key]
    assert after.false_positives == before.false_positives


@settings(max_examples=100, deadline=None)
@given(streams())
def test_normalised_score_is_at_most_hundred_and_counts_add_up(stream) -> None:
    result = _score(*stream)
    for value in nab_scores([result]).values():
        assert math.isnan(value) or value <= 100.0 + 1e-9
    assert result.true_positives + result.false_negatives == result.scored_windows
    assert result.true_positives + result.false_positives <= result.detections
    assert len(result.delays) == result.true_positives


# --- event metrics and the summary --------------------------------------------------------------


def test_event_metrics_small_example() -> None:
    times = _times(1000)  # probation 150 rows, 850 scored
    a = score_stream(
        times,
        _alarms(1000, 205, 210, 500, 700),  # window 1 hit after 5 rows, FP at 500 and 700
        [(times[200], times[219]), (times[800], times[819])],  # window 2 missed
        "realKnownCause/a.csv",
    )
    b = score_stream(
        times,
        _alarms(1000, 300),  # hit on the first row
        [(times[300], times[309])],
        "artificialWithAnomaly/b.csv",
    )
    m = event_metrics([a, b])
    assert (m["detected"], m["missed"], m["false_positives"], m["detections"]) == (2, 1, 2, 5)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["mean_delay_rows"] == pytest.approx(2.5)
    assert m["median_delay_rows"] == pytest.approx(2.5)
    assert m["mean_delay_s"] == pytest.approx(750.0)
    assert m["false_alarms_per_1k"] == pytest.approx(1000 * 2 / 1700)

    table = summary_table([a, b])
    assert table["category"].tolist() == ["artificialWithAnomaly", "realKnownCause", "overall"]
    assert table["files"].tolist() == [1, 1, 2]
    overall = table.iloc[-1]
    assert overall["precision"] == pytest.approx(m["precision"])
    assert overall["fa_per_1k"] == pytest.approx(m["false_alarms_per_1k"])
    assert overall["nab_standard"] == pytest.approx(nab_scores([a, b])["standard"])
    assert table.iloc[0]["nab_standard"] == pytest.approx(100.0)
    assert table.iloc[0]["recall"] == 1.0 and table.iloc[0]["fa_per_1k"] == 0.0

    custom = summary_table([a, b], categories=lambda name: "all")
    assert custom["category"].tolist() == ["all", "overall"]


def test_event_metrics_undefined_ratios_are_nan() -> None:
    times = _times(100)
    m = event_metrics([score_stream(times, _alarms(100), [])])
    assert math.isnan(m["precision"]) and math.isnan(m["recall"]) and math.isnan(m["f1"])
    assert math.isnan(m["mean_delay_s"])
    assert m["false_alarms_per_1k"] == 0.0


# --- a real NAB stream from the repository's samples --------------------------------------------


@pytest.mark.skipif(not (SAMPLES / "labels.json").exists(), reason="sample NAB streams absent")
def test_sample_nab_stream_null_and_perfect() -> None:
    name = "artificialWithAnomaly/art_daily_jumpsup.csv"
    frame = pd.read_csv(SAMPLES / name)
    windows = label_windows(json.loads((SAMPLES / "labels.json").read_text()), name)
    times = pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC")
    starts = [int(np.flatnonzero(times == start)[0]) for start, _ in windows]
    null = score_stream(frame["timestamp"], np.zeros(len(frame)), windows, name)
    perfect = score_stream(frame["timestamp"], _alarms(len(frame), *starts), windows, name)
    assert null.probation_rows == 604
    assert null.raw_scores["standard"] == -1.0 * len(windows)
    assert nab_scores([null])["standard"] == pytest.approx(0.0)
    assert nab_scores([perfect])["standard"] == pytest.approx(100.0)
