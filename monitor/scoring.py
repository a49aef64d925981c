"""Detection quality: the NAB score and event-level metrics of a stream of binary alarms.

Used by ``monitor evaluate``: each evaluated stream yields the rows where an alarm episode opened
(``alarm == 1``); these are scored against the labelled anomaly windows of the Numenta Anomaly
Benchmark so that the numbers are comparable with NAB's published scoreboard.

The NAB rules, as implemented by NAB's ``nab/sweeper.py`` (``Sweeper.calcSweepScore`` and
``calcScoreByThreshold``), ``nab/scorer.py``, ``nab/runner.py`` (``normalize``) and
``config/profiles.json``, reproduced here for binary alarms:

- Probation: the first ``min(floor(p * rows), p * 5000)`` rows (p = 0.15: at most 750) are not
  scored; alarms there count for nothing, and a window with no row after probation is neither
  a hit nor a miss.
- A window ``[start, end]`` covers the rows from the one stamped ``start`` to the one stamped
  ``end``. An alarm at row ``i`` of a window whose last row is ``R`` and width ``W`` is worth
  ``tp * S(-(R - i + 1) / W) / S(-1)`` with ``S(x) = 2 / (1 + exp(5x)) - 1`` (NAB's
  ``scaledSigmoid``, -1 beyond x = 3): exactly ``tp`` on the window's first row, falling towards
  zero at its end. Only the best (that is, the earliest) alarm of a window counts; a window
  without one costs ``-fn``.
- An alarm outside every window costs ``fp * S(|R' - i| / (W' - 1))``, measured from the last
  row ``R'`` of the preceding window of width ``W'``, or ``-fp`` if no window precedes it.
- A corpus scores ``100 * (raw - null) / (perfect - null)``, each term summed over all streams:
  ``null`` is the raw score of the detector that never alarms (``-fn`` per scorable window) and
  ``perfect`` is ``tp`` per labelled window.

The one difference from NAB is where detections come from: NAB sweeps a threshold over anomaly
scores and keeps the best one per profile, whereas here the monitor's own alarms are scored as
they are (an alarm is the reading where an episode opened).

References:
    Lavin, A. and Ahmad, S. "Evaluating Real-time Anomaly Detection Algorithms - the Numenta
    Anomaly Benchmark", IEEE ICMLA 2015 (arXiv:1510.03336); github.com/numenta/NAB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "PROFILES",
    "Profile",
    "StreamResult",
    "event_metrics",
    "label_windows",
    "nab_scores",
    "probation_rows",
    "scaled_sigmoid",
    "score_stream",
    "summary_table",
]

WindowLimits = tuple[pd.Timestamp, pd.Timestamp]


@dataclass(frozen=True)
class Profile:
    """One NAB application profile: the weights of its cost matrix.

    ``tp`` rewards a detected window, ``fn`` is the cost of a missed one, ``fp`` the cost of an
    alarm outside every window. ``tn`` is part of NAB's matrix but NAB's scoring never uses it.
    """

    name: str
    tp: float
    fp: float
    fn: float
    tn: float


# NAB config/profiles.json (v1.0+): the weights behind the three scoreboard columns.
PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", tp=1.0, fp=0.11, fn=1.0, tn=1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0, tn=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0, tn=1.0),
}

_SHORT_NAMES = {
    "standard": "nab_standard",
    "reward_low_FP_rate": "nab_low_fp",
    "reward_low_FN_rate": "nab_low_fn",
}


@dataclass(frozen=True)
class StreamResult:
    """How one stream's alarms fare against its labelled windows.

    Counts are events, not rows: ``true_positives`` are windows with at least one scored alarm,
    ``false_negatives`` scorable windows without one, ``false_positives`` scored alarms outside
    every window. ``windows`` counts every labelled window of the stream and ``scored_windows``
    those with a row after probation (so ``true_positives + false_negatives == scored_windows``).
    ``detections`` counts the alarms after probation. ``delays`` holds, for each detected window
    in time order, ``(rows, seconds)`` from the window's first row to its first scored alarm.
    ``raw_scores``, ``null_scores`` and ``perfect_scores`` map a profile name to NAB's raw score
    of these alarms, of a detector that never alarms, and of a perfect detector.
    """

    name: str
    rows: int
    probation_rows: int
    windows: int
    scored_windows: int
    detections: int
    true_positives: int
    false_positives: int
    false_negatives: int
    delays: tuple[tuple[int, float], ...]
    raw_scores: Mapping[str, float]
    null_scores: Mapping[str, float]
    perfect_scores: Mapping[str, float]

    @property
    def scored_rows(self) -> int:
        """Rows after the probationary period: the rows whose alarms are judged."""
        return self.rows - self.probation_rows

    @property
    def delays_rows(self) -> tuple[int, ...]:
        """Detection delay of each detected window, in rows."""
        return tuple(rows for rows, _ in self.delays)

    @property
    def delays_s(self) -> tuple[float, ...]:
        """Detection delay of each detected window, in seconds."""
        return tuple(seconds for _, seconds in self.delays)


def scaled_sigmoid(position: float) -> float:
    """NAB's scaled sigmoid ``2 / (1 + exp(5 x)) - 1``, and -1 for ``x > 3``.

    ``position`` is relative to a window: -1 at its first row (worth 0.98661), 0 at its right
    edge (worth 0), positive past it (an alarm there is a false positive; 1.0 is worth -0.98661).

    References:
        Lavin and Ahmad, NAB (ICMLA 2015), eq. 1; NAB ``nab/sweeper.py::scaledSigmoid``.

    >>> round(scaled_sigmoid(-1.0), 5), scaled_sigmoid(0.0), scaled_sigmoid(3.5)
    (0.98661, 0.0, -1.0)
    """
    return float(_scaled_sigmoid(np.asarray([position], dtype=float))[0])


def _scaled_sigmoid(position: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * position)) - 1.0
    return np.where(position > 3.0, -1.0, value)


# Dividing by S(-1) makes an alarm on a window's first row worth exactly the TP weight.
_MAX_TP = float(_scaled_sigmoid(np.asarray([-1.0]))[0])


def probation_rows(rows: int, probation: float = 0.15) -> int:
    """Number of leading rows NAB leaves unscored, its probationary period.

    ``min(floor(probation * rows), probation * 5000)``: with the default 15 %, at most 750 rows.
    Rows with an index below the returned number are in probation.

    References:
        Lavin and Ahmad, NAB (ICMLA 2015); NAB ``nab/sweeper.py::_getProbationaryLength``.

    >>> probation_rows(1000), probation_rows(22695)
    (150, 750)
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if not 0.0 <= probation <= 1.0:
        raise ValueError(f"probation must be a fraction in [0, 1], got {probation}")
    # NAB scores row i when i >= this bound, which may be fractional for other fractions.
    return math.ceil(min(math.floor(probation * rows), probation * 5000))


