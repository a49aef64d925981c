"""Alarm episodes: a per-entity state machine turning window decisions into anomaly events.

Each entity is either *closed* or has one *open* episode (so episodes never overlap per entity):

- closed -> open: at least ``open_after`` of the entity's last ``open_within`` windows are
  anomalous, and no cooldown is running. Emits OPENED. The episode starts at the start of the
  earliest anomalous window among those.
- open: every anomalous window resets the quiet count and may raise the peak. When the peak has
  risen since the last event and at least ``update_every`` windows have passed since it, emits
  UPDATED (rate-limited: at most one every ``update_every`` windows).
- open -> closed: after ``close_after_quiet`` consecutive normal windows. Emits CLOSED, starts a
  cooldown of ``cooldown`` windows during which no episode can open, and forgets the window
  history (the windows of the old problem cannot open a new episode).
- open -> closed, persistent: with ``max_open = n > 0``, an episode still open ``n`` windows
  after it opened is closed all the same (CLOSED, cooldown, history forgotten, as above). A
  lasting change that keeps every window anomalous would otherwise hold its episode open for
  ever, and no later problem of the entity could open one. Whether the entity alarms again
  after the cooldown depends on its threshold (see ``ThresholdConfig.rebaseline_after``, which
  lets it take the new level as normal).

A window is anomalous when its score is above its threshold (``anomalous``) or it is off its
entity's daily or weekly rhythm (``off_rhythm``, :mod:`monitor.rhythm`); the events' ``signals``
name which of the two marked the episode's windows. A window whose threshold is None (warming up)
counts as normal.

Attribution and severity, in every event: ``contributions`` maps each channel to its share of the
error. With an ``attribute`` function (the Detector passes the model's reconstruction-based
attribution, :meth:`models.base.Autoencoder.attribute`), it is the mean attribution of the
episode's windows so far: the window that opened it and then one anomalous window in every
``update_every``, a sample that bounds the cost (a few model calls per attributed window) while
an episode lasts, and lets a fault that looks like its correlated partner at first (a stuck
sensor) be named as the evidence accumulates. The function takes many windows at once:
:meth:`Episodes.push` only notes the windows to attribute, and :meth:`Episodes.settle` attributes
all those of a batch in one call (an alarm storm costs a few model calls, not a few per entity
that alarms). Without one it is the raw per-channel error share of the episode's peak window (the
window with the highest score so far). Shares sum to 1;
``top_steps`` are the indexes (0 = the window's first step) of that window's ``top_steps`` largest
step errors, largest first; ``severity`` comes from the episode's highest ratio score/threshold
(so an episode only the rhythm marked, whose scores stay below the threshold, is LOW).
The ``score``, ``threshold``, ``window_start``/``window_end`` and ``model_version`` are the
decision's that caused the event (for CLOSED, the quiet window that closed it).

State per entity is O(open_within + channels + top_steps); an entity with nothing pending (closed,
no cooldown, no anomalous window in its history) holds no state at all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from monitor.records import (
    AnomalyEvent,
    EpisodeEventKind,
    Severity,
    Signal,
    WindowDecision,
)

__all__ = ["EpisodeConfig", "EpisodeSpan", "Episodes", "episode_spans", "severity_of"]

_SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class EpisodeConfig:
    """When episodes open, update and close; counts are in windows.

    Defaults suit a stride-1, length-64 stream, where one anomalous reading makes up to 64
    consecutive windows anomalous:

    - ``open_after=3`` of ``open_within=5``: a lone anomalous window (at a threshold's risk of
      ~1e-4) does not alarm, but a real problem alarms within 3-5 windows.
    - ``close_after_quiet=64``: one window length of normal windows means no window still
      contains the problem; anything anomalous sooner belongs to the same episode.
    - ``cooldown=64``: another window length before re-alarming, so a problem that flickers
      around the threshold gives one episode, not a series.
    - ``update_every=16``: at most one UPDATED event every 16 windows (a quarter window) while
      the peak keeps rising, enough to follow an escalation without flooding the topic.
    - ``top_channels=0``, ``top_steps=5``: how many channels the events' contributions list,
      largest share first (0 = all, so the shares sum to 1; with N > 0 only the N largest shares
      of the total are kept and sum to at most 1), and how many step indexes ``top_steps`` lists.
    - ``severity_ratios=(1.5, 2.0, 4.0)``: score/threshold at or above which severity is
      MEDIUM, HIGH, CRITICAL (below the first: LOW).
    - ``max_open=0``: no limit on an episode's length; ``n > 0`` closes an episode ``n``
      windows after it opened, anomalous or not (a persistent episode).

    Raises:
        ValueError: a field is out of range; the message names it.
    """

    open_after: int = 3
    open_within: int = 5
    close_after_quiet: int = 64
    cooldown: int = 64
    update_every: int = 16
    top_channels: int = 0
    top_steps: int = 5
    severity_ratios: tuple[float, float, float] = (1.5, 2.0, 4.0)
    max_open: int = 0

    def __post_init__(self) -> None:
        for name in (
            "open_after",
            "open_within",
            "close_after_quiet",
            "cooldown",
            "update_every",
            "top_channels",
            "top_steps",
            "max_open",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"EpisodeConfig.{name} must be an int, got {value!r}")
        if self.open_after < 1:
            raise ValueError(f"EpisodeConfig.open_after must be >= 1, got {self.open_after}")
        if self.open_within < self.open_after:
            raise ValueError(
                f"EpisodeConfig.open_within must be >= open_after ({self.open_after}), "
                f"got {self.open_within}"
            )
        if self.close_after_quiet < 1:
            raise ValueError(
                f"EpisodeConfig.close_after_quiet must be >= 1, got {self.close_after_quiet}"
            )
        for name in ("cooldown", "top_channels", "top_steps", "max_open"):
            if getattr(self, name) < 0:
                raise ValueError(f"EpisodeConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.update_every < 1:
            raise ValueError(f"EpisodeConfig.update_every must be >= 1, got {self.update_every}")
        ratios = tuple(self.severity_ratios)
        if (
            len(ratios) != 3
            or any(not isinstance(r, int | float) or not math.isfinite(r) for r in ratios)
            or not (1.0 <= ratios[0] <= ratios[1] <= ratios[2])
        ):
            raise ValueError(
                "EpisodeConfig.severity_ratios must be three finite ratios "
                f"1 <= medium <= high <= critical, got {self.severity_ratios!r}"
            )
        object.__setattr__(self, "severity_ratios", tuple(float(r) for r in ratios))

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        data = asdict(self)
        data["severity_ratios"] = list(self.severity_ratios)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpisodeConfig:
        """Build a config from a dict; an unknown key is a ValueError naming it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"EpisodeConfig: unknown key(s) {unknown}; expected {sorted(known)}")
        kwargs = dict(data)
        if "severity_ratios" in kwargs:
            kwargs["severity_ratios"] = tuple(kwargs["severity_ratios"])
        return cls(**kwargs)


