"""Retraining: the policy (pure: when, on what data, promote or not) and the job that runs it.

The policy is one object, :class:`RetrainPolicy`, used by the production scheduler and by the
replay evaluation alike, so the evaluation measures what production does:

- *when*: :meth:`RetrainPolicy.due` on any clock (wall clock in production, event time in a
  replay); in production APScheduler fires :meth:`RetrainJob.run_once` (:func:`build_scheduler`);
- *on what*: the last ``span`` of readings (at most ``max_rows``), minus every row inside or
  within ``episode_margin`` of a published anomaly episode (:meth:`RetrainPolicy.select_normal`)
  and minus dead-lettered input (the reader drops it);
- *promote or not*: a candidate is trained with the champion's hyper-parameters on the older
  part of the normal rows, and both are scored on the most recent ``holdout_fraction``
  (:func:`evaluate_candidate`): false-alarm rate at the live threshold policy, and the recent
  episodes' windows, which must still score above threshold. :meth:`RetrainPolicy.decide`
  promotes only a candidate that is not worse. A broken candidate (training error, NaN loss or
  scores) is a rejection, never a crash.

:func:`challenge` runs one challenger-vs-champion round on data in memory (no I/O); the replay
evaluation calls it directly. :class:`RetrainJob` adds the edges: a registry lease (never two
retrains of one model at once, also across daemons), reading the data back from Kafka,
registering every candidate with its decision, promotion, and the announcement of the new
version on a compacted topic (key = model name, value = JSON ``{model, version, path,
promoted_at, previous, reason}``), from which daemons hot-swap.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from kafka.errors import KafkaError

import models
from models.base import Autoencoder
from models.series import sliding_windows
from monitor.errors import BrokerError, ConfigError, ModelArtifactError
from monitor.kafka.history import (
    DEFAULT_MODELS_TOPIC,
    AnnouncementFeed,
    Episode,
    announce,
    recent_episodes,
    recent_readings,
)
from monitor.kafka.history import latest_announcement as _latest_announcement
from monitor.records import Reading
from monitor.registry import Lease, LockBusy, ModelRegistry, RegistryError
from monitor.settings import ModelSettings, Settings
from monitor.thresholds import ThresholdConfig, make_threshold

__all__ = [
    "DEFAULT_MODELS_TOPIC",
    "Challenge",
    "Decision",
    "DriftTrigger",
    "ModelFollower",
    "ModelMetrics",
    "ModelSpec",
    "RetrainJob",
    "RetrainPolicy",
    "announce_version",
    "build_scheduler",
    "challenge",
    "evaluate_candidate",
    "latest_announcement",
    "readings_frame",
    "run_early",
]

log = logging.getLogger(__name__)

EpisodeLike = Episode | tuple[str, datetime, datetime]


# -- the pure core ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelMetrics:
    """How one model does on the comparison data.

    ``false_alarm_rate``: share of the held-out normal windows judged anomalous by the live
    threshold policy (warm-started from the model's validation scores, then learning from the
    normal windows, as the Detector does). ``episode_window_share``: share of the recent
    episodes' windows scoring above the warm-started threshold; ``episodes_detected``: per
    episode, whether any of its windows did. ``usable`` is False for a broken model
    (``problem`` says why): non-finite losses or scores, no validation scores.
    """

    usable: bool
    problem: str = ""
    false_alarm_rate: float = math.nan
    holdout_windows: int = 0
    threshold: float | None = None
    episode_windows: int = 0
    episode_window_share: float = math.nan
    episodes_detected: tuple[bool, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["episodes_detected"] = list(self.episodes_detected)
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()
        }


@dataclass(frozen=True)
class Decision:
    """The outcome of one retrain round.

    ``status`` is "promoted", "rejected" or "skipped" (nothing trained: too little data,
    another retrain running); ``promote`` is True only for "promoted". ``reason`` is one
    sentence for the log; ``figures`` holds the numbers behind it. ``version`` is the
    candidate's registered version (None if nothing was registered), ``parent`` the champion's.
    """

    promote: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    status: str = ""
    version: str | None = None
    parent: str | None = None

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", "promoted" if self.promote else "rejected")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RetrainPolicy:
    """When to retrain, on what data, and when a candidate may replace the champion. Pure.

    Parameters:
        interval: time between retrains (any clock: wall time in production, event time in a
            replay; see :meth:`next_run`).
        cron: or a 5-field crontab (UTC) that wins over ``interval`` (APScheduler 3 numbers
            weekdays from Monday = 0).
        span: how far back the training data reaches (e.g. 7 days).
        max_rows: cap on readings read back (the newest are kept).
        min_normal_rows: fewer normal rows than this and the retrain is skipped.
        min_holdout_windows: fewer held-out windows than this and the retrain is skipped.
        episode_margin: rows this close to a published episode are not normal either; use at
            least a window's duration, so no training window touches an episode.
        holdout_fraction: the most recent fraction of the normal rows, held out to compare.
        max_holdout_windows: cap on the held-out windows scored (evenly spaced).
        max_false_alarm_increase: the candidate's false-alarm rate may exceed the champion's
            by at most this (absolute, e.g. 0.005 = half a percentage point).
        require_episode_detection: every recent episode the champion detects, the candidate
            must detect too, with an episode-window share at most
            ``max_episode_share_decrease`` below the champion's.
        new_normal_after: an episode that lasts longer than this is a change of regime, not an
            anomaly: its rows from ``start + new_normal_after`` on are the new normal (they
            train the candidate and are held out as normal), and only its onset, the windows
            ending within ``episode_margin`` of its start, must still be detected. ``None``
            treats every episode, however long, as an anomaly (the model never adapts to a
            lasting shift). See :meth:`split_episodes`.
    """

    interval: timedelta = timedelta(days=1)
    span: timedelta = timedelta(days=7)
    max_rows: int = 200_000
    min_normal_rows: int = 1_000
    min_holdout_windows: int = 50
    episode_margin: timedelta = timedelta(hours=1)
    holdout_fraction: float = 0.2
    max_holdout_windows: int = 5_000
    max_false_alarm_increase: float = 0.005
    require_episode_detection: bool = True
    max_episode_share_decrease: float = 0.2
    new_normal_after: timedelta | None = timedelta(hours=12)
    cron: str | None = None

    def __post_init__(self) -> None:
        for name in ("interval", "span"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigError(f"RetrainPolicy.{name} must be > 0, got {getattr(self, name)}")
        if self.cron is not None:
            self.trigger()  # validates the crontab
        if self.new_normal_after is not None and self.new_normal_after <= timedelta(0):
            raise ConfigError(
                f"RetrainPolicy.new_normal_after must be > 0 or None, got {self.new_normal_after}"
            )
        if self.episode_margin < timedelta(0):
            raise ConfigError(
                f"RetrainPolicy.episode_margin must be >= 0, got {self.episode_margin}"
            )
        for name in ("max_rows", "min_normal_rows", "min_holdout_windows", "max_holdout_windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RetrainPolicy.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(
                f"RetrainPolicy.holdout_fraction must be in (0, 1), got {self.holdout_fraction}"
            )
        for name in ("max_false_alarm_increase", "max_episode_share_decrease"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"RetrainPolicy.{name} must be >= 0, got {getattr(self, name)}")

    def trigger(self) -> IntervalTrigger | CronTrigger:
        """The APScheduler trigger of :attr:`cron`, else of :attr:`interval` (UTC)."""
        if self.cron is None:
            return IntervalTrigger(seconds=self.interval.total_seconds(), timezone=UTC)
        try:
            return CronTrigger.from_crontab(self.cron, timezone=UTC)
        except ValueError as exc:
            raise ConfigError(f"invalid retrain cron expression {self.cron!r}: {exc}") from exc

    def next_run(self, after: datetime) -> datetime:
        """The first retrain time strictly after ``after`` on any clock (tz-aware).

        With an interval that is ``after + interval``: what the production scheduler does after
        a run at ``after`` (also an early one, :func:`run_early`); a crontab keeps its calendar.
        """
        if self.cron is None:
            return after + self.interval
        fire = self.trigger().get_next_fire_time(None, after + timedelta(microseconds=1))
        if fire is None:  # pragma: no cover - a 5-field crontab always fires again
            raise ConfigError(f"retrain cron expression {self.cron!r} never fires after {after}")
        return fire.astimezone(UTC)

    def due(self, now: datetime, last_run: datetime | None) -> bool:
        """True if a retrain is due at ``now`` (any clock) after one at ``last_run``."""
        return last_run is None or now >= self.next_run(last_run)

    def split_episodes(
        self, episodes: Sequence[EpisodeLike]
    ) -> tuple[list[Episode], list[Episode]]:
        """(anomalies, regime changes): episodes as they count for retraining.

        An episode longer than ``new_normal_after`` is a regime change and comes back cut to
        its onset, ``(entity, start, start + episode_margin)``: the rows after it are the new
        normal. Every other episode is an anomaly, whole.
        """
        anomalies: list[Episode] = []
        regimes: list[Episode] = []
        for entity, start, end in episodes:
            if self.new_normal_after is not None and end - start > self.new_normal_after:
                regimes.append(Episode(entity, start, start + self.episode_margin))
            else:
                anomalies.append(Episode(entity, start, end))
        return anomalies, regimes

    def select_normal(self, frame: pd.DataFrame, episodes: Sequence[EpisodeLike]) -> pd.DataFrame:
        """The rows of ``frame`` (columns entity, timestamp, channels...) judged normal.

        A row is dropped when its entity has an episode with ``start - episode_margin <=
        timestamp <= end + episode_margin``, where a regime change ends at its onset
        (:meth:`split_episodes`). Returns a copy with a fresh index.
        """
        if frame.empty or not episodes:
            return frame.reset_index(drop=True)
        keep = np.ones(len(frame), dtype=bool)
        entities = frame["entity"].to_numpy()
        stamps = frame["timestamp"]
        anomalies, regimes = self.split_episodes(episodes)
        for entity, start, end in [*anomalies, *regimes]:
            near = (stamps >= start - self.episode_margin) & (stamps <= end + self.episode_margin)
            keep &= ~((entities == entity) & near.to_numpy())
        return frame.loc[keep].reset_index(drop=True)

    def split_holdout(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(train, holdout): the holdout is the most recent ``holdout_fraction`` of the rows."""
        if frame.empty:
            return frame, frame
        stamps = frame["timestamp"].sort_values(ignore_index=True)
        cut = stamps.iloc[min(len(stamps) - 1, int(len(stamps) * (1 - self.holdout_fraction)))]
        recent = (frame["timestamp"] >= cut).to_numpy()
        return frame.loc[~recent].reset_index(drop=True), frame.loc[recent].reset_index(drop=True)

    def decide(self, champion: ModelMetrics | None, candidate: ModelMetrics) -> Decision:
        """Promote the candidate only if it is usable and not worse than the champion."""
        figures: dict[str, Any] = {
            "candidate": candidate.to_dict(),
            "champion": champion.to_dict() if champion is not None else None,
            "limits": {
                "max_false_alarm_increase": self.max_false_alarm_increase,
                "require_episode_detection": self.require_episode_detection,
                "max_episode_share_decrease": self.max_episode_share_decrease,
            },
        }
        if not candidate.usable:
            return Decision(False, f"candidate is broken: {candidate.problem}", figures)
        if champion is None or not champion.usable:
            why = "no champion" if champion is None else f"champion unusable ({champion.problem})"
            return Decision(True, f"{why}: the usable candidate is promoted", figures)
        limit = champion.false_alarm_rate + self.max_false_alarm_increase
        if candidate.false_alarm_rate > limit:
            return Decision(
                False,
                f"candidate false-alarm rate {candidate.false_alarm_rate:.4f} exceeds the "
                f"champion's {champion.false_alarm_rate:.4f} + {self.max_false_alarm_increase}",
                figures,
            )
        if self.require_episode_detection and champion.episodes_detected:
            missed = [
                i
                for i, (old, new) in enumerate(
                    zip(champion.episodes_detected, candidate.episodes_detected, strict=True)
                )
                if old and not new
            ]
            if missed:
                return Decision(
                    False,
                    f"candidate misses {len(missed)} of the {sum(champion.episodes_detected)} "
                    "recent episodes the champion detects",
                    {**figures, "missed_episodes": missed},
                )
            floor = champion.episode_window_share - self.max_episode_share_decrease
            if candidate.episode_window_share < floor:
                return Decision(
                    False,
                    f"candidate scores {candidate.episode_window_share:.2f} of the recent "
                    f"episodes' windows above threshold, below the champion's "
                    f"{champion.episode_window_share:.2f} - {self.max_episode_share_decrease}",
                    figures,
                )
        episodes = (
            f", detects {sum(candidate.episodes_detected)}/{len(candidate.episodes_detected)} "
            "recent episodes"
            if candidate.episodes_detected
            else ""
        )
        return Decision(
            True,
            f"candidate is not worse: false-alarm rate {candidate.false_alarm_rate:.4f} vs "
            f"{champion.false_alarm_rate:.4f}{episodes}",
            figures,
        )


