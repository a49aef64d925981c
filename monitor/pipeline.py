"""The Detector: readings -> windows -> scores -> decisions -> episode events. No I/O.

The daemon, the replay evaluation and the tests all run this same object; only what feeds it
and what is done with its output differ.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import numpy as np

from models.base import Autoencoder, Scores
from monitor.episodes import EpisodeConfig, Episodes
from monitor.errors import ConfigError
from monitor.records import AnomalyEvent, Reading, Window, WindowDecision
from monitor.rhythm import WEEKLY, Rhythm, RhythmConfig
from monitor.routine import Routine, RoutineConfig
from monitor.thresholds import Threshold, ThresholdConfig, make_threshold, threshold_from_snapshot
from monitor.windowing import WindowConfig, Windower, Windows

__all__ = [
    "Detector",
    "DetectorConfig",
    "DetectorOutput",
    "attribute_decisions",
    "prepare_background_scoring",
    "process_in_stages",
    "process_together",
]

# 2 added the rhythm, 3 the routine; older ones restore them afresh. The weekly rhythm came in
# format 3 as an optional part: a reader that does not know it ignores it (a rolling upgrade
# keeps every other part), and a snapshot without it starts it afresh.
SNAPSHOT_FORMAT = 3
K = TypeVar("K")
T = TypeVar("T")


@dataclass(frozen=True)
class DetectorConfig:
    """The streaming core's settings. ``window.length`` and ``window.channels`` must match the
    model; :meth:`for_model` fills them in from it. ``rhythm`` is the time-of-day rhythm,
    ``weekly_rhythm`` the same signal over a week (:data:`monitor.rhythm.WEEKLY`)."""

    window: WindowConfig = field(default_factory=WindowConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    rhythm: RhythmConfig = field(default_factory=RhythmConfig)
    weekly_rhythm: RhythmConfig = field(default_factory=lambda: RhythmConfig(**WEEKLY))
    routine: RoutineConfig = field(default_factory=RoutineConfig)
    max_batch_windows: int = 4096

    @classmethod
    def from_dicts(
        cls,
        *,
        window: Mapping[str, Any] | None = None,
        threshold: Mapping[str, Any] | None = None,
        episodes: Mapping[str, Any] | None = None,
        rhythm: Mapping[str, Any] | None = None,
        weekly_rhythm: Mapping[str, Any] | None = None,
        routine: Mapping[str, Any] | None = None,
        max_batch_windows: int = 4096,
    ) -> DetectorConfig:
        """Build from plain settings, turning a bad key or value into a ConfigError naming it.
        ``weekly_rhythm``'s keys are merged over :data:`monitor.rhythm.WEEKLY`."""
        return cls(
            window=_build(WindowConfig, "detector.window", window),
            threshold=_build(ThresholdConfig, "detector.threshold", threshold),
            episodes=_build(EpisodeConfig, "detector.episodes", episodes),
            rhythm=_build(RhythmConfig, "detector.rhythm", rhythm),
            weekly_rhythm=_build(
                RhythmConfig, "detector.weekly_rhythm", {**WEEKLY, **(weekly_rhythm or {})}
            ),
            routine=_build(RoutineConfig, "detector.routine", routine),
            max_batch_windows=max_batch_windows,
        )

    def for_model(self, model: Autoencoder) -> DetectorConfig:
        """This config with the window length and channels the model was trained with."""
        if self.window.channels not in (None, model.channels):
            raise ConfigError(
                f"detector.window.channels={list(self.window.channels or ())} differs from the "
                f"model's channels {list(model.channels)}"
            )
        window = replace(self.window, length=model.window, channels=model.channels)
        return replace(self, window=window)


def _build(cls: type, prefix: str, values: Mapping[str, Any] | None) -> Any:
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting {prefix}.{unknown[0]}; known keys: {', '.join(sorted(known))}"
        )
    if "channels" in values and values["channels"] is not None:
        values["channels"] = tuple(values["channels"])
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {prefix}: {exc}") from exc


@dataclass(slots=True)
class DetectorOutput:
    """What one call to :meth:`Detector.process` decided.

    ``rejected`` holds (index into the input readings, reason code) for readings that the
    windows refused (late beyond grace, wrong channel set); duplicates are reported with reason
    ``duplicate`` too, so that every reading is either accepted or accounted for.
    """

    events: list[AnomalyEvent] = field(default_factory=list)
    decisions: list[WindowDecision] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    accepted: int = 0

    @property
    def windows_scored(self) -> int:
        return len(self.decisions)


