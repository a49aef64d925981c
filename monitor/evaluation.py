"""Replay evaluation: run labelled CSV streams causally through the Detector and score the alarms.

``monitor evaluate`` replays every stream of a CSV file or a folder through the very
:class:`~monitor.pipeline.Detector` the daemon runs (no Kafka, event-time clock), with one
:class:`EvaluationConfig` for all files, writes one output CSV per input file and scores the
alarms against labelled windows with :mod:`monitor.scoring` (NAB's rules and event metrics).

How one stream is replayed (:func:`evaluate_stream`)
    1. Rows are read with :func:`monitor.streams.load_stream` (``,`` or ``;``; a wide file has
       one column per channel; ``ignore_columns`` are dropped first, e.g. label columns). The
       stream's single entity is the file stem.
    2. Probation: the first ``p = min(floor(probation * rows), probation * 5000)`` rows (NAB's
       probationary period, 750 rows at most with the default 15 %) are the only rows the first
       model is trained on (``models.build(...).fit``, seeded). Nothing after the probation is
       seen by it.
    3. Every row, probation included, is fed in file order to a fresh Detector as a
       :class:`~monitor.records.Reading` (``process`` is called with batches of
       ``batch_rows`` readings, which changes nothing but speed: windows are judged in order).
       With ``learn_probation`` the thresholds and episodes learn from the probationary windows
       as the daemon does when it consumes a topic from its beginning; without it they are reset
       at the end of the probation, so the thresholds start from the model's validation scores.
    4. With ``retrain`` (the settings of :class:`monitor.settings.RetrainSettings`), retraining
       runs as in ``monitor run --retrain``, on the event-time clock (the latest reading's
       timestamp): the :class:`~monitor.retraining.RetrainPolicy` of those settings says when
       (:meth:`~monitor.retraining.RetrainPolicy.next_run` after the end of the probation and
       after each round; runs a data gap skipped coalesce into one, as APScheduler's do) and,
       with the drift trigger on, a drifting batch runs a round at once. Each round is
       :func:`monitor.retraining.challenge`, the function the production job calls: on the
       readings of the last ``span`` before the round (at most ``max_rows``), minus the rows
       near the episodes the replay published so far (an open one reaches to the round), the
       candidate is trained with the champion's hyper-parameters and seed and promoted only if
       it is not worse. A promoted candidate replaces the live model with
       :meth:`~monitor.pipeline.Detector.swap_model`, the daemon's hot swap: windows and
       episodes carry on, thresholds re-warm from its validation scores.

Per-row output (one row per input row, in input order)
    ``timestamp`` and ``value`` are the input's text (``value`` only for single-channel input).
    A window is *emitted* by the reading that completes it (the first row stamped at or after
    its end plus the grace period); the row's ``anomaly_score`` is ``1 - 2 ** (-r)`` with
    ``r = score / threshold`` of the window it emitted (the largest if it emitted several):
    monotone in the score, 0.5 exactly at the threshold, 0 for a zero error, below 1 always.
    It is 0 on rows that emitted no window (the first ``window - 1`` rows, outages, rows the
    windower refused, rows without a finite value), while the threshold warms up, and on every
    probationary row (the model did not exist yet). ``alarm`` is 1 on the row that emitted the
    window which opened an episode, else 0; ``episode`` is 1 from that row up to, but not
    including, the row whose window closed it, else 0. Both are 0 during the probation. The
    output at row ``t`` depends only on rows ``0..t`` (and on the probation, which precedes
    every scored row).

Scoring (:func:`evaluate_path`)
    Each output is scored against its labelled windows (``combined_windows.json``, keys are
    paths relative to the data folder such as ``realKnownCause/nyc_taxi.csv``) with
    :func:`monitor.scoring.score_stream`; :func:`monitor.scoring.summary_table` gives one row per
    category (the key's folder) and an ``overall`` row: NAB standard / low-FP / low-FN scores
    (null detector 0, perfect 100), event precision / recall / F1, mean detection delay and
    false alarms per 1,000 scored readings.

Example::

    config = EvaluationConfig(model={"kind": "lstm", "window": 16, "latent_size": 8})
    results, table = evaluate_path(Path("data"), Path("out"), config, workers=2)
    print(format_table(table))

References:
    Lavin and Ahmad, "Evaluating Real-time Anomaly Detection Algorithms - the Numenta Anomaly
    Benchmark", IEEE ICMLA 2015 (probation, windows, scoring).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from monitor.episodes import episode_spans
from monitor.errors import ConfigError
from monitor.labels import find_nab_labels, label_key, read_labels
from monitor.records import EpisodeEventKind, Reading
from monitor.scoring import StreamResult, label_windows, probation_rows, score_stream
from monitor.scoring import summary_table as _summary_table
from monitor.settings import DetectorSettings, ModelSettings
from monitor.streams import ENTITY, TIMESTAMP, load_stream

__all__ = [
    "OUTPUT_COLUMNS",
    "EvaluationConfig",
    "evaluate_path",
    "evaluate_stream",
    "format_table",
]

OUTPUT_COLUMNS = ("timestamp", "value", "anomaly_score", "alarm", "episode")


_WINDOW: int = ModelSettings.model_fields["window"].default  # for a model without a window


def _default_settings() -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, detector) as the daemon runs them with default settings."""
    m, d = ModelSettings(), DetectorSettings()
    model = {"kind": m.kind, "window": m.window, **m.hyperparameters}
    return model, {
        "threshold": dict(d.threshold),
        "episodes": dict(d.episodes),
        "rhythm": dict(d.rhythm),
        "weekly_rhythm": dict(d.weekly_rhythm),
        "routine": dict(d.routine),
    }