def evaluate_candidate(
    model: Autoencoder,
    holdout_windows: np.ndarray | Mapping[str, np.ndarray],
    episode_windows: Sequence[np.ndarray],
    threshold_config: ThresholdConfig,
    onset_windows: Sequence[np.ndarray] = (),
) -> ModelMetrics:
    """Score ``model`` on held-out normal windows and on recent episodes' windows.

    ``holdout_windows``: raw windows (n, time, channels) in time order, or one such array per
    entity (each gets its own threshold, as in the Detector). ``episode_windows``: one array
    (n_i, time, channels) per episode. ``onset_windows``: the same for the onsets of regime
    changes, which count in ``episodes_detected`` (after the episodes) but not in
    ``episode_window_share``. The threshold is ``threshold_config``'s method,
    warm-started from the model's own validation scores. Never raises on a broken model: it
    comes back with ``usable=False``.
    """
    report = model.report
    warm = np.asarray(report.validation_scores if report is not None else [], dtype=float)
    if warm.size == 0 or not np.all(np.isfinite(warm)):
        return ModelMetrics(False, "no finite validation scores to warm the threshold from")
    if report is not None:
        losses = [v for e in report.epochs for k, v in e.items() if k != "epoch"]
        if not all(math.isfinite(v) for v in losses):
            return ModelMetrics(False, "non-finite training or validation loss")
    groups = holdout_windows if isinstance(holdout_windows, Mapping) else {"": holdout_windows}
    try:
        alarms = total = 0
        for windows in groups.values():
            if len(windows) == 0:
                continue
            scores = model.score(windows).window
            if not np.all(np.isfinite(scores)):
                return ModelMetrics(False, "non-finite scores on the held-out windows")
            threshold = make_threshold(threshold_config)
            threshold.warm_start(warm)
            for score in scores:
                anomalous = threshold.classify(float(score))
                alarms += anomalous
                total += 1
                if not anomalous:
                    threshold.learn_one(float(score))
        reference = make_threshold(threshold_config)
        reference.warm_start(warm)
        detected, above, seen = [], 0, 0
        onsets = [(w, False) for w in onset_windows]
        for windows, in_share in [*((w, True) for w in episode_windows), *onsets]:
            scores = model.score(windows).window if len(windows) else np.zeros(0)
            if not np.all(np.isfinite(scores)):
                return ModelMetrics(False, "non-finite scores on the episodes' windows")
            flags = [reference.classify(float(s)) for s in scores]
            detected.append(any(flags))
            if in_share:
                above += sum(flags)
                seen += len(flags)
    except (ValueError, RuntimeError) as exc:
        return ModelMetrics(False, f"scoring failed: {exc}")
    return ModelMetrics(
        usable=True,
        false_alarm_rate=alarms / total if total else math.nan,
        holdout_windows=total,
        threshold=reference.value,
        episode_windows=seen,
        episode_window_share=above / seen if seen else math.nan,
        episodes_detected=tuple(detected),
    )