class Detector:
    """Turns readings into anomaly events with one model, per-entity thresholds, the routine,
    the rhythm signal and episodes.

    Each entity's threshold is warm-started from the model's validation scores when the entity
    is first seen, and then learns only from windows judged normal outside an episode, so that
    an ongoing anomaly does not teach the threshold to accept it. A window above its threshold
    but within what the entity's error usually reaches at this time of day is judged normal
    (:mod:`monitor.routine`, unless ``routine.enabled`` is false). The rhythm signal
    (:mod:`monitor.rhythm`, unless ``rhythm.enabled`` is false) marks windows off the entity's
    usual time-of-day values, and the weekly rhythm (unless ``weekly_rhythm.enabled`` is false)
    those off its usual values at this time of the week; episodes open on windows marked by any.

    Windows of all entities that a batch of readings completes are scored in one model call.
    """

    def __init__(self, model: Autoencoder, config: DetectorConfig | None = None) -> None:
        self.model = model
        self.config = (config or DetectorConfig()).for_model(model)
        self.windower = Windower(self.config.window)
        self.episodes = Episodes(self.config.episodes, attribute=self._attribute)
        self.thresholds: dict[str, Threshold] = {}
        self.rhythm: Rhythm | None = (
            Rhythm(self.config.rhythm, model.channels) if self.config.rhythm.enabled else None
        )
        self.weekly_rhythm: Rhythm | None = (
            Rhythm(self.config.weekly_rhythm, model.channels)
            if self.config.weekly_rhythm.enabled
            else None
        )
        self.routine: Routine | None = (
            Routine(self.config.routine) if self.config.routine.enabled else None
        )
        self._warm_scores = model.validation_scores

    @property
    def model_version(self) -> str:
        return self.model.version

    def process(self, readings: Sequence[Reading]) -> DetectorOutput:
        """Feed readings in arrival order; return the events, decisions and refusals."""
        return process_together({None: self}, {None: readings})[None]

    def collect(
        self, readings: Sequence[Reading], out: DetectorOutput, *, first: int = 0
    ) -> Windows:
        """First half of :meth:`process`: window the readings, return the completed windows.

        ``first`` is the index of ``readings[0]`` among the readings ``out`` reports on (its
        ``rejected`` indices count from there).
        """
        windows, refused = self.windower.learn_many(readings)
        out.accepted += len(readings) - len(refused)
        out.rejected.extend((first + index, admission.value) for index, admission in refused)
        return windows

    def judge(
        self,
        windows: Sequence[Window],
        scores: Scores,
        out: DetectorOutput,
        *,
        values: np.ndarray | None = None,
    ) -> None:
        """Second half of :meth:`process`: compare scored windows with thresholds, run episodes.

        Windows are judged in the order they were completed: per entity that is time order,
        which the thresholds and episodes rely on. ``values`` are the windows' values stacked
        (n, time, channels), when the caller has them.
        """
        version = self.model.version
        thresholds = self.thresholds
        episodes = self.episodes
        routine = self.routine
        decisions = out.decisions
        # One conversion for the batch: the same Python floats as float(scores.window[i]), and
        # the rows of the channel and step errors as views made in one go.
        window_scores = scores.window.tolist()
        channel_rows, step_rows = list(scores.channel), list(scores.step)
        # The windows' ends in epoch seconds, for the rhythms and the routine: the windower's
        # when it had them (Windows.ends), else taken here (~0.3 µs a window).
        ends = getattr(windows, "ends", None)
        if ends is None or len(ends) != len(windows):
            ends = [w.end.timestamp() for w in windows]
        # The rhythms learn every window whatever else is decided: the whole batch in one call
        # each, before the windows are judged in order.
        off_rhythm_flags = self._off_rhythm(windows, values, ends)
        for i, window in enumerate(windows):
            entity = window.entity
            threshold = thresholds.get(entity)
            if threshold is None:
                threshold = self._threshold_for(entity)
            score = window_scores[i]
            value = threshold.value
            anomalous = value is not None and score > value  # Threshold.classify, for a float
            usual = False
            if routine is not None and value is not None and value > 0.0 and score == score:
                usual = routine.learn_at(entity, ends[i], score / value)  # score not NaN
                if usual:
                    anomalous = False
            off_rhythm = off_rhythm_flags[i]
            # Positional (keywords cost ~0.5 µs per window), in the record's field order.
            decision = WindowDecision(
                window,
                version,
                score,
                value,  # threshold
                anomalous,
                channel_rows[i],  # channel_errors
                step_rows[i],  # step_errors
                off_rhythm,
                usual,  # routine
            )
            # An entity the episodes do not track has no open episode, and its window changes
            # nothing there unless it is anomalous or off its rhythms (Episodes.push).
            tracked = episodes.tracks(entity)
            if anomalous:
                # Tells the threshold a score exceeded it without teaching it the score itself.
                threshold.learn_anomalous(score)
            elif not tracked or not episodes.is_open(entity):
                threshold.learn_one(score)
            decisions.append(decision)
            if tracked or anomalous or off_rhythm:
                episodes.push(decision)

    def _off_rhythm(
        self, windows: Sequence[Window], values: np.ndarray | None, ends: list[float]
    ) -> list[bool]:
        """Whether each window is off either rhythm (both learn every window); ``values`` as
        in :meth:`judge`, ``ends`` the windows' ends in epoch seconds."""
        rhythms = [r for r in (self.rhythm, self.weekly_rhythm) if r is not None]
        if not rhythms or not windows:
            return [False] * len(windows)
        entities = [w.entity for w in windows]
        if values is None:
            latest = np.array([w.values[-1] for w in windows], dtype=np.float64)
        else:
            latest = np.ascontiguousarray(values[:, -1, :], dtype=np.float64)
        off = rhythms[0].learn_many(entities, ends, latest)
        for rhythm in rhythms[1:]:
            off |= rhythm.learn_many(entities, ends, latest)
        return off.tolist()

    def settle(self, out: DetectorOutput, shares: np.ndarray | None = None) -> None:
        """Last step of :meth:`process`: the judged windows' events, attributed, into ``out``.

        ``shares`` are the attributions of ``episodes.pending()`` when the caller computed those
        of several detectors in one call (see :func:`process_together`).
        """
        out.events.extend(self.episodes.settle(shares))

    def _attribute(self, decisions: Sequence[WindowDecision]) -> np.ndarray:
        """Each channel's share of the decisions' windows' error, by the serving model."""
        return attribute_decisions(self.model, decisions)

    def swap_model(self, model: Autoencoder) -> None:
        """Serve a new model from the next window on, keeping every open window.

        Thresholds are re-warmed from the new model's validation scores, because its errors live
        on another scale; windows, the rhythms and episodes carry on, so no window is lost or
        scored twice.
        """
        if model.channels != self.model.channels or model.window != self.model.window:
            raise ConfigError(
                f"model {model.version} has window {model.window} and channels "
                f"{list(model.channels)}; the live model has {self.model.window} and "
                f"{list(self.model.channels)}: a swap needs the same shape"
            )
        self.model = model
        self._warm_scores = model.validation_scores
        self.thresholds.clear()

    def _threshold_for(self, entity: str) -> Threshold:
        threshold = self.thresholds.get(entity)
        if threshold is None:
            threshold = make_threshold(self.config.threshold)
            if self._warm_scores.size:
                threshold.warm_start(self._warm_scores)
            self.thresholds[entity] = threshold
        return threshold

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state of windows, thresholds, routine, rhythms, episodes (not the model).

        Everything in it is a copy: the daemon encodes it on another thread while this detector
        goes on with the next batches."""
        return {
            "format": SNAPSHOT_FORMAT,
            "model_version": self.model.version,
            "windower": self.windower.snapshot(),
            "thresholds": {e: t.snapshot() for e, t in self.thresholds.items()},
            "rhythm": None if self.rhythm is None else self.rhythm.snapshot(),
            "weekly_rhythm": None if self.weekly_rhythm is None else self.weekly_rhythm.snapshot(),
            "routine": None if self.routine is None else self.routine.snapshot(),
            "episodes": self.episodes.snapshot(),
        }

    @classmethod
    def from_snapshot(
        cls, model: Autoencoder, config: DetectorConfig | None, snapshot: Mapping[str, Any]
    ) -> Detector:
        """A detector that continues exactly where the snapshotted one stopped.

        A snapshot without rhythm, weekly rhythm or routine state (an older format, or taken with
        them disabled) starts them afresh: they learn each slot again over one period.

        Raises:
            ValueError: an unknown format, or state taken with another config.
        """
        return cls._restore(model, config, snapshot, fresh=None)

    @classmethod
    def resume(
        cls, model: Autoencoder, config: DetectorConfig | None, snapshot: Mapping[str, Any]
    ) -> tuple[Detector, list[str]]:
        """As :meth:`from_snapshot`, but a part whose state was taken with other settings (an
        operator changed ``detector.*`` between two runs) starts afresh instead of failing.

        Returns the detector and the parts started afresh (``windower``, ``thresholds``,
        ``rhythm``, ``weekly_rhythm``, ``routine``, ``episodes``), so that the caller can say
        so. Episodes open in a part started afresh never get their CLOSED event.

        Raises:
            ValueError: an unknown snapshot format.
        """
        fresh: list[str] = []
        return cls._restore(model, config, snapshot, fresh=fresh), fresh

    @classmethod
    def _restore(
        cls,
        model: Autoencoder,
        config: DetectorConfig | None,
        snapshot: Mapping[str, Any],
        fresh: list[str] | None,
    ) -> Detector:
        if snapshot.get("format") not in (1, 2, SNAPSHOT_FORMAT):
            raise ValueError(f"unknown detector snapshot format {snapshot.get('format')!r}")
        detector = cls(model, config)
        settings = detector.config

        def restore(part: str, build: Callable[[], T], default: T) -> T:
            if fresh is None:
                return build()
            try:
                return build()
            except (ValueError, KeyError, TypeError):
                fresh.append(part)
                return default

        detector.windower = restore(
            "windower",
            lambda: Windower.from_snapshot(settings.window, snapshot["windower"]),
            detector.windower,
        )
        detector.thresholds = restore(
            "thresholds",
            lambda: {
                entity: threshold_from_snapshot(settings.threshold, state)
                for entity, state in snapshot["thresholds"].items()
            },
            detector.thresholds,
        )
        rhythm = snapshot.get("rhythm")
        if detector.rhythm is not None and rhythm is not None:
            detector.rhythm = restore(
                "rhythm",
                lambda: Rhythm.from_snapshot(settings.rhythm, model.channels, rhythm),
                detector.rhythm,
            )
        weekly = snapshot.get("weekly_rhythm")
        if detector.weekly_rhythm is not None and weekly is not None:
            detector.weekly_rhythm = restore(
                "weekly_rhythm",
                lambda: Rhythm.from_snapshot(settings.weekly_rhythm, model.channels, weekly),
                detector.weekly_rhythm,
            )
        routine = snapshot.get("routine")
        if detector.routine is not None and routine is not None:
            detector.routine = restore(
                "routine",
                lambda: Routine.from_snapshot(settings.routine, routine),
                detector.routine,
            )
        detector.episodes = restore(
            "episodes",
            lambda: Episodes.from_snapshot(
                settings.episodes, snapshot["episodes"], attribute=detector._attribute
            ),
            detector.episodes,
        )
        return detector


def attribute_decisions(model: Autoencoder, decisions: Sequence[WindowDecision]) -> np.ndarray:
    """Each channel's share of each decision's window error (n, channels), in one model call
    (see :meth:`models.base.Autoencoder.attribute`); the decisions' scores are its base."""
    if len(model.channels) == 1:
        return np.ones((len(decisions), 1))
    if not decisions:
        return np.zeros((0, len(model.channels)))
    base = Scores(
        window=np.array([d.score for d in decisions], dtype=np.float64),
        channel=np.array([d.channel_errors for d in decisions], dtype=np.float64),
        step=np.array([d.step_errors for d in decisions], dtype=np.float64),
    )
    return model.attribute(np.stack([d.window.values for d in decisions]), base=base)