@dataclass(frozen=True)
class EvaluationConfig:
    """One configuration for every evaluated file: model, streaming core, probation, retraining.

    Parameters:
        model: ``{"kind": ..., "window": ..., <hyper-parameter>: ...}``, the arguments of
            :func:`models.build` (default: the ``model`` settings' defaults, chosen on NAB;
            a missing kind is ``"lstm"``, a missing window 16 steps).
        detector: ``{"window": {...}, "threshold": {...}, "episodes": {...}, "rhythm": {...},
            "weekly_rhythm": {...}, "routine": {...}, "max_batch_windows": n}``, the arguments of
            :meth:`monitor.pipeline.DetectorConfig.from_dicts`; the window's length and
            channels come from the model (default: the ``detector`` settings' defaults).
        probation: NAB's probationary fraction: the first ``min(floor(probation * rows),
            probation * 5000)`` rows train the model and are not scored.
        retrain: ``None`` for no retraining (``monitor run``), or the ``retrain`` settings
            (:class:`monitor.settings.RetrainSettings` fields, e.g. ``{"interval_s": 604800}``;
            missing ones take their defaults) to retrain as ``monitor run --retrain`` does.
        learn_probation: whether thresholds and episodes learn from the probationary windows
            (True, as the daemon replaying a topic from its start) or start afresh at its end.
        seed: seeds model training, the first model's and every candidate's (as production).
        batch_rows: readings per :meth:`Detector.process` call (speed only).

    Raises:
        ConfigError: an unknown key or a bad value, named.
    """

    model: Mapping[str, Any] = field(default_factory=lambda: _default_settings()[0])
    detector: Mapping[str, Any] = field(default_factory=lambda: _default_settings()[1])
    probation: float = 0.15
    retrain: Mapping[str, Any] | None = None
    learn_probation: bool = True
    seed: int = 0
    batch_rows: int = 512

    def __post_init__(self) -> None:
        from models import KINDS

        model = dict(self.model)
        kind = model.pop("kind", "lstm")
        if kind not in KINDS:
            raise ConfigError(f"evaluation model.kind={kind!r}; expected one of {sorted(KINDS)}")
        try:
            KINDS[kind].config_class.from_dict(model)
        except ValueError as exc:
            raise ConfigError(f"invalid evaluation model: {exc}") from exc
        self._detector_config()  # validates, naming the bad key
        if not 0.0 < self.probation < 1.0:
            raise ConfigError(f"evaluation probation must be in (0, 1), got {self.probation!r}")
        self._retrain_settings()  # validates, naming the bad key
        if isinstance(self.batch_rows, bool) or not isinstance(self.batch_rows, int):
            raise ConfigError(f"evaluation batch_rows must be an int, got {self.batch_rows!r}")
        if self.batch_rows < 1:
            raise ConfigError(f"evaluation batch_rows must be >= 1, got {self.batch_rows}")

    @property
    def kind(self) -> str:
        return str(self.model.get("kind", "lstm"))

    @property
    def window(self) -> int:
        return int(self.model.get("window", _WINDOW))

    def _retrain_settings(self) -> Any:
        """The :class:`monitor.settings.RetrainSettings` of ``retrain``, or None."""
        from pydantic import ValidationError

        from monitor.settings import RetrainSettings

        if self.retrain is None:
            return None
        try:
            return RetrainSettings.model_validate(dict(self.retrain))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"invalid evaluation retrain.{where}: {first['msg']}") from exc

    def _detector_config(self) -> Any:
        from monitor.pipeline import DetectorConfig

        known = {
            "window",
            "threshold",
            "episodes",
            "rhythm",
            "weekly_rhythm",
            "routine",
            "max_batch_windows",
        }
        unknown = sorted(set(self.detector) - known)
        if unknown:
            raise ConfigError(
                f"unknown setting detector.{unknown[0]}; known keys: {', '.join(sorted(known))}"
            )
        return DetectorConfig.from_dicts(**dict(self.detector))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (inverse of :meth:`from_dict`)."""
        return {
            "model": dict(self.model),
            "detector": {
                k: dict(v) if isinstance(v, Mapping) else v for k, v in self.detector.items()
            },
            "probation": self.probation,
            "retrain": dict(self.retrain) if self.retrain is not None else None,
            "learn_probation": self.learn_probation,
            "seed": self.seed,
            "batch_rows": self.batch_rows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationConfig:
        """Build from :meth:`to_dict` output; an unknown key is a ConfigError naming it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown evaluation setting {unknown[0]!r}; known: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_settings(
        cls, settings: Any, *, retrain: bool = False, **overrides: Any
    ) -> EvaluationConfig:
        """The configuration the daemon would run, from a :class:`monitor.settings.Settings`.

        ``retrain`` takes the settings' retraining too (``monitor run --retrain``);
        ``overrides`` set the evaluation-only fields (probation, batch_rows, ...).
        """
        m, d = settings.model, settings.detector
        if retrain:
            overrides.setdefault("retrain", settings.retrain.model_dump(mode="json"))
        return cls(
            model={"kind": m.kind, "window": m.window, **dict(m.hyperparameters)},
            detector={
                "window": dict(d.window),
                "threshold": dict(d.threshold),
                "episodes": dict(d.episodes),
                "rhythm": dict(d.rhythm),
                "weekly_rhythm": dict(d.weekly_rhythm),
                "routine": dict(d.routine),
                "max_batch_windows": d.max_batch_windows,
            },
            seed=m.seed,
            **overrides,
        )