def readings_frame(
    readings: Sequence[Reading], channels: Sequence[str] | None = None
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Readings as a frame (entity, timestamp, one column per channel) and its channels.

    ``channels`` defaults to the most common channel set. Readings with another channel set
    are dropped, and so are repeated (entity, timestamp) pairs (the first is kept), as the
    windows would. Rows are sorted by entity, then time.
    """
    if channels is None:
        counts: dict[frozenset[str], tuple[int, tuple[str, ...]]] = {}
        for r in readings:
            key = frozenset(r.values)
            n, order = counts.get(key, (0, tuple(r.values)))
            counts[key] = (n + 1, order)
        channels = max(counts.values())[1] if counts else ()
    channels = tuple(channels)
    wanted = frozenset(channels)
    rows = [
        (r.entity, r.timestamp, *(r.values[c] for c in channels))
        for r in readings
        if frozenset(r.values) == wanted
    ]
    frame = pd.DataFrame(rows, columns=["entity", "timestamp", *channels])
    if not frame.empty:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame = frame.drop_duplicates(["entity", "timestamp"]).sort_values(
        ["entity", "timestamp"], kind="stable"
    )
    return frame.reset_index(drop=True), channels


def _segments(frame: pd.DataFrame, channels: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    """Contiguous runs of each entity's rows: (entity, values (steps, channels)).

    A run breaks where the time step exceeds 1.5 times the entity's median step (a removed
    episode, an outage), so no window is cut across a gap.
    """
    out = []
    for entity, rows in frame.groupby("entity", sort=True):
        stamps = rows["timestamp"].dt.tz_localize(None).to_numpy().astype(np.int64)
        values = rows[list(channels)].to_numpy(dtype=np.float64)
        if len(stamps) < 2:
            out.append((str(entity), values))
            continue
        steps = np.diff(stamps)
        breaks = np.flatnonzero(steps > 1.5 * np.median(steps)) + 1
        out.extend((str(entity), part) for part in np.split(values, breaks))
    return out


def _even(windows: np.ndarray, cap: int) -> np.ndarray:
    if len(windows) <= cap:
        return windows
    return windows[np.unique(np.linspace(0, len(windows) - 1, cap).round().astype(np.int64))]


def _holdout_windows(
    frame: pd.DataFrame, channels: tuple[str, ...], window: int, cap: int
) -> dict[str, np.ndarray]:
    by_entity: dict[str, list[np.ndarray]] = {}
    for entity, values in _segments(frame, channels):
        if len(values) >= window:
            by_entity.setdefault(entity, []).append(sliding_windows(values, window))
    stacked = {e: np.concatenate(parts) for e, parts in by_entity.items()}
    total = sum(len(w) for w in stacked.values())
    if total > cap:  # each entity keeps its share, evenly spaced in time
        stacked = {e: _even(w, max(1, cap * len(w) // total)) for e, w in stacked.items()}
    return stacked


def _episode_windows(
    frame: pd.DataFrame,
    episodes: Sequence[EpisodeLike],
    channels: tuple[str, ...],
    window: int,
) -> list[np.ndarray]:
    """Per episode, the windows of its entity whose last step falls inside the episode."""
    out = []
    groups = {str(e): rows for e, rows in frame.groupby("entity", sort=False)}
    for entity, start, end in episodes:
        rows = groups.get(entity)
        if rows is None or len(rows) < window:
            out.append(np.zeros((0, window, len(channels))))
            continue
        values = rows[list(channels)].to_numpy(dtype=np.float64)
        stamps = rows["timestamp"]
        ends = np.flatnonzero(((stamps >= start) & (stamps <= end)).to_numpy())
        ends = ends[ends >= window - 1]
        out.append(
            np.stack([values[i - window + 1 : i + 1] for i in ends])
            if len(ends)
            else np.zeros((0, window, len(channels)))
        )
    return out


@dataclass(frozen=True)
class ModelSpec:
    """What a candidate is built as: the champion's kind, channels, window, hyper-parameters."""

    kind: str
    channels: tuple[str, ...]
    window: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def of(cls, model: Autoencoder, seed: int = 0) -> ModelSpec:
        """The spec of a trained model (its saved config minus the window)."""
        config = getattr(model, "config", None)
        params = dict(config.to_dict()) if config is not None else {}
        params.pop("window", None)
        return cls(model.kind, tuple(model.channels), model.window, params, seed)