def process_together(
    detectors: Mapping[K, Detector], readings: Mapping[K, Sequence[Reading]]
) -> dict[K, DetectorOutput]:
    """Run several detectors that share one model (e.g. one per Kafka partition) over their
    readings, scoring all the windows they complete in as few model calls as possible, and
    attributing all the windows their events report in one more."""
    return process_in_stages(detectors, ((key, readings.get(key, ())) for key in detectors))


def process_in_stages(
    detectors: Mapping[K, Detector],
    stages: Iterable[tuple[K, Sequence[Reading]]],
    *,
    scorer: Executor | None = None,
) -> dict[K, DetectorOutput]:
    """:func:`process_together` over readings that come in stages: (key, readings) pieces,
    each key's pieces in order, taken one at a time.

    Without ``scorer``, every stage is windowed first and all the windows scored together. With
    one (an executor with a single thread), each stage's windows are scored on it while this
    thread takes and windows the next stage and judges the previous one: the model computes
    without holding the GIL, so a second core works alongside. ``stages`` may be lazy (a
    generator decoding records as it goes): its work then overlaps the scoring too. The
    outputs are the same either way; every window is judged, and every episode settled, when
    this returns. ``rejected`` indices count from the key's first reading over all its stages.
    """
    outputs = {key: DetectorOutput() for key in detectors}
    taken: dict[K, int] = {}
    # The stages that completed windows, in order: their windows, the windows' values stacked,
    # and their scores' future when scoring ahead.
    stages_windowed: deque[
        tuple[Detector, DetectorOutput, list[Window], np.ndarray, Future[Scores] | None]
    ]
    stages_windowed = deque()
    judged: dict[int, tuple[Detector, DetectorOutput]] = {}
    model: Autoencoder | None = None

    def judge(
        detector: Detector,
        out: DetectorOutput,
        windows: list[Window],
        stacked: np.ndarray,
        scores: Scores,
    ) -> None:
        detector.judge(windows, scores, out, values=stacked)
        judged.setdefault(id(detector), (detector, out))

    def judge_oldest() -> None:
        detector, out, windows, stacked, future = stages_windowed.popleft()
        assert future is not None
        judge(detector, out, windows, stacked, future.result())

    for key, readings in stages:
        detector, out = detectors[key], outputs[key]
        first = taken.get(key, 0)
        taken[key] = first + len(readings)
        windows = detector.collect(readings, out, first=first)
        if not windows:
            continue
        if model is None:
            model = detector.model
        elif detector.model is not model:
            raise ValueError("detectors scored together must share one model")
        stacked = _stacked(windows)
        future = None
        if scorer is not None:
            future = scorer.submit(
                _score_stacked,
                model,
                stacked,
                detector.config.max_batch_windows,
                background=True,
            )
        stages_windowed.append((detector, out, windows, stacked, future))
        if scorer is not None and len(stages_windowed) > 1:
            judge_oldest()  # while the scorer works on this stage
    if model is None:
        return outputs
    if scorer is not None:
        while stages_windowed:
            judge_oldest()
    else:
        chunk = min(d.config.max_batch_windows for d, _, _, _, _ in stages_windowed)
        parts = [stacked for _, _, _, stacked, _ in stages_windowed]
        scores = _score_stacked(
            model, parts[0] if len(parts) == 1 else np.concatenate(parts), chunk
        )
        offset = 0
        for detector, out, windows, stacked, _ in stages_windowed:
            judge(detector, out, windows, stacked, scores.rows(offset, offset + len(windows)))
            offset += len(windows)

    settling = list(judged.values())
    awaiting = [detector.episodes.pending() for detector, _ in settling]
    flat_awaiting = [d for part in awaiting for d in part]
    shares = attribute_decisions(model, flat_awaiting) if flat_awaiting else None
    offset = 0
    for (detector, out), part in zip(settling, awaiting, strict=True):
        detector.settle(out, None if shares is None else shares[offset : offset + len(part)])
        offset += len(part)
    return outputs


