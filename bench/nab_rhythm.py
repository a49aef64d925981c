"""Experiment: the monitor's alarms OR a daily-rhythm alarm, scored on NAB (not in the product yet).

Run ``python -m bench.nab_rhythm --data ../shared/datasets/nab/data`` (``--seeds 0,1,2,3``,
about 30 s per seed: one process and one torch thread, as ``monitor evaluate``'s workers). For
each file and model seed it replays the file through the real ``monitor evaluate`` path
(:func:`monitor.evaluation.evaluate_stream`, package defaults), records each window the
Detector judged (its emitting row), and scores with the project's NAB rules
(:mod:`monitor.scoring`):

- ``monitor``: the monitor's own alarms, as ``monitor evaluate`` writes them;
- ``monitor OR rhythm``: those alarms plus a *rhythm* alarm (:func:`rhythm_alarms`) at any window
  at least ``gap`` windows after the last alarm of either kind.

The rhythm alarm is what a window autoencoder cannot see: a reading far from what the stream
usually does *at this time of day*. Per reading, the residual is ``|value - P[slot]|``, where
``P[slot]`` is an EWMA (``alpha``) of the values seen in the same time-of-day slot on earlier
days (slot width: the median step of the first 150 rows). Per window, the residual of its
emitting row; ``ma`` is their mean over the last ``k`` windows; the alarm fires when ``ma`` is
above the mean of the previous ``history`` windows' ``ma`` by a Gaussian tail probability below
``risk`` (Numenta's anomaly likelihood, applied to the residual). Everything is causal: window
i uses readings up to its emitting row and earlier windows' ``ma``.

Findings (35 files, seeds 0-3; a sweep of 144 rhythm configurations on cached window scores, then
this script end to end, with the same figures): the monitor alone 52.5 / 52.9 / 49.9 / 49.9 (mean
51.3); with the rhythm alarm (``k=50, history=8640, risk=1e-4, alpha=0.2``, period one day,
``gap=150``) 60.0 / 60.7 / 59.1 / 57.5 (mean 59.3), 11 missed windows instead of 16 (seed 0) for
about 12 more false alarms. The parameters were chosen on these files, so +8 is optimistic:
choosing them on half of the files and scoring the other half (50 random splits) gained +4.9 on
average (92% of splits positive); leaving one file out at a time, +7.8. The gain comes from the
same windows on every seed (``art_daily_jumpsdown``, ``rds_cpu_utilization_e47b3b``,
``ambient_temperature_system_failure``, earlier and more ``machine_temperature`` windows). A weekly
period scored 54.5; the rhythm alarm alone (no model) 39.8; Numenta's likelihood on the window
scores instead of the residual at most +2 on held-out files.

Not in the product: the daemon would need it per entity and channel with snapshots, an event
that says why it fired, settings and tests. This script is the measurement to build it from.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd

from monitor import pipeline
from monitor.evaluation import EvaluationConfig, _emitting_row, _init_worker, evaluate_stream
from monitor.labels import find_nab_labels, read_labels
from monitor.scoring import label_windows, nab_scores, score_stream
from monitor.streams import TIMESTAMP, load_stream


@dataclass(frozen=True)
class RhythmConfig:
    """The rhythm alarm's parameters (defaults: the best of the sweep, see the docstring)."""

    k: int = 50  # windows averaged
    history: int = 8640  # windows of ma the likelihood compares with
    risk: float = 1e-4  # fire when the upper tail probability of ma is below this
    alpha: float = 0.2  # EWMA weight of a new day in a time-of-day slot
    period_s: float = 86_400.0
    gap: int = 150  # windows after any alarm before a rhythm alarm may fire
    warm: int = 50  # windows of ma needed before it may fire


@dataclass
class FileRun:
    """One file replayed by the monitor: its rows, windows and the monitor's alarms."""

    name: str
    stamps: pd.Series  # input order
    values: np.ndarray  # (rows,) first channel, input order
    seconds: np.ndarray  # (rows,) unix seconds, input order
    window_rows: np.ndarray  # emitting row (input order) of each judged window, judge order
    alarm: np.ndarray  # the monitor's alarm column