@dataclass(frozen=True)
class Challenge:
    """One round's result: the trained candidate (None if training failed) and the decision."""

    candidate: Autoencoder | None
    decision: Decision


def challenge(
    champion: Autoencoder | None,
    frame: pd.DataFrame,
    episodes: Sequence[EpisodeLike],
    policy: RetrainPolicy,
    spec: ModelSpec,
    threshold_config: ThresholdConfig,
    *,
    build: Callable[..., Autoencoder] = models.build,
) -> Challenge:
    """Train a candidate on the normal rows of ``frame`` and decide against ``champion``. No I/O.

    ``frame`` is :func:`readings_frame` output for the span (episodes included: their windows
    are the detection test). Returns a skipped decision when too little normal data remains.
    """
    normal = policy.select_normal(frame, episodes)
    train, holdout = policy.split_holdout(normal)
    figures: dict[str, Any] = {
        "rows": {"span": len(frame), "normal": len(normal), "train": len(train)},
        "episodes": len(episodes),
        "spec": {**asdict(spec), "channels": list(spec.channels)},
    }
    if len(normal) < policy.min_normal_rows:
        return Challenge(
            None,
            Decision(
                False,
                f"skipped: {len(normal)} normal rows in the span, fewer than "
                f"min_normal_rows={policy.min_normal_rows}",
                figures,
                status="skipped",
            ),
        )
    holdout_windows = _holdout_windows(
        holdout, spec.channels, spec.window, policy.max_holdout_windows
    )
    n_holdout = sum(len(w) for w in holdout_windows.values())
    figures["rows"]["holdout"] = len(holdout)
    if n_holdout < policy.min_holdout_windows:
        return Challenge(
            None,
            Decision(
                False,
                f"skipped: {n_holdout} held-out windows, fewer than "
                f"min_holdout_windows={policy.min_holdout_windows}",
                figures,
                status="skipped",
            ),
        )
    parts = [v for _, v in _segments(train, spec.channels) if len(v) >= spec.window]
    anomalies, regimes = policy.split_episodes(episodes)
    figures["regime_changes"] = len(regimes)
    # A regime change must still be detected at its onset; the new normal after it need not.
    episode_windows = _episode_windows(frame, anomalies, spec.channels, spec.window)
    onset_windows = _episode_windows(frame, regimes, spec.channels, spec.window)
    try:
        if not parts:
            raise ValueError(f"no contiguous run of {spec.window} normal rows to train on")
        # Runs are joined end to end: the few windows across a join are the price of the
        # single-series fit API (documented in the report).
        series = np.concatenate(parts)  # (steps, channels)
        figures["rows"]["train_runs"] = len(parts)
        candidate = build(
            spec.kind, channels=spec.channels, window=spec.window, **spec.hyperparameters
        )
        candidate.fit(series, seed=spec.seed)
    except Exception as exc:  # a broken candidate is a rejected decision, not a crash
        log.warning("candidate training failed: %r", exc)
        return Challenge(
            None,
            Decision(False, f"candidate training failed: {type(exc).__name__}: {exc}", figures),
        )
    candidate_metrics = evaluate_candidate(
        candidate, holdout_windows, episode_windows, threshold_config, onset_windows
    )
    champion_metrics = (
        evaluate_candidate(
            champion, holdout_windows, episode_windows, threshold_config, onset_windows
        )
        if champion is not None
        else None
    )
    decision = policy.decide(champion_metrics, candidate_metrics)
    return Challenge(candidate, replace(decision, figures={**figures, **decision.figures}))