def prepare_background_scoring(model: Autoencoder) -> None:
    """Score two windows of zeros the way a scoring thread will (for a thread pool's first
    task): a TorchScript kernel is compiled on first use and optimised over its first calls,
    ~0.2 s together, which the first stages would otherwise wait for."""
    zeros = np.zeros((1, model.window, len(model.channels)))
    for _ in range(2):
        model.score_in_background(zeros)


def _stacked(windows: Sequence[Window]) -> np.ndarray:
    """The windows' values as one (n, time, channels) array: the windower's when it made them
    as one (:class:`monitor.windowing.Windows`), else stacked here."""
    values = getattr(windows, "values", None)
    if isinstance(values, np.ndarray) and len(values) == len(windows):
        return values
    return np.stack([w.values for w in windows])


def _score_stacked(
    model: Autoencoder, stacked: np.ndarray, chunk: int, *, background: bool = False
) -> Scores:
    """The model's scores of stacked windows, in calls of at most ``chunk`` windows;
    ``background`` on a scoring thread (:meth:`~models.base.Autoencoder.score_in_background`).
    The stacking stays on the caller's thread, because it holds the GIL all along (an array per
    window) and the scoring thread waited for the GIL more than it computed."""
    score = model.score_in_background if background else model.score
    return Scores.joined(
        [score(stacked[start : start + chunk]) for start in range(0, len(stacked), chunk)]
    )