def severity_of(ratio: float, ratios: tuple[float, float, float] = (1.5, 2.0, 4.0)) -> Severity:
    """Severity of a score that is ``ratio`` times its threshold.

    >>> severity_of(1.2), severity_of(1.5), severity_of(3.0), severity_of(10.0)
    (<Severity.LOW: 'low'>, <Severity.MEDIUM: 'medium'>, <Severity.HIGH: 'high'>, \
<Severity.CRITICAL: 'critical'>)
    """
    if ratio >= ratios[2]:
        return Severity.CRITICAL
    if ratio >= ratios[1]:
        return Severity.HIGH
    if ratio >= ratios[0]:
        return Severity.MEDIUM
    return Severity.LOW


def _ratio(score: float, threshold: float) -> float:
    if threshold > 0:
        return score / threshold
    return math.inf if score > threshold else 1.0


_RECONSTRUCTION = frozenset({Signal.RECONSTRUCTION})
_RHYTHM = frozenset({Signal.RHYTHM})
_BOTH = _RECONSTRUCTION | _RHYTHM


@dataclass
class _Mark:
    """What an episode keeps of one anomalous window."""

    start: datetime
    score: float
    ratio: float
    contributions: dict[str, float]
    top_steps: tuple[int, ...]
    signals: frozenset[Signal] = _RECONSTRUCTION

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "score": self.score,
            "ratio": _float_out(self.ratio),
            "contributions": dict(self.contributions),
            "top_steps": list(self.top_steps),
            "signals": sorted(self.signals),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Mark:
        return cls(
            start=datetime.fromisoformat(data["start"]),
            score=float(data["score"]),
            ratio=_float_in(data["ratio"]),
            contributions={str(c): float(v) for c, v in data["contributions"].items()},
            top_steps=tuple(int(i) for i in data["top_steps"]),
            signals=_signals_in(data.get("signals")),
        )