class DriftTrigger:
    """Asks for an early retrain when the live model persistently fits the data worse. Pure.

    Window decisions are counted in consecutive blocks of ``block_windows``. A block drifts
    when more than ``max_anomalous_share`` of its windows are above threshold, or when its
    median score exceeds ``max_score_ratio`` times the median of the model's validation scores
    (the error distribution moved, even under a threshold that followed it). After
    ``patience`` drifting blocks in a row :meth:`observe` returns True once and the count
    starts over; :meth:`reset` starts over for a new model. Thread-safe: the daemon's loop
    observes while the model follower's thread resets.
    """

    def __init__(
        self,
        *,
        block_windows: int = 1_000,
        max_anomalous_share: float = 0.05,
        max_score_ratio: float = 3.0,
        patience: int = 3,
        validation_scores: np.ndarray | Sequence[float] = (),
    ) -> None:
        if block_windows < 1 or patience < 1:
            raise ConfigError("DriftTrigger block_windows and patience must be >= 1")
        if not 0 < max_anomalous_share <= 1 or not max_score_ratio > 0:
            raise ConfigError(
                "DriftTrigger max_anomalous_share must be in (0, 1] and max_score_ratio > 0"
            )
        self.block_windows = block_windows
        self.max_anomalous_share = max_anomalous_share
        self.max_score_ratio = max_score_ratio
        self.patience = patience
        self._lock = threading.Lock()
        self.reset(validation_scores)

    def reset(self, validation_scores: np.ndarray | Sequence[float] = ()) -> None:
        """Start over, judging scores against these validation scores (a new model's)."""
        scores = np.asarray(validation_scores, dtype=float)
        scores = scores[np.isfinite(scores)]
        with self._lock:
            self.baseline = float(np.median(scores)) if scores.size else math.nan
            self._scores: list[float] = []
            self._anomalous = 0
            self.drifting_blocks = 0
            self.last_block: dict[str, float] = {}

    def observe(self, decisions: Iterable[Any]) -> bool:
        """Count window decisions (``.score``, ``.anomalous``); True when a retrain is due."""
        with self._lock:
            return self._observe(decisions)

    def _observe(self, decisions: Iterable[Any]) -> bool:
        fire = False
        for decision in decisions:
            self._scores.append(float(decision.score))
            self._anomalous += bool(decision.anomalous)
            if len(self._scores) < self.block_windows:
                continue
            share = self._anomalous / len(self._scores)
            ratio = (
                float(np.median(self._scores)) / self.baseline if self.baseline > 0 else math.nan
            )
            self.last_block = {"anomalous_share": share, "score_ratio": ratio}
            self._scores, self._anomalous = [], 0
            drifting = share > self.max_anomalous_share or ratio > self.max_score_ratio
            self.drifting_blocks = self.drifting_blocks + 1 if drifting else 0
            if self.drifting_blocks >= self.patience:
                log.info(
                    "drift: %d blocks in a row, last %s", self.drifting_blocks, self.last_block
                )
                self.drifting_blocks = 0
                fire = True
        return fire