# -- one stream --------------------------------------------------------------------------------


def evaluate_stream(
    path: str | Path,
    config: EvaluationConfig,
    *,
    ignore_columns: Sequence[str] = (),
    progress: bool = False,
) -> pd.DataFrame:
    """Replay one CSV through a Detector causally; return the per-row output frame.

    The frame has one row per input row, in input order, with the columns ``timestamp``,
    ``value`` (single-channel input only; both as the input's text), ``anomaly_score``
    (float in [0, 1)), ``alarm`` and ``episode`` (int 0/1); see the module docstring for their
    exact meaning.

    Raises:
        ConfigError: the file is not a stream we accept, holds several entities, or its
            probation is too short to train a model of the configured window (2 windows).
    """
    import models
    from monitor.pipeline import Detector

    path = Path(path)
    stream = load_stream(path, ignore_columns=ignore_columns)
    if len(stream.entities) > 1:
        raise ConfigError(
            f"{path}: holds {len(stream.entities)} entities; evaluate takes one entity per file"
        )
    raw = _read_text(path, ignore_columns)
    rows = len(stream.frame)
    if len(raw) != rows:  # pragma: no cover - both read the same file with the same parser
        raise ConfigError(f"{path}: read {len(raw)} rows as text but {rows} as a stream")
    channels = list(stream.channels)
    frame = stream.frame  # sorted by time, stable: row j of frame is raw row order[j]
    order = np.argsort(
        pd.to_datetime(raw[TIMESTAMP], utc=True, format="mixed").to_numpy(), kind="stable"
    )
    values = frame[channels].to_numpy(dtype=float)  # (rows, channels), time order
    times = frame[TIMESTAMP]
    entity = str(frame[ENTITY].iloc[0]) if rows else path.stem

    first_scored = probation_rows(rows, config.probation)
    window = config.window
    train = _normal_rows(values, np.ones(rows, dtype=bool), first_scored, first_scored)
    if len(train) < 2 * window:
        raise ConfigError(
            f"{path}: the probation has {len(train)} usable rows of {rows}; the model needs at "
            f"least {2 * window} (two windows of model.window={window})"
        )
    model = _fit(models, config, channels, train, config.seed)
    detector_config = config._detector_config()
    detector = Detector(model, detector_config)
    grace = timedelta(seconds=detector.config.window.grace_s)

    # Readings of the rows with at least one finite value, in time order.
    present = np.isfinite(values)
    fed = np.flatnonzero(present.any(axis=1))
    stamps = np.asarray(times.dt.to_pydatetime())  # positional
    readings = [
        Reading(
            entity=entity,
            timestamp=stamps[i],
            values={c: float(values[i, j]) for j, c in enumerate(channels) if present[i, j]},
        )
        for i in fed
    ]
    fed_ns = pd.DatetimeIndex(times).as_unit("ns").asi8[fed]

    score = np.zeros(rows)
    alarm = np.zeros(rows, dtype=np.int8)
    episode = np.zeros(rows, dtype=np.int8)
    is_open, filled = False, 0  # episode[:filled] is final

    retrain = _Retraining.start(config, detector, values, times, entity, channels, first_scored)
    probation_end = int(np.searchsorted(fed, first_scored))  # first reading past the probation
    bar = tqdm(total=rows, desc=path.name, unit="row", disable=not progress, leave=False)
    start = 0
    while start < len(readings):
        if retrain is not None and retrain.due_before(int(fed_ns[start])):
            # The clock reached a scheduled round: it sees every reading before this one.
            retrain.run(detector, int(fed[start]), None)
            continue
        stop = min(start + config.batch_rows, len(readings))
        if start < probation_end < stop:
            stop = probation_end
        if retrain is not None:
            stop = retrain.cut(start, stop, fed_ns)
        out = detector.process(readings[start:stop])
        for decision in out.decisions:
            row = _emitting_row(decision.window.end + grace, fed_ns, fed)
            if decision.threshold is not None:
                score[row] = max(score[row], _unit_score(decision.score, decision.threshold))
        for event in out.events:
            row = _emitting_row(event.window_end + grace, fed_ns, fed)
            episode[filled:row] = is_open
            filled = row
            if event.kind is EpisodeEventKind.OPENED:
                alarm[row], is_open = 1, True
            elif event.kind is EpisodeEventKind.CLOSED:
                is_open = False
        last = int(fed[stop - 1]) + 1  # rows before `last` are processed
        episode[filled:last] = is_open
        filled = last
        bar.update(max(0, last - bar.n))
        if stop == probation_end and not config.learn_probation:
            state = detector.snapshot()
            state["thresholds"] = {}
            state["episodes"] = _empty_episodes(detector)
            detector = Detector.from_snapshot(model, detector_config, state)
            is_open = False
        elif retrain is not None and stop > probation_end:
            retrain.observe(out.events)
            if retrain.drifting(out.decisions):
                retrain.run(detector, last, stamps[int(fed[stop - 1])])
        start = stop
    bar.update(rows - bar.n)
    bar.close()
    episode[filled:] = is_open
    score[:first_scored] = 0.0
    alarm[:first_scored] = 0
    episode[:first_scored] = 0

    # Back to input order.
    result = pd.DataFrame(index=order)
    result["anomaly_score"] = score
    result["alarm"] = alarm.astype(int)
    result["episode"] = episode.astype(int)
    result = result.sort_index()
    out_frame = pd.DataFrame({"timestamp": raw[TIMESTAMP].to_numpy()})
    if len(channels) == 1:
        out_frame["value"] = raw[channels[0]].to_numpy()
    out_frame["anomaly_score"] = result["anomaly_score"].to_numpy()
    out_frame["alarm"] = result["alarm"].to_numpy()
    out_frame["episode"] = result["episode"].to_numpy()
    out_frame.attrs["retrain_rounds"] = retrain.rounds if retrain is not None else []
    return out_frame