def _signals_in(names: Iterable[str] | None) -> frozenset[Signal]:
    # Snapshots from before the rhythm signal have no signals: the reconstruction was the only one.
    return _RECONSTRUCTION if names is None else frozenset(Signal(n) for n in names)


def _float_out(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)


def _float_in(x: float | str) -> float:
    return float(x)


Attribute = Callable[[Sequence[WindowDecision]], np.ndarray]
"""n decisions -> each channel's share of their windows' error, (n, channels)."""


class _Deferred(NamedTuple):
    """An event whose contributions wait for the settle: the mean of ``base`` (the attribution
    sum before this batch) and the shares of the ``pending`` windows; when there is neither, the
    event's own (the peak window's errors) stand."""

    event: AnomalyEvent
    channels: tuple[str, ...]
    base: list[float] | None
    pending: tuple[int, ...]


def _valid_rows(shares: Any, n: int, channels: int) -> list[np.ndarray | None]:
    """Each window's shares, or None where they are unusable (wrong shape, not finite)."""
    array = np.asarray(shares, dtype=np.float64)
    if array.shape != (n, channels):
        return [None] * n
    finite = np.isfinite(array).all(axis=1)
    return [row if ok else None for row, ok in zip(array, finite.tolist(), strict=True)]


def _add_rows(
    total: list[float] | None, indexes: Iterable[int], rows: list[np.ndarray | None]
) -> tuple[list[float] | None, int]:
    """``total`` plus the usable rows at ``indexes``, added in order; and how many there were."""
    added = 0
    for index in indexes:
        row = rows[index]
        if row is None:
            continue
        if total is None:
            total = [0.0] * len(row)
        total = [a + float(b) for a, b in zip(total, row, strict=True)]
        added += 1
    return total, added