def label_windows(labels_json: Mapping[str, Any], name: str) -> list[WindowLimits]:
    """The labelled anomaly windows of one stream, as timezone-aware UTC timestamp pairs.

    ``labels_json`` is NAB's ``combined_windows.json`` already parsed (a mapping from a stream's
    relative path, e.g. ``"realKnownCause/nyc_taxi.csv"``, to ``[[start, end], ...]``). Naive
    label times are taken as UTC, as NAB's data are.

    Raises:
        KeyError: ``name`` has no entry in ``labels_json``.

    >>> label_windows({"a.csv": [["2014-04-10 07:15:00.000000", "2014-04-11 16:45:00"]]}, "a.csv")
    [(Timestamp('2014-04-10 07:15:00+0000', tz='UTC'), Timestamp('2014-04-11 16:45:00+0000', tz='UTC'))]
    """  # noqa: E501
    if name not in labels_json:
        raise KeyError(f"stream {name!r} has no entry in the labels ({len(labels_json)} streams)")
    windows = []
    for pair in labels_json[name]:
        start, end = pair
        windows.append((_utc(pd.Timestamp(start)), _utc(pd.Timestamp(end))))
    return windows


def score_stream(
    timestamps: pd.Series | Sequence[Any] | pd.DatetimeIndex,
    alarms: np.ndarray | Sequence[float],
    windows: Sequence[tuple[Any, Any]],
    name: str = "",
    probation: float = 0.15,
    *,
    profiles: Mapping[str, Profile] | None = None,
) -> StreamResult:
    """Score one stream's alarms against its labelled windows, by NAB's rules.

    Parameters:
        timestamps: the stream's reading times in file order, shape (rows,). Naive times are
            taken as UTC. Every window's start and end must be one of them, as in NAB.
        alarms: shape (rows,); a positive entry is a detection at that row (the monitor writes
            1 where an alarm episode opens).
        windows: ``(start, end)`` pairs, inclusive, e.g. from :func:`label_windows`.
        name: the stream's name, kept in the result (``summary_table`` groups on it).
        probation: fraction of leading rows left unscored (NAB: 0.15, capped at 750 rows).
        profiles: cost matrices to score with; NAB's three by default.

    Returns:
        A :class:`StreamResult` with event counts, detection delays and per-profile raw, null
        and perfect scores.

    Raises:
        ValueError: lengths differ, a timestamp is missing, a window is reversed, or a window's
            start or end is not among ``timestamps``.

    References:
        Lavin and Ahmad, NAB (ICMLA 2015); NAB ``nab/sweeper.py::Sweeper.calcSweepScore``.
    """
    profiles = PROFILES if profiles is None else profiles
    times = _utc_ns(timestamps)
    rows = len(times)
    flags = np.asarray(alarms, dtype=float)
    if flags.shape != (rows,):
        raise ValueError(
            f"alarms must have shape ({rows},) like timestamps, got {flags.shape} for {name!r}"
        )
    detected = np.nan_to_num(flags, nan=0.0) > 0

    limits = sorted(
        (_utc(pd.Timestamp(s)).as_unit("ns").value, _utc(pd.Timestamp(e)).as_unit("ns").value)
        for s, e in windows
    )
    layout = _layout(times, limits, name)
    first_scored = probation_rows(rows, probation)
    scored = np.arange(rows) >= first_scored
    alarm = detected & scored
    inside = layout.window_of_row >= 0

    n_windows = len(limits)
    scorable = np.zeros(n_windows, dtype=bool)
    scorable[layout.window_of_row[inside & scored]] = True

    hits = np.flatnonzero(alarm & inside)  # ascending, so the first per window is the earliest
    hit_windows, first_pos = np.unique(layout.window_of_row[hits], return_index=True)
    first_hit = hits[first_pos]
    best_unit = np.full(n_windows, -np.inf)
    np.maximum.at(best_unit, layout.window_of_row[hits], layout.tp_unit[hits])
    fp_unit_sum = float(layout.fp_unit[alarm & ~inside].sum())

    raw, null, perfect = {}, {}, {}
    for key, profile in profiles.items():
        parts = np.where(
            np.isfinite(best_unit), np.maximum(-profile.fn, profile.tp * best_unit), -profile.fn
        )
        raw[key] = float(parts[scorable].sum()) + profile.fp * fp_unit_sum
        null[key] = -profile.fn * float(scorable.sum())
        perfect[key] = profile.tp * float(n_windows)

    delays = tuple(
        (
            int(hit - layout.window_left[w]),
            float(times[hit] - times[layout.window_left[w]]) / 1e9,
        )
        for w, hit in zip(hit_windows.tolist(), first_hit.tolist(), strict=True)
    )
    true_positives = len(hit_windows)
    return StreamResult(
        name=name,
        rows=rows,
        probation_rows=min(first_scored, rows),
        windows=n_windows,
        scored_windows=int(scorable.sum()),
        detections=int(alarm.sum()),
        true_positives=true_positives,
        false_positives=int((alarm & ~inside).sum()),
        false_negatives=int(scorable.sum()) - true_positives,
        delays=delays,
        raw_scores=raw,
        null_scores=null,
        perfect_scores=perfect,
    )