def _read_text(path: Path, ignore_columns: Sequence[str]) -> pd.DataFrame:
    """The file's cells as text, exactly as written (for the output's timestamp and value)."""
    raw = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw.drop(columns=[c for c in ignore_columns if c in raw.columns])


def _fit(
    models: Any, config: EvaluationConfig, channels: list[str], series: np.ndarray, seed: int
) -> Any:
    params = dict(config.model)
    kind = params.pop("kind", "lstm")
    window = params.pop("window", _WINDOW)
    model = models.build(kind, channels=tuple(channels), window=window, **params)
    model.fit(series, seed=seed)
    return model


def _normal_rows(values: np.ndarray, normal: np.ndarray, stop: int, limit: int) -> np.ndarray:
    """The last ``limit`` rows before ``stop`` that are normal and fully finite, in time order
    (gaps closed up): (rows, channels)."""
    keep = np.flatnonzero(normal[:stop] & np.isfinite(values[:stop]).all(axis=1))
    return values[keep[-limit:]] if limit > 0 else values[:0]


def _emitting_row(moment: Any, fed_ns: np.ndarray, fed: np.ndarray) -> int:
    """The row whose reading completed a window ending at ``moment`` (end + grace)."""
    ns = pd.Timestamp(moment).as_unit("ns").value
    k = int(np.searchsorted(fed_ns, ns, side="left"))
    return int(fed[min(k, len(fed) - 1)])