def run_early(scheduler: BackgroundScheduler, job: RetrainJob) -> bool:
    """Move ``job``'s next scheduled run to now (the drift shortcut); False if not scheduled.

    The job keeps its trigger, ``max_instances=1`` and the registry lease, so an early run
    never overlaps another retrain.
    """
    scheduled = scheduler.get_job(_job_id(job))
    if scheduled is None:
        return False
    scheduled.modify(next_run_time=datetime.now(UTC))
    log.info("retrain %s requested early", job.model_name)
    return True


def _job_id(job: RetrainJob) -> str:
    return f"retrain-{job.model_name}"


# -- the job: Kafka in, registry and announcement out -----------------------------------------


class RetrainJob:
    """Runs one retrain round against Kafka and the registry; see the module docstring.

    ``model_settings`` builds the first model when the registry has no champion (kind,
    window, hyper-parameters; channels come from the data) and gives the seed.
    ``threshold_config`` is the live threshold policy (default: ``settings.detector.threshold``).
    ``models_topic`` is the compacted topic of announcements (default:
    ``settings.kafka.models_topic``); ``model_name`` its key and the
    lease's name. ``lock_ttl_s`` bounds how long a crashed retrain blocks the next one.
    """

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        policy: RetrainPolicy,
        *,
        model_settings: ModelSettings | None = None,
        threshold_config: ThresholdConfig | None = None,
        models_topic: str | None = None,
        model_name: str = "default",
        lock_ttl_s: float = 3600.0,
        build: Callable[..., Autoencoder] = models.build,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.policy = policy
        self.model_settings = model_settings or settings.model
        try:
            self.threshold_config = threshold_config or ThresholdConfig.from_dict(
                settings.detector.threshold
            )
        except ValueError as exc:
            raise ConfigError(f"invalid detector.threshold: {exc}") from exc
        self.models_topic = models_topic or settings.kafka.models_topic
        self.model_name = model_name
        self.lock_ttl_s = lock_ttl_s
        self.build = build
        self.last_run: datetime | None = None

    def run_once(self, now: datetime | None = None) -> Decision:
        """One round: lease, read, select, train, compare, register, promote, announce.

        ``now`` is the end of the data span (default: the wall clock). Returns the decision,
        which is also logged and kept in the registry (decisions.jsonl; the candidate's
        metadata.json when one was trained). Raises BrokerError/RegistryError only for I/O
        failures before anything was decided.
        """
        now = now or datetime.now(UTC)
        try:
            with self.registry.lock(f"retrain-{self.model_name}", self.lock_ttl_s) as lease:
                stop = threading.Event()
                keeper = threading.Thread(
                    target=_keep_alive, args=(lease, stop), name="retrain-lease", daemon=True
                )
                keeper.start()
                try:
                    decision = self._run(now, lease)
                finally:
                    stop.set()
                    keeper.join()
        except LockBusy as exc:
            decision = Decision(
                False, f"skipped: another retrain is running ({exc})", {}, "skipped"
            )
        self.last_run = now
        self.registry.record_decision(
            {"model": self.model_name, "now": now.isoformat(), **decision.to_dict()}
        )
        log.info(
            "retrain %s: %s (%s, version %s, parent %s)",
            self.model_name,
            decision.status,
            decision.reason,
            decision.version,
            decision.parent,
        )
        return decision

    def _run(self, now: datetime, lease: Lease) -> Decision:
        policy = self.policy
        champion_version = self.registry.current()
        champion: Autoencoder | None = None
        if champion_version is not None:
            try:
                champion = self.registry.load(champion_version)
            except (ModelArtifactError, RegistryError) as exc:
                log.error("champion %s cannot be loaded (%s): no champion", champion_version, exc)
        since = now - policy.span
        recent = recent_readings(self.settings, since, until=now, max_records=policy.max_rows)
        episodes = recent_episodes(self.settings, since - policy.episode_margin, until=now)
        ms = self.model_settings
        frame, channels = readings_frame(
            recent.readings, champion.channels if champion is not None else None
        )
        spec = (
            ModelSpec.of(champion, seed=ms.seed)
            if champion is not None
            else ModelSpec(ms.kind, channels, ms.window, dict(ms.hyperparameters), ms.seed)
        )
        result = challenge(
            champion, frame, episodes, policy, spec, self.threshold_config, build=self.build
        )
        data = {
            "since": since.isoformat(),
            "until": now.isoformat(),
            "read": recent.counts(),
            "rows_with_channels": len(frame),
        }
        decision = replace(
            result.decision,
            figures={"data": data, **result.decision.figures},
            parent=champion_version,
        )
        if result.candidate is None:
            return decision
        metadata = {
            "model": self.model_name,
            "parent": champion_version,
            "data": data,
            "rows": decision.figures.get("rows", {}),
            "metrics": {
                "candidate": decision.figures.get("candidate"),
                "champion": decision.figures.get("champion"),
            },
            "decision": {"status": decision.status, "reason": decision.reason},
        }
        version = self.registry.register(result.candidate, metadata)
        decision = replace(decision, version=version)
        if not decision.promote:
            return decision
        if version == champion_version:
            return replace(
                decision,
                promote=False,
                status="rejected",
                reason=f"candidate is identical to the champion {version}",
            )
        if not lease.held():
            # Another process took the lease over (ours expired): it may be promoting too.
            return replace(
                decision,
                promote=False,
                status="rejected",
                reason=f"lost the retrain lease before promoting ({decision.reason})",
            )
        self.registry.promote(version, decision.reason)
        try:
            self.announce(version, previous=champion_version, reason=decision.reason)
        except BrokerError as exc:
            log.error("promoted %s but could not announce it: %s", version, exc)
            decision.figures["announced"] = False
        else:
            decision.figures["announced"] = True
        return decision

    def announce(self, version: str, *, previous: str | None = None, reason: str = "") -> None:
        """Publish ``version`` as the current model on the models topic."""
        announce_version(
            self.settings,
            self.registry,
            version,
            models_topic=self.models_topic,
            model_name=self.model_name,
            previous=previous,
            reason=reason,
        )