def nab_scores(results: Sequence[StreamResult]) -> dict[str, float]:
    """Normalised NAB score per profile over a set of streams: null detector 0, perfect 100.

    As NAB's ``Runner.normalize``, the raw, null and perfect scores are each summed over all
    streams before ``100 * (raw - null) / (perfect - null)``; streams are not averaged. The score
    is NaN when no stream has a labelled window (the ratio is undefined).

    References:
        Lavin and Ahmad, NAB (ICMLA 2015), sec. "Computing NAB scores"; NAB ``nab/runner.py``.
    """
    names: list[str] = []
    for result in results:
        names.extend(key for key in result.raw_scores if key not in names)
    scores = {}
    for key in names:
        raw = sum(r.raw_scores[key] for r in results if key in r.raw_scores)
        null = sum(r.null_scores[key] for r in results if key in r.null_scores)
        perfect = sum(r.perfect_scores[key] for r in results if key in r.perfect_scores)
        span = perfect - null
        scores[key] = 100.0 * (raw - null) / span if span != 0 else math.nan
    return scores


def event_metrics(results: Sequence[StreamResult]) -> dict[str, float]:
    """Event-level detection quality over a set of streams.

    A labelled window is one event: it is detected if at least one scored alarm falls in it.
    ``precision = tp / (tp + fp)`` where ``fp`` counts scored alarms outside every window,
    ``recall = tp / (tp + fn)`` over windows with a row after probation, ``f1`` their harmonic
    mean. Delays (``mean_delay_rows``, ``median_delay_rows``, ``mean_delay_s``,
    ``median_delay_s``) run from a window's first row to its first alarm, over detected windows.
    ``false_alarms_per_1k`` is ``1000 * fp / scored rows``. Ratios with a zero denominator are NaN.

    References:
        Lavin and Ahmad, NAB (ICMLA 2015): windows as the unit of detection.
    """
    tp = sum(r.true_positives for r in results)
    fp = sum(r.false_positives for r in results)
    fn = sum(r.false_negatives for r in results)
    scored_rows = sum(r.scored_rows for r in results)
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    delay_rows = np.asarray([d for r in results for d in r.delays_rows], dtype=float)
    delay_s = np.asarray([d for r in results for d in r.delays_s], dtype=float)
    return {
        "streams": float(len(results)),
        "windows": float(tp + fn),
        "detected": float(tp),
        "missed": float(fn),
        "detections": float(sum(r.detections for r in results)),
        "false_positives": float(fp),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_delay_rows": _mean(delay_rows),
        "median_delay_rows": _median(delay_rows),
        "mean_delay_s": _mean(delay_s),
        "median_delay_s": _median(delay_s),
        "false_alarms_per_1k": 1000.0 * fp / scored_rows if scored_rows else math.nan,
    }