def _unit_score(score: float, threshold: float) -> float:
    """``1 - 2 ** (-score / threshold)``: 0.5 at the threshold, in [0, 1)."""
    if not math.isfinite(score):
        return 1.0 if score > 0 else 0.0
    if threshold <= 0:
        return 1.0 if score > threshold else 0.5
    ratio = max(score, 0.0) / threshold
    return float(-math.expm1(-ratio * math.log(2.0)))


def _empty_episodes(detector: Any) -> dict[str, Any]:
    from monitor.episodes import Episodes

    return Episodes(detector.config.episodes).snapshot()


class _Retraining:
    """Production's retraining on the replay's event-time clock (module docstring, step 4).

    Holds the policy, the next scheduled round, the drift trigger and the episodes the replay
    has published so far; ``rounds`` keeps every round's time, status and reason.
    """

    def __init__(
        self,
        policy: Any,
        values: np.ndarray,
        times: pd.Series,
        entity: str,
        channels: list[str],
        seed: int,
        drift: Any,
        first_due: datetime,
    ) -> None:
        self.policy = policy
        self.values = values
        self.times = times
        self.times_ns = pd.DatetimeIndex(times).as_unit("ns").asi8
        self.entity = entity
        self.channels = channels
        self.seed = seed
        self.drift = drift
        self.next_due = first_due
        self.events: list[Any] = []  # what the replay published (AnomalyEvent)
        self.rounds: list[dict[str, Any]] = []

    @classmethod
    def start(
        cls,
        config: EvaluationConfig,
        detector: Any,
        values: np.ndarray,
        times: pd.Series,
        entity: str,
        channels: list[str],
        first_scored: int,
    ) -> _Retraining | None:
        """The retraining of ``config`` for a replay whose first scored row is
        ``first_scored`` (the daemon starts there, with the probation's model), or None."""
        settings = config._retrain_settings()
        if settings is None or first_scored >= len(times):
            return None
        begin = times.iloc[first_scored].to_pydatetime()
        policy = settings.policy()
        drift = settings.drift_trigger(detector.model.validation_scores)
        return cls(
            policy, values, times, entity, channels, config.seed, drift, policy.next_run(begin)
        )

    def due_before(self, reading_ns: int) -> bool:
        """True when the clock, at a reading stamped ``reading_ns``, has reached a round."""
        return reading_ns >= pd.Timestamp(self.next_due).value

    def cut(self, start: int, stop: int, fed_ns: np.ndarray) -> int:
        """``stop``, or earlier so that a batch ends where the clock reaches the next round."""
        due = int(np.searchsorted(fed_ns, pd.Timestamp(self.next_due).value, side="left"))
        return due if start < due < stop else stop

    def observe(self, events: Sequence[Any]) -> None:
        """Keep the published events, as the job reads them back from the events topic."""
        self.events.extend(events)

    def drifting(self, decisions: Sequence[Any]) -> bool:
        return self.drift is not None and bool(self.drift.observe(decisions))

    def run(self, detector: Any, stop_row: int, now: datetime | None) -> None:
        """One round at ``now`` (default: the scheduled time) on the rows before ``stop_row``;
        a promoted candidate is hot-swapped into ``detector``."""
        from monitor.retraining import ModelSpec, challenge

        policy = self.policy
        scheduled = now is None
        now = self.next_due if now is None else now
        since = now - policy.span
        known = np.arange(stop_row)
        in_span = known[self.times_ns[:stop_row] >= pd.Timestamp(since).value]
        complete = in_span[np.isfinite(self.values[in_span]).all(axis=1)][-policy.max_rows :]
        frame = pd.DataFrame(self.values[complete], columns=self.channels)
        frame.insert(0, "timestamp", self.times.iloc[complete].reset_index(drop=True))
        frame.insert(0, "entity", self.entity)
        # What the job reads back: the episodes reaching into the span (an open one to now).
        spans = episode_spans(self.events, until=now, since=since - policy.episode_margin)
        episodes = [(s.entity, s.start, s.end) for s in spans]
        champion = detector.model
        result = challenge(
            champion,
            frame,
            episodes,
            policy,
            ModelSpec.of(champion, seed=self.seed),
            detector.config.threshold,
        )
        decision = result.decision
        if decision.promote and result.candidate is not None:
            detector.swap_model(result.candidate)
            if self.drift is not None:
                self.drift.reset(result.candidate.validation_scores)
        self.rounds.append(
            {
                "at": now.isoformat(),
                "scheduled": scheduled,
                "status": decision.status,
                "reason": decision.reason,
            }
        )
        # The next round: after this one, past the readings already seen (runs coalesce).
        self.next_due = policy.next_run(now)
        if stop_row < len(self.times_ns):
            clock = int(self.times_ns[stop_row])
            while pd.Timestamp(self.next_due).value <= clock:
                self.next_due = policy.next_run(self.next_due)