@dataclass
class _EntityEpisodes:
    recent: deque[_Mark | None] = field(default_factory=deque)  # None = a normal window
    cooldown_left: int = 0
    open: bool = False
    episode_start: datetime | None = None
    peak: _Mark | None = None
    peak_ratio: float = 0.0
    quiet: int = 0
    since_event: int = 0
    open_for: int = 0  # windows since the episode opened
    attribution: list[float] | None = None  # sum of the attributed windows' shares
    attributed: int = 0  # how many windows that sum holds
    since_attribution: int = 0  # anomalous windows since the last attributed one
    risen: bool = False  # the peak rose since the last event
    last_threshold: float | None = None
    signals: frozenset[Signal] = frozenset()  # what marked the open episode's windows
    # Indexes into Episodes._awaiting of this episode's windows noted for attribution since the
    # last settle, after those that ``attribution`` sums. Never in snapshots (settled first).
    pending: list[int] = field(default_factory=list)

    def idle(self) -> bool:
        return (
            not self.open and self.cooldown_left == 0 and all(mark is None for mark in self.recent)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "recent": [None if m is None else m.to_dict() for m in self.recent],
            "cooldown_left": self.cooldown_left,
            "open": self.open,
            "episode_start": None if self.episode_start is None else self.episode_start.isoformat(),
            "peak": None if self.peak is None else self.peak.to_dict(),
            "peak_ratio": _float_out(self.peak_ratio),
            "quiet": self.quiet,
            "since_event": self.since_event,
            "open_for": self.open_for,
            # A copy, as everything in a snapshot: it may be encoded on another thread while
            # this state goes on (the daemon's checkpoints).
            "attribution": None if self.attribution is None else list(self.attribution),
            "attributed": self.attributed,
            "since_attribution": self.since_attribution,
            "risen": self.risen,
            "last_threshold": self.last_threshold,
            "signals": sorted(self.signals),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], open_within: int) -> _EntityEpisodes:
        start = data["episode_start"]
        threshold = data["last_threshold"]
        return cls(
            recent=deque(
                (None if m is None else _Mark.from_dict(m) for m in data["recent"]),
                maxlen=open_within,
            ),
            cooldown_left=int(data["cooldown_left"]),
            open=bool(data["open"]),
            episode_start=None if start is None else datetime.fromisoformat(start),
            peak=None if data["peak"] is None else _Mark.from_dict(data["peak"]),
            peak_ratio=_float_in(data["peak_ratio"]),
            quiet=int(data["quiet"]),
            since_event=int(data["since_event"]),
            open_for=int(data.get("open_for", 0)),
            attribution=(
                None if data.get("attribution") is None else [float(x) for x in data["attribution"]]
            ),
            attributed=int(data.get("attributed", 0)),
            since_attribution=int(data.get("since_attribution", 0)),
            risen=bool(data["risen"]),
            last_threshold=None if threshold is None else float(threshold),
            signals=(_signals_in(data.get("signals")) if data["open"] else frozenset[Signal]()),
        )


def _check_snapshot(config: EpisodeConfig, snapshot: Mapping[str, Any]) -> None:
    if snapshot.get("version") != _SNAPSHOT_VERSION:
        raise ValueError(
            f"episodes snapshot version {snapshot.get('version')!r} is not {_SNAPSHOT_VERSION}"
        )
    if EpisodeConfig.from_dict(snapshot["config"]) != config:
        raise ValueError(
            f"episodes snapshot was taken with another config: {snapshot['config']}, "
            f"not {config.to_dict()}"
        )