def summary_table(
    results: Sequence[StreamResult], categories: Callable[[str], str] | None = None
) -> pd.DataFrame:
    """One row per category and a final ``overall`` row: NAB scores and event metrics.

    ``categories`` maps a stream's name to its category; by default the part of the name before
    the last ``/`` (NAB's folder, e.g. ``realKnownCause``). Columns: ``category``, ``files``,
    ``windows``, ``nab_standard``, ``nab_low_fp``, ``nab_low_fn`` (normalised as in
    :func:`nab_scores`, over the category's streams), ``precision``, ``recall``, ``f1``,
    ``mean_delay_rows``, ``mean_delay_s``, ``fa_per_1k``. A category without windows has NaN
    NAB scores.

    References:
        Lavin and Ahmad, NAB (ICMLA 2015).
    """
    category_of = categories or _default_category
    groups: dict[str, list[StreamResult]] = {}
    for result in results:
        groups.setdefault(category_of(result.name), []).append(result)
    rows = [_summary_row(key, groups[key]) for key in sorted(groups)]
    rows.append(_summary_row("overall", list(results)))
    return pd.DataFrame(rows, columns=list(_summary_row("overall", []).keys()))


def _summary_row(category: str, results: list[StreamResult]) -> dict[str, Any]:
    nab = nab_scores(results)
    events = event_metrics(results)
    row: dict[str, Any] = {
        "category": category,
        "files": len(results),
        "windows": int(events["windows"]),
    }
    for profile, column in _SHORT_NAMES.items():
        row[column] = nab.get(profile, math.nan)
    row.update(
        precision=events["precision"],
        recall=events["recall"],
        f1=events["f1"],
        mean_delay_rows=events["mean_delay_rows"],
        mean_delay_s=events["mean_delay_s"],
        fa_per_1k=events["false_alarms_per_1k"],
    )
    return row