# -- a folder ----------------------------------------------------------------------------------


def evaluate_path(
    data: str | Path,
    out: str | Path,
    config: EvaluationConfig,
    *,
    labels: str | Path | None = None,
    ignore_columns: Sequence[str] = (),
    workers: int = 1,
    progress: bool = True,
) -> tuple[list[StreamResult], pd.DataFrame]:
    """Evaluate a CSV file or every CSV under a folder; write outputs, score, summarise.

    Each input's output CSV (see :func:`evaluate_stream`) is written at the same relative path
    under ``out`` (a single file: ``out/<name>``). Streams with an entry in the labels are
    scored; the labels file is ``labels`` or, by default, NAB's beside ``data``
    (:func:`monitor.labels.find_nab_labels`).

    Parameters:
        workers: processes evaluating files in parallel, started with ``spawn`` (so a calling
            script needs the ``if __name__ == "__main__":`` guard); each uses one torch thread.
            Results do not depend on it.
        progress: a progress bar over rows on stderr.

    With retraining, each output has a sidecar ``<name>.retrain.json``: every round's time,
    whether it was scheduled (else the drift trigger ran it), its status and reason.

    Returns:
        The scored streams' :class:`~monitor.scoring.StreamResult` (named by their labels key,
        e.g. ``realKnownCause/nyc_taxi.csv``, sorted) and :func:`monitor.scoring.summary_table`
        of them (one row per category and ``overall``; empty if nothing was labelled); with
        retraining, the table's ``attrs["retrain_rounds"]`` counts the rounds by status over
        every file.

    Raises:
        ConfigError: ``data`` has no CSV, a file cannot be evaluated, or the labels file is
            missing or malformed.
    """
    data, out = Path(data), Path(out)
    if data.is_dir():
        root = data
        out_resolved = out.resolve()
        files = sorted(
            p
            for p in data.rglob("*.csv")
            if p.is_file() and out_resolved not in p.resolve().parents
        )
    elif data.is_file():
        root, files = data.parent, [data]
    else:
        raise ConfigError(f"evaluate: {str(data)!r} is neither a CSV file nor a folder")
    if not files:
        raise ConfigError(f"evaluate: no CSV file under {str(data)!r}")
    labels_path = Path(labels) if labels is not None else find_nab_labels(data)
    label_data = read_labels(labels_path) if labels_path is not None else {}

    jobs = [(f, out / f.relative_to(root), label_key(f, root, label_data)) for f in files]
    sizes = {f: _count_rows(f) for f in files}
    bar = tqdm(
        total=sum(sizes.values()),
        desc="evaluate",
        unit="row",
        disable=not progress,
        dynamic_ncols=True,
    )
    results: list[StreamResult] = []
    statuses: dict[str, int] = {}
    try:
        if workers <= 1:
            for job in jobs:
                result, rounds = _evaluate_one(job, config, label_data, tuple(ignore_columns))
                _count(statuses, rounds)
                if result is not None:
                    results.append(result)
                bar.update(sizes[job[0]])
                bar.set_postfix_str(job[0].name)
        else:
            context = get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=_init_worker
            ) as pool:
                futures = {
                    pool.submit(_evaluate_one, job, config, label_data, tuple(ignore_columns)): job
                    # The longest files first, so that none is left running alone at the end.
                    for job in sorted(jobs, key=lambda j: -sizes[j[0]])
                }
                for future in as_completed(futures):
                    result, rounds = future.result()
                    _count(statuses, rounds)
                    if result is not None:
                        results.append(result)
                    bar.update(sizes[futures[future][0]])
                    bar.set_postfix_str(futures[future][0].name)
    finally:
        bar.close()
    results.sort(key=lambda r: r.name)
    table = _summary_table(results)
    if config.retrain is not None:
        table.attrs["retrain_rounds"] = dict(sorted(statuses.items()))
    return results, table