def _keep_alive(lease: Lease, stop: threading.Event) -> None:
    """Renew the lease every third of its ttl while a round runs (training can be long)."""
    while not stop.wait(lease.ttl_s / 3):
        try:
            lease.renew()
        except LockBusy as exc:
            log.error("lost the retrain lease: %s", exc)
            return


def announce_version(
    settings: Settings,
    registry: ModelRegistry,
    version: str,
    *,
    models_topic: str | None = None,
    model_name: str = "default",
    previous: str | None = None,
    reason: str = "",
) -> None:
    """Announce ``version`` of the registry as current on the compacted models topic.

    For the retrain job, and for ``monitor models promote|rollback``, which must announce too
    so that daemons hot-swap. Raises BrokerError if the broker does not acknowledge.
    """
    announce(
        settings,
        models_topic or settings.kafka.models_topic,
        model_name,
        {
            "version": version,
            "path": str(registry.path(version).resolve()),
            "promoted_at": datetime.now(UTC).isoformat(),
            "previous": previous,
            "reason": reason,
        },
    )


def latest_announcement(
    settings: Settings, topic: str | None = None, model_name: str | None = None
) -> dict[str, Any] | None:
    """The newest announcement on the models topic (of ``model_name`` if given), or None.

    The value is ``{model, version, path, promoted_at, previous, reason}``; ``path`` is the
    version directory as seen by the promoting host (load ``registry.path(version)`` when the
    registry is mounted elsewhere).
    """
    return _latest_announcement(settings, topic, model_name)