def _default_category(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else "uncategorised"


@dataclass(frozen=True)
class _Layout:
    """Where each row stands relative to the windows, as NAB's sweep walks the file."""

    window_of_row: np.ndarray  # (rows,) index of the window the row is in, -1 outside
    tp_unit: np.ndarray  # (rows,) S(position) / S(-1) inside a window, NaN outside
    fp_unit: np.ndarray  # (rows,) S(distance past the preceding window) outside, NaN inside
    window_left: np.ndarray  # (windows,) row at which each window was entered


def _layout(times: np.ndarray, limits: list[tuple[int, int]], name: str) -> _Layout:
    rows = len(times)
    for start, end in limits:
        if start > end:
            raise ValueError(f"window ({_show(start)}, {_show(end)}) of {name!r} ends before start")
    # NAB takes a window's width and right edge from the first row carrying each stamp
    # (list.index), and enters / leaves a window on rows whose stamp equals its limits.
    first_row: dict[int, int] = {}
    for i, t in enumerate(times.tolist()):
        first_row.setdefault(t, i)
    for start, end in limits:
        for stamp in (start, end):
            if stamp not in first_row:
                raise ValueError(
                    f"window limit {_show(stamp)} of {name!r} is not one of the stream's "
                    "timestamps; NAB windows must start and end on readings"
                )

    window_of_row = np.full(rows, -1, dtype=np.int64)
    right = np.zeros(rows, dtype=np.int64)
    width = np.ones(rows, dtype=np.int64)
    prev_right = np.full(rows, -1, dtype=np.int64)
    prev_width = np.ones(rows, dtype=np.int64)
    window_left = np.full(len(limits), -1, dtype=np.int64)

    pending = 0
    current = -1
    cur_right = cur_width = 0
    last_right, last_width = -1, 1
    for i, t in enumerate(times.tolist()):
        if pending < len(limits) and t == limits[pending][0]:
            current = pending
            pending += 1
            cur_right = first_row[limits[current][1]]
            cur_width = cur_right - first_row[limits[current][0]] + 1
            window_left[current] = i
        if current >= 0:
            window_of_row[i] = current
            right[i] = cur_right
            width[i] = cur_width
            if t == limits[current][1]:
                last_right, last_width = i, cur_width
                current = -1
        else:
            prev_right[i] = last_right
            prev_width[i] = last_width
    if pending < len(limits):
        raise ValueError(
            f"window starting {_show(limits[pending][0])} of {name!r} is never reached in "
            "timestamp order (overlapping windows or out-of-order timestamps)"
        )

    index = np.arange(rows)
    inside = window_of_row >= 0
    position = -(right - index + 1) / width
    tp_unit = np.where(inside, _scaled_sigmoid(position) / _MAX_TP, np.nan)
    # A one-row preceding window would divide by zero in NAB; treat it as far behind (-1).
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.abs(prev_right - index) / (prev_width - 1).astype(float)
    distance = np.where(prev_width > 1, distance, np.inf)
    after = _scaled_sigmoid(distance)
    fp_unit = np.where(inside, np.nan, np.where(prev_right >= 0, after, -1.0))
    return _Layout(window_of_row, tp_unit, fp_unit, window_left)


def _utc(stamp: pd.Timestamp) -> pd.Timestamp:
    if stamp is pd.NaT or pd.isna(stamp):
        raise ValueError("window limits must be timestamps, got NaT")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _utc_ns(timestamps: pd.Series | Sequence[Any] | pd.DatetimeIndex) -> np.ndarray:
    index = pd.DatetimeIndex(pd.to_datetime(pd.Series(timestamps)).array)
    if index.hasnans:
        raise ValueError("timestamps must not contain missing values")
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    return index.as_unit("ns").asi8


def _show(stamp_ns: int) -> str:
    return pd.Timestamp(stamp_ns, tz="UTC").isoformat()


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else math.nan