def _count(statuses: dict[str, int], rounds: Sequence[Mapping[str, Any]]) -> None:
    for entry in rounds:
        statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _count_rows(path: Path) -> int:
    with path.open("rb") as handle:
        return max(0, sum(1 for _ in handle) - 1)


def _evaluate_one(
    job: tuple[Path, Path, str | None],
    config: EvaluationConfig,
    label_data: Mapping[str, Any],
    ignore_columns: tuple[str, ...],
) -> tuple[StreamResult | None, list[dict[str, Any]]]:
    """Evaluate, write and score one file: (its result if labelled, its retrain rounds)."""
    path, target, key = job
    try:
        frame = evaluate_stream(path, config, ignore_columns=ignore_columns)
    except (ValueError, RuntimeError) as exc:  # e.g. a model that cannot fit these rows
        raise ConfigError(f"{path}: cannot be evaluated: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(target)
    rounds = frame.attrs["retrain_rounds"]
    if config.retrain is not None:
        sidecar = target.with_name(target.name + ".retrain.json")
        sidecar.write_text(json.dumps(rounds, indent=1) + "\n")
    if key is None:
        return None, rounds
    return score_stream(
        pd.to_datetime(frame["timestamp"], utc=True, format="mixed"),
        frame["alarm"].to_numpy(),
        label_windows(label_data, key),
        name=key,
        probation=config.probation,
    ), rounds


def format_table(table: pd.DataFrame) -> str:
    """The summary table as a Markdown table (readable on a terminal, pastes into a README).

    NAB scores with one decimal, precision / recall / F1 with three, the mean delay in rows
    and hours, false alarms per 1,000 scored readings with two; NaN shows as ``-``.
    """
    columns = [
        ("category", "category", "{}"),
        ("files", "files", "{}"),
        ("windows", "windows", "{}"),
        ("nab_standard", "NAB standard", "{:.1f}"),
        ("nab_low_fp", "NAB low FP", "{:.1f}"),
        ("nab_low_fn", "NAB low FN", "{:.1f}"),
        ("precision", "precision", "{:.3f}"),
        ("recall", "recall", "{:.3f}"),
        ("f1", "F1", "{:.3f}"),
        ("mean_delay_rows", "delay (rows)", "{:.1f}"),
        ("mean_delay_s", "delay (h)", "{:.1f}"),
        ("fa_per_1k", "FA / 1k", "{:.2f}"),
    ]
    present = [c for c in columns if c[0] in table.columns]
    cells = [[title for _, title, _ in present]]
    for _, row in table.iterrows():
        line = []
        for key, _, fmt in present:
            value = row[key]
            if key == "mean_delay_s" and isinstance(value, float):
                value = value / 3600.0
            if isinstance(value, float) and math.isnan(value):
                line.append("-")
            else:
                line.append(fmt.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(present))]

    def render(row: list[str]) -> str:
        parts = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([render(cells[0]), rule, *(render(r) for r in cells[1:])])