class ModelFollower:
    """Hands every newly announced model version to ``on_model``: the daemons' hot swap.

    A background thread follows the models topic (:class:`~monitor.kafka.history.
    AnnouncementFeed`); when ``model_name``'s announced version differs from the one served,
    it loads it (from ``registry`` when given, so a registry mounted at another path works;
    else from the announced path), verifies it, and calls ``on_model(model)``, e.g.
    ``Daemon.request_model``, which swaps between batches. A version that cannot be loaded is
    logged and skipped: the served model stays. ``check_once`` does one step synchronously.
    """

    def __init__(
        self,
        settings: Settings,
        on_model: Callable[[Autoencoder], None],
        *,
        registry: ModelRegistry | None = None,
        models_topic: str | None = None,
        model_name: str = "default",
        current_version: str | None = None,
        poll_timeout_ms: int = 1000,
    ) -> None:
        self.settings = settings
        self.on_model = on_model
        self.registry = registry
        self.models_topic = models_topic or settings.kafka.models_topic
        self.model_name = model_name
        self.version = current_version
        self.poll_timeout_ms = poll_timeout_ms
        self._feed: AnnouncementFeed | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self, timeout_ms: int | None = None) -> str | None:
        """Poll once; returns the version handed over, or None if nothing new (or unloadable)."""
        if self._feed is None:
            self._feed = AnnouncementFeed(self.settings, self.models_topic, self.model_name)
        news = self._feed.poll(self.poll_timeout_ms if timeout_ms is None else timeout_ms)
        if news is None or news.get("version") == self.version:
            return None
        version = str(news["version"])
        try:
            if self.registry is not None:
                model = self.registry.load(version)
            else:
                model = models.load(str(news.get("path")))
        except (ModelArtifactError, RegistryError, OSError) as exc:
            log.error(
                "announced model %s cannot be loaded, keeping %s: %s", version, self.version, exc
            )
            return None
        if model.version != version:
            log.error(
                "announced %s but %s holds %s: ignored", version, news.get("path"), model.version
            )
            return None
        self.on_model(model)
        self.version = version
        log.info("model %s announced (%s): handed over", version, news.get("reason", ""))
        return version

    def start(self) -> None:
        """Follow the topic in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="model-follower", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except BrokerError as exc:
                log.warning("following %s failed (%s); retrying", self.models_topic, exc)
                self._stop.wait(5.0)
            except KafkaError as exc:
                log.warning("following %s failed (%r); retrying", self.models_topic, exc)
                self._stop.wait(5.0)

    def stop(self) -> None:
        """Stop the thread and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._feed is not None:
            self._feed.close()
            self._feed = None


def _run_scheduled(job: RetrainJob) -> None:
    try:
        job.run_once()
    except Exception:  # the scheduler must live on; the next run tries again
        log.exception("scheduled retrain of %s failed", job.model_name)


def build_scheduler(
    job: RetrainJob,
    *,
    misfire_grace_s: float | None = None,
    first_run: datetime | None = None,
) -> BackgroundScheduler:
    """A (not yet started) APScheduler BackgroundScheduler running ``job.run_once``.

    When it runs is the job's policy (:meth:`RetrainPolicy.trigger`, its interval or crontab,
    the same schedule the replay evaluation follows on event time). ``max_instances=1``: a
    run never overlaps the previous one in this process (the registry lease covers other
    processes); ``coalesce=True``: runs missed while the process was busy or asleep collapse
    into one; ``misfire_grace_s``: how late a run may still start (default: half the interval,
    or an hour for cron). ``first_run`` sets the first run time (e.g. now); by default the
    trigger decides.
    """
    policy = job.policy
    trigger = policy.trigger()
    if misfire_grace_s is None:
        misfire_grace_s = 3600.0 if policy.cron else policy.interval.total_seconds() / 2
    scheduler = BackgroundScheduler(timezone=UTC)
    options: dict[str, Any] = {}
    if first_run is not None:
        options["next_run_time"] = first_run
    scheduler.add_job(
        _run_scheduled,
        trigger,
        args=[job],
        id=_job_id(job),
        name=f"retrain {job.model_name}",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(misfire_grace_s)),
        replace_existing=True,
        **options,
    )
    return scheduler