def profile_residuals(values: np.ndarray, seconds: np.ndarray, config: RhythmConfig) -> np.ndarray:
    """|value - its time-of-day profile so far| per row (0 until the slot has a value)."""
    order = np.argsort(seconds, kind="stable")
    t = seconds[order]
    v = values[order]
    step = float(np.median(np.diff(t[:151]))) if len(t) > 1 else 300.0
    step = max(step, 1.0)
    slots = max(round(config.period_s / step), 1)
    slot = ((t % config.period_s) // step).astype(int) % slots
    profile = np.full(slots, np.nan)
    residual = np.zeros(len(t))
    for j, (s, x) in enumerate(zip(slot.tolist(), v.tolist(), strict=True)):
        if not math.isfinite(x):
            continue
        p = profile[s]
        if math.isfinite(p):
            residual[j] = abs(x - p)
            profile[s] = p + config.alpha * (x - p)
        else:
            profile[s] = x
    out = np.zeros(len(t))
    out[order] = residual
    return out


def rhythm_likelihood(residuals: np.ndarray, config: RhythmConfig) -> np.ndarray:
    """Per window, the likelihood that its ``ma`` is above the previous ``history`` ``ma``."""
    n = len(residuals)
    index = np.arange(n)
    sums = np.concatenate([[0.0], np.cumsum(residuals)])
    low = np.maximum(index - config.k + 1, 0)
    ma = (sums[index + 1] - sums[low]) / (index + 1 - low)
    s1 = np.concatenate([[0.0], np.cumsum(ma)])
    s2 = np.concatenate([[0.0], np.cumsum(ma * ma)])
    first = np.maximum(index - config.history, 0)
    count = index - first  # windows first .. i-1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (s1[index] - s1[first]) / count
        spread = np.sqrt(np.maximum((s2[index] - s2[first]) / count - mean * mean, 0.0))
        z = (ma - mean) / spread
    likelihood = np.array(
        [1.0 - 0.5 * math.erfc(x / math.sqrt(2.0)) if math.isfinite(x) else 0.5 for x in z]
    )
    likelihood[count < config.warm] = 0.5
    return likelihood


def rhythm_alarms(run: FileRun, config: RhythmConfig) -> np.ndarray:
    """The monitor's alarms OR rhythm alarms, as an alarm column (input order)."""
    residuals = profile_residuals(run.values, run.seconds, config)[run.window_rows]
    fires = rhythm_likelihood(residuals, config) >= 1.0 - config.risk
    opens = np.zeros(len(run.window_rows), dtype=bool)
    seen: set[int] = set()
    for i, row in enumerate(run.window_rows.tolist()):
        if run.alarm[row] and row not in seen:  # the window whose row raised the alarm
            opens[i] = True
            seen.add(row)
    alarm = run.alarm.astype(float)
    last = -(10**9)
    for i in np.flatnonzero(opens | fires).tolist():
        if opens[i] or i - last > config.gap:
            alarm[run.window_rows[i]] = 1.0
            last = i
    return alarm


@contextmanager
def _recording() -> Iterator[list[Any]]:
    """Record the window ends the Detector judges, in order (the evaluation's own Detector)."""
    ends: list[Any] = []
    process = pipeline.Detector.process

    def recorded(self: pipeline.Detector, readings: Sequence[Any]) -> pipeline.DetectorOutput:
        out = process(self, readings)
        ends.extend(d.window.end for d in out.decisions)
        return out

    with mock.patch.object(pipeline.Detector, "process", recorded):
        yield ends


def replay(path: Path, name: str, seed: int) -> FileRun:
    """The monitor's evaluation of one single-channel file, with its judged windows."""
    config = EvaluationConfig(seed=seed)
    with _recording() as ends:
        frame = evaluate_stream(path, config)
    stream = load_stream(path)
    channels = list(stream.channels)
    values = stream.frame[channels].to_numpy(dtype=float)  # time order
    stamps = pd.to_datetime(frame["timestamp"], utc=True, format="mixed")
    order = np.argsort(stamps.to_numpy(), kind="stable")  # time position j -> input row
    fed = np.flatnonzero(np.isfinite(values).any(axis=1))
    fed_ns = pd.DatetimeIndex(stream.frame[TIMESTAMP]).as_unit("ns").asi8[fed]
    grace = timedelta(seconds=config._detector_config().window.grace_s)
    rows = [order[_emitting_row(end + grace, fed_ns, fed)] for end in ends]
    by_input = np.empty(len(order), dtype=float)
    by_input[order] = values[:, 0]
    return FileRun(
        name=name,
        stamps=stamps,
        values=by_input,
        seconds=pd.DatetimeIndex(stamps).as_unit("s").asi8.astype(float),
        window_rows=np.asarray(rows, dtype=int),
        alarm=frame["alarm"].to_numpy().astype(int),
    )


def score(runs: Sequence[FileRun], labels: Any, alarms: Sequence[np.ndarray]) -> dict[str, float]:
    """NAB standard score, missed windows and false alarms of these alarm columns."""
    results = [
        score_stream(run.stamps, alarm, label_windows(labels, run.name), name=run.name)
        for run, alarm in zip(runs, alarms, strict=True)
    ]
    return {
        "standard": nab_scores(results)["standard"],
        "missed": sum(r.false_negatives for r in results),
        "false_alarms": sum(r.false_positives for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/nab/data"))
    parser.add_argument("--seeds", default="0", help="model seeds, comma-separated (0)")
    parser.add_argument("--only", help="only files whose path contains this text")
    parser.add_argument("--labels", type=Path, help="NAB labels JSON (default: found by DATA)")
    args = parser.parse_args(argv)
    _init_worker()  # one torch thread, as monitor evaluate's workers: the same models
    labels_file = args.labels or find_nab_labels(args.data)
    if labels_file is None:
        parser.error(f"no NAB labels found for {args.data}")
    labels = read_labels(labels_file)
    files = [
        (p, f"{p.parent.name}/{p.name}")
        for p in sorted(args.data.rglob("*.csv"))
        if args.only is None or args.only in str(p)
    ]
    files = [(p, name) for p, name in files if name in labels]
    config = RhythmConfig()
    print(f"{'seed':>4}  {'rule':<18} {'standard':>8} {'missed':>6} {'false alarms':>12}")
    means: dict[str, list[float]] = {"monitor": [], "monitor OR rhythm": []}
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        runs = [replay(p, name, seed) for p, name in files]
        for rule, alarms in (
            ("monitor", [run.alarm for run in runs]),
            ("monitor OR rhythm", [rhythm_alarms(run, config) for run in runs]),
        ):
            got = score(runs, labels, alarms)
            means[rule].append(got["standard"])
            print(
                f"{seed:>4}  {rule:<18} {got['standard']:>8.1f} {got['missed']:>6} "
                f"{got['false_alarms']:>12}",
                flush=True,
            )
    for rule, values in means.items():
        print(f"mean  {rule:<18} {float(np.mean(values)):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