class Episodes:
    """Alarm episodes of all entities (see the module docstring for the state machine).

    ``learn_one`` takes each entity's decisions in window order and returns their events;
    entities are independent. ``push`` and ``settle`` do the same for a batch, attributing its
    windows in one call. ``snapshot``/``from_snapshot`` restore the exact state: a restored
    instance emits exactly the events an uninterrupted one would have.

    ``attribute`` maps n decisions to each channel's share of their windows' error, shape
    (n, channels); it is called only for the windows events report. A row of the wrong shape or
    with a non-finite share is left out of the mean, as if that window had not been attributed.
    """

    def __init__(self, config: EpisodeConfig, attribute: Attribute | None = None) -> None:
        self.config = config
        self.attribute = attribute
        self._entities: dict[str, _EntityEpisodes] = {}
        # Since the last settle: the events in order (a _Deferred until its attribution is
        # known), the decisions whose windows await attribution, the states that noted them.
        self._queue: list[AnomalyEvent | _Deferred] = []
        self._awaiting: list[WindowDecision] = []
        self._noting: list[_EntityEpisodes] = []

    def tracks(self, entity: str) -> bool:
        """Whether the entity has any state here (pending marks, an open episode or its
        cooldown). A normal window of an entity not tracked changes nothing (:meth:`push`)."""
        return entity in self._entities

    def is_open(self, entity: str) -> bool:
        """Whether the entity has an open episode."""
        state = self._entities.get(entity)
        return state is not None and state.open

    def open_entities(self) -> list[str]:
        """The entities with an open episode."""
        return [name for name, state in self._entities.items() if state.open]

    def learn_one(self, decision: WindowDecision) -> list[AnomalyEvent]:
        """Advance the decision's entity by one window; return the events it caused (0 or 1)."""
        self.push(decision)
        return self.settle()

    def push(self, decision: WindowDecision) -> None:
        """Advance the decision's entity by one window; its events come out of :meth:`settle`.

        The state moves on at once (``is_open`` tells the next window's truth); only the
        attribution of the windows events report waits for the settle.
        """
        config = self.config
        entity = decision.window.entity
        state = self._entities.get(entity)
        threshold = decision.threshold
        if threshold is None:
            anomalous, signals = False, _RECONSTRUCTION
        elif decision.anomalous:
            anomalous, signals = True, _BOTH if decision.off_rhythm else _RECONSTRUCTION
        else:
            anomalous, signals = decision.off_rhythm, _RHYTHM
        if state is None:
            if not anomalous:
                # A normal window of an entity with nothing pending leaves it with nothing
                # pending (the state below would be idle and dropped): the common case, for free.
                return
            state = _EntityEpisodes(recent=deque(maxlen=config.open_within))
            self._entities[entity] = state
        if threshold is not None:
            state.last_threshold = float(threshold)
        mark = self._mark(decision, signals) if anomalous else None
        events = self._queue

        if not state.open:
            state.recent.append(mark)
            if state.cooldown_left > 0:
                state.cooldown_left -= 1
            elif anomalous and sum(m is not None for m in state.recent) >= config.open_after:
                marks = [m for m in state.recent if m is not None]
                peak = max(marks, key=lambda m: m.score)  # first of equal scores
                state.open = True
                state.episode_start = marks[0].start
                state.peak = peak
                state.peak_ratio = max(m.ratio for m in marks)
                state.quiet = 0
                state.since_event = 0
                state.open_for = 0
                state.risen = False
                state.signals = frozenset().union(*(m.signals for m in marks))
                state.recent.clear()
                state.attribution, state.attributed, state.pending = None, 0, []
                self._attribute(decision, state)
                events.append(self._event(EpisodeEventKind.OPENED, decision, state))
        else:
            state.since_event += 1
            state.open_for += 1
            if mark is not None:
                state.quiet = 0
                state.signals |= mark.signals
                assert state.peak is not None
                if mark.score > state.peak.score:
                    state.peak = mark
                    state.risen = True
                if mark.ratio > state.peak_ratio:
                    state.peak_ratio = mark.ratio
                    state.risen = True
                state.since_attribution += 1
                if state.since_attribution >= config.update_every:
                    self._attribute(decision, state)
            else:
                state.quiet += 1
            persistent = 0 < config.max_open <= state.open_for
            if state.quiet >= config.close_after_quiet or persistent:
                events.append(self._event(EpisodeEventKind.CLOSED, decision, state))
                state.open = False
                state.episode_start = None
                state.peak = None
                state.peak_ratio = 0.0
                state.quiet = 0
                state.since_event = 0
                state.open_for = 0
                state.risen = False
                state.signals = frozenset()
                state.recent.clear()
                state.attribution, state.attributed, state.since_attribution = None, 0, 0
                state.pending = []
                state.cooldown_left = config.cooldown
            elif state.risen and state.since_event >= config.update_every:
                events.append(self._event(EpisodeEventKind.UPDATED, decision, state))
                state.since_event = 0
                state.risen = False

        if state.idle():
            # Nothing pending: a fresh state behaves the same, so keep no memory of the entity.
            del self._entities[entity]

    def pending(self) -> list[WindowDecision]:
        """The decisions pushed since the last settle whose windows await attribution."""
        return list(self._awaiting)

    def settle(self, shares: np.ndarray | None = None) -> list[AnomalyEvent]:
        """The events of the windows pushed since the last settle, in order, attributed.

        ``shares`` are the attributions of :meth:`pending`'s windows, shape (n, channels), for a
        caller that attributed the windows of several Episodes in one call; by default this
        calls ``attribute`` once for all of them.
        """
        queue, awaiting, noting = self._queue, self._awaiting, self._noting
        self._queue, self._awaiting, self._noting = [], [], []
        if not awaiting:
            return queue  # type: ignore[return-value]  # nothing deferred: all AnomalyEvents
        if shares is None:
            assert self.attribute is not None
            shares = self.attribute(awaiting)
        rows = _valid_rows(shares, len(awaiting), len(awaiting[0].window.channels))
        for state in noting:
            if state.pending:
                state.attribution, added = _add_rows(state.attribution, state.pending, rows)
                state.attributed += added
                state.pending = []
        events: list[AnomalyEvent] = []
        for item in queue:
            if isinstance(item, _Deferred):
                total, _ = _add_rows(item.base, item.pending, rows)
                if total is None:
                    events.append(item.event)
                else:
                    contributions = self._shares(item.channels, total)
                    events.append(replace(item.event, contributions=contributions))
            else:
                events.append(item)
        return events

    def _mark(self, decision: WindowDecision, signals: frozenset[Signal]) -> _Mark:
        assert decision.threshold is not None
        score = float(decision.score)
        return _Mark(
            start=decision.window.start,
            score=score,
            ratio=_ratio(score, float(decision.threshold)),
            contributions=self._contributions(decision),
            top_steps=self._top_steps(decision),
            signals=signals,
        )

    def _attribute(self, decision: WindowDecision, state: _EntityEpisodes) -> None:
        """Note the decision's window for the episode's mean attribution (if there is a
        function); the settle attributes it."""
        state.since_attribution = 0
        if self.attribute is None:
            return
        if not state.pending:
            self._noting.append(state)
        state.pending.append(len(self._awaiting))
        self._awaiting.append(decision)

    def _contributions(self, decision: WindowDecision) -> dict[str, float]:
        return self._shares(decision.window.channels, decision.channel_errors)

    def _shares(self, channels: tuple[str, ...], values: Any) -> dict[str, float]:
        """Channel -> share of ``values`` (made non-negative, summing to 1), largest first."""
        errors = np.abs(np.asarray(values, dtype=np.float64)).ravel()
        if errors.shape != (len(channels),) or not np.all(np.isfinite(errors)):
            errors = np.ones(len(channels))
        total = float(errors.sum())
        shares = errors / total if total > 0 else np.full(len(channels), 1.0 / len(channels))
        order = sorted(range(len(channels)), key=lambda i: (-shares[i], i))
        keep = self.config.top_channels or len(channels)
        return {channels[i]: float(shares[i]) for i in order[:keep]}

    def _top_steps(self, decision: WindowDecision) -> tuple[int, ...]:
        errors = np.asarray(decision.step_errors, dtype=np.float64).ravel()
        if errors.size == 0 or self.config.top_steps == 0:
            return ()
        errors = np.where(np.isfinite(errors), errors, -np.inf)
        order = np.argsort(-errors, kind="stable")
        return tuple(int(i) for i in order[: self.config.top_steps])

    def _event(
        self, kind: EpisodeEventKind, decision: WindowDecision, state: _EntityEpisodes
    ) -> AnomalyEvent | _Deferred:
        assert state.peak is not None and state.episode_start is not None
        threshold = decision.threshold if decision.threshold is not None else state.last_threshold
        event = AnomalyEvent(
            kind=kind,
            entity=decision.window.entity,
            episode_start=state.episode_start,
            window_start=decision.window.start,
            window_end=decision.window.end,
            score=float(decision.score),
            peak_score=state.peak.score,
            threshold=float(threshold) if threshold is not None else math.nan,
            severity=severity_of(state.peak_ratio, self.config.severity_ratios),
            model_version=decision.model_version,
            contributions=(
                self._shares(decision.window.channels, state.attribution)
                if state.attribution is not None
                else dict(state.peak.contributions)
            ),
            top_steps=state.peak.top_steps,
            signals=tuple(sorted(state.signals)),
        )
        if not state.pending:
            return event
        # The mean attribution as of this event, once the settle knows the pending windows'.
        return _Deferred(
            event,
            decision.window.channels,
            None if state.attribution is None else list(state.attribution),
            tuple(state.pending),
        )

    def forget(self, entities: Iterable[str]) -> None:
        """Drop these entities' state (e.g. their partition was revoked)."""
        for name in entities:
            self._entities.pop(name, None)

    def snapshot(self, entities: Iterable[str] | None = None) -> dict[str, Any]:
        """The state as a JSON-serialisable dict; ``entities`` limits it to those entities.

        Raises:
            RuntimeError: windows pushed since the last settle await attribution.
        """
        if self._awaiting:
            raise RuntimeError("Episodes.snapshot with windows awaiting attribution: settle first")
        names = list(self._entities) if entities is None else entities
        return {
            "version": _SNAPSHOT_VERSION,
            "config": self.config.to_dict(),
            "entities": {
                name: self._entities[name].to_dict() for name in names if name in self._entities
            },
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Take over the entities of a snapshot (same config), replacing their state here.

        Raises:
            ValueError: as :meth:`from_snapshot`.
        """
        _check_snapshot(self.config, snapshot)
        for name, data in snapshot["entities"].items():
            self._entities[name] = _EntityEpisodes.from_dict(data, self.config.open_within)

    @classmethod
    def from_snapshot(
        cls,
        config: EpisodeConfig,
        snapshot: Mapping[str, Any],
        attribute: Attribute | None = None,
    ) -> Episodes:
        """Rebuild from :meth:`snapshot` output, with the same config.

        Raises:
            ValueError: the snapshot is of another version or was taken with another config.
        """
        _check_snapshot(config, snapshot)
        episodes = cls(config, attribute)
        episodes._entities = {
            name: _EntityEpisodes.from_dict(data, config.open_within)
            for name, data in snapshot["entities"].items()
        }
        return episodes


class EpisodeSpan(NamedTuple):
    """An episode as its published events tell it: from its first anomalous window's start to
    its last event's window end, or, while it is not closed, to the moment it is looked at."""

    entity: str
    start: datetime
    end: datetime
    closed: bool


def episode_spans(
    events: Iterable[AnomalyEvent], *, until: datetime, since: datetime | None = None
) -> list[EpisodeSpan]:
    """The episodes that ``events`` describe, as known at ``until``, sorted by entity and start.

    Events are grouped by (entity, episode start); an episode without a CLOSED event is still
    open and reaches ``until``. Only episodes that started by ``until`` and, with ``since``,
    did not end before it are returned. The one reading of events that the retraining job
    (from the events topic), the replay evaluation and ``monitor report`` share.
    """
    ends: dict[tuple[str, datetime], datetime] = {}
    closed: set[tuple[str, datetime]] = set()
    for event in events:
        key = (event.entity, event.episode_start)
        ends[key] = max(ends.get(key, event.window_end), event.window_end)
        if event.kind is EpisodeEventKind.CLOSED:
            closed.add(key)
    spans = [
        EpisodeSpan(entity, start, end, True)
        if (entity, start) in closed
        else EpisodeSpan(entity, start, max(end, until), False)
        for (entity, start), end in ends.items()
    ]
    return sorted(
        (s for s in spans if s.start <= until and (since is None or s.end >= since)),
        key=lambda s: (s.entity, s.start),
    )
