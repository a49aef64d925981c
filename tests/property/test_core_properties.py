"""Property tests of thresholds and episodes, and of the three core objects run together.

- Thresholds: snapshot -> JSON -> restore at any point gives exactly the values and decisions of
  an uninterrupted run, for every method; classify never raises and is False while warming up.
- Episodes: per entity, events alternate OPENED (UPDATED*) CLOSED, so episodes never overlap;
  UPDATED events are at least ``update_every`` windows apart; every event's contributions sum to
  at most 1 (exactly 1 with all channels); snapshot -> restore -> continue is exact.
- The core (windows -> a stand-in model -> per-entity thresholds -> episodes), snapshotted and
  restored mid-stream, makes exactly the decisions and events of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.episodes import EpisodeConfig, Episodes
from monitor.records import EpisodeEventKind, Reading, Window, WindowDecision
from monitor.thresholds import Threshold, ThresholdConfig, make_threshold, threshold_from_snapshot
from monitor.windowing import WindowConfig, Windower

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

threshold_configs = st.builds(
    ThresholdConfig,
    method=st.sampled_from(["quantile", "ewma", "spot"]),
    min_warm_scores=st.integers(5, 60),
    quantile=st.sampled_from([0.5, 0.9, 0.99]),
    history=st.just(200),
    ewma_k=st.sampled_from([1.0, 3.0]),
    ewma_alpha=st.sampled_from([0.05, 0.2]),
    spot_q=st.sampled_from([1e-3, 1e-2]),
    spot_level=st.sampled_from([0.8, 0.95]),
    spot_max_excess=st.sampled_from([5, 50]),
    spot_depth=st.sampled_from([0, 0, 5]),
    spot_impute_censored=st.booleans(),
)

scores = st.lists(
    st.one_of(
        st.floats(0.0, 10.0, allow_nan=False),
        st.sampled_from([0.0, 1.0, 50.0, float("nan"), float("inf")]),
    ),
    min_size=0,
    max_size=250,
)


def step(threshold: Threshold, x: float) -> tuple[bool, float | None]:
    anomalous = threshold.classify(x)
    value = threshold.value
    if anomalous:
        threshold.learn_anomalous(x)
    else:
        threshold.learn_one(x)
    return anomalous, value


@SETTINGS
@given(threshold_configs, scores, st.lists(st.floats(0.0, 5.0), max_size=80), st.data())
def test_threshold_snapshot_restore_continue_is_exact(
    config: ThresholdConfig, stream: list[float], warm: list[float], data: st.DataObject
) -> None:
    whole = make_threshold(config)
    whole.warm_start(np.asarray(warm))
    expected = [step(whole, x) for x in stream]
    cut = data.draw(st.integers(0, len(stream)))
    part = make_threshold(config)
    part.warm_start(np.asarray(warm))
    got = [step(part, x) for x in stream[:cut]]
    part = threshold_from_snapshot(config, json.loads(json.dumps(part.snapshot())))
    got += [step(part, x) for x in stream[cut:]]
    assert got == expected
    for anomalous, value in got:
        assert value is None or not math.isnan(value)
        assert not (anomalous and value is None)  # warm-up never alarms


def decision_stream(draw: st.DrawFn, n: int) -> list[WindowDecision]:
    decisions = []
    for i in range(n):
        entity = draw(st.sampled_from(["x", "y"]))
        warming = draw(st.integers(0, 19)) == 0
        threshold = None if warming else 1.0
        score = draw(st.sampled_from([0.2, 0.9, 1.2, 1.8, 2.5, 6.0]))
        window = Window(
            entity=entity,
            start=T0 + timedelta(seconds=i),
            end=T0 + timedelta(seconds=i + 3),
            channels=("a", "b", "c"),
            values=np.zeros((4, 3)),
        )
        errors = draw(st.lists(st.floats(0.0, 5.0), min_size=3, max_size=3))
        steps = draw(st.lists(st.floats(0.0, 5.0), min_size=4, max_size=4))
        decisions.append(
            WindowDecision(
                window=window,
                model_version="v1",
                score=score,
                threshold=threshold,
                anomalous=threshold is not None and score > threshold,
                channel_errors=np.asarray(errors),
                step_errors=np.asarray(steps),
            )
        )
    return decisions


episode_configs = st.builds(
    EpisodeConfig,
    open_after=st.integers(1, 3),
    open_within=st.integers(3, 5),
    close_after_quiet=st.integers(1, 6),
    cooldown=st.integers(0, 5),
    update_every=st.integers(1, 4),
    top_channels=st.sampled_from([0, 2]),
    top_steps=st.integers(0, 4),
)


@SETTINGS
@given(episode_configs, st.data())
def test_episodes_never_overlap_and_restore_exactly(config: EpisodeConfig, data: Any) -> None:
    decisions = decision_stream(data.draw, data.draw(st.integers(0, 200)))
    episodes = Episodes(config)
    expected = [episodes.learn_one(d) for d in decisions]

    open_since: dict[str, int | None] = {}
    last_event: dict[str, int] = {}
    for index, (decision, events) in enumerate(zip(decisions, expected, strict=True)):
        entity = decision.window.entity
        assert len(events) <= 1
        for event in events:
            assert event.entity == entity
            assert sum(event.contributions.values()) <= 1 + 1e-9
            if config.top_channels == 0:
                assert math.isclose(sum(event.contributions.values()), 1.0)
            assert len(event.top_steps) == min(config.top_steps, 4)
            if event.kind is EpisodeEventKind.OPENED:
                assert open_since.get(entity) is None
                open_since[entity] = index
                assert decision.anomalous
            elif event.kind is EpisodeEventKind.UPDATED:
                assert open_since.get(entity) is not None
                assert index - last_event[entity] >= config.update_every
            else:
                assert open_since.get(entity) is not None
                open_since[entity] = None
            last_event[entity] = index
        assert episodes_open_matches(open_since, entity, decisions[: index + 1], config)

    cut = data.draw(st.integers(0, len(decisions)))
    part = Episodes(config)
    got = [part.learn_one(d) for d in decisions[:cut]]
    part = Episodes.from_snapshot(config, json.loads(json.dumps(part.snapshot())))
    got += [part.learn_one(d) for d in decisions[cut:]]
    assert got == expected


def episodes_open_matches(
    open_since: dict[str, int | None],
    entity: str,
    seen: list[WindowDecision],
    config: EpisodeConfig,
) -> bool:
    """Replaying the entity's decisions so far gives the same open/closed state."""
    replay = Episodes(config)
    for d in seen:
        if d.window.entity == entity:
            replay.learn_one(d)
    return replay.is_open(entity) == (open_since.get(entity) is not None)


# -- the core together ------------------------------------------------------------------------


def fake_scores(window: Window) -> tuple[float, np.ndarray, np.ndarray]:
    """A stand-in model: the error is the squared deviation from 10 (the normal level)."""
    errors = (window.values - 10.0) ** 2  # (time, channels)
    return float(errors.mean()), errors.mean(axis=0), errors.mean(axis=1)


class Core:
    """windows -> stand-in model -> per-entity thresholds -> episodes, like the Detector."""

    def __init__(
        self, window: WindowConfig, threshold: ThresholdConfig, episodes: EpisodeConfig
    ) -> None:
        self.configs = (window, threshold, episodes)
        self.windower = Windower(window)
        self.thresholds: dict[str, Threshold] = {}
        self.episodes = Episodes(episodes)

    def learn_one(self, reading: Reading) -> list[tuple[Any, ...]]:
        out = []
        for window in self.windower.learn_one(reading).windows:
            score, channel_errors, step_errors = fake_scores(window)
            threshold = self.thresholds.get(window.entity)
            if threshold is None:
                threshold = make_threshold(self.configs[1])
                threshold.warm_start(np.linspace(0.0, 2.0, 30))
                self.thresholds[window.entity] = threshold
            anomalous = threshold.classify(score)
            decision = WindowDecision(
                window, "v1", score, threshold.value, anomalous, channel_errors, step_errors
            )
            if anomalous:
                threshold.learn_anomalous(score)
            elif not self.episodes.is_open(window.entity):
                threshold.learn_one(score)
            events = self.episodes.learn_one(decision)
            out.append((window.entity, window.end, score, decision.threshold, anomalous, events))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "windower": self.windower.snapshot(),
            "thresholds": {e: t.snapshot() for e, t in self.thresholds.items()},
            "episodes": self.episodes.snapshot(),
        }

    @classmethod
    def from_snapshot(cls, configs: tuple[Any, Any, Any], snapshot: dict[str, Any]) -> Core:
        core = cls(*configs)
        core.windower = Windower.from_snapshot(configs[0], snapshot["windower"])
        core.thresholds = {
            e: threshold_from_snapshot(configs[1], s) for e, s in snapshot["thresholds"].items()
        }
        core.episodes = Episodes.from_snapshot(configs[2], snapshot["episodes"])
        return core


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["quantile", "ewma", "spot"]), st.data())
def test_core_snapshot_restore_continue_gives_the_same_decisions(method: str, data: Any) -> None:
    window = WindowConfig(length=4, stride=1, interval_s=1.0, grace_s=2.0, max_fill_steps=1)
    threshold = ThresholdConfig(method=method, min_warm_scores=20, history=200)
    episodes = EpisodeConfig(
        open_after=2, open_within=3, close_after_quiet=4, cooldown=2, update_every=2
    )
    readings = []
    for entity in ("p", "q"):
        n = data.draw(st.integers(10, 80))
        level = data.draw(
            st.lists(st.sampled_from([10.0, 10.0, 10.0, 13.0, 30.0]), min_size=n, max_size=n)
        )
        for t in range(n):
            if data.draw(st.integers(0, 9)) == 0:
                continue  # a dropout
            delay = data.draw(st.integers(0, 1_999_999))
            values = {"u": level[t] + 0.1 * (t % 3), "v": 10.0 - 0.1 * (t % 2)}
            readings.append(
                (t * 1_000_000 + delay, Reading(entity, T0 + timedelta(seconds=t), values))
            )
    readings = [r for _, r in sorted(readings, key=lambda item: item[0])]
    whole = Core(window, threshold, episodes)
    expected = [whole.learn_one(r) for r in readings]
    cut = data.draw(st.integers(0, len(readings)))
    part = Core(window, threshold, episodes)
    got = [part.learn_one(r) for r in readings[:cut]]
    part = Core.from_snapshot(part.configs, json.loads(json.dumps(part.snapshot())))
    got += [part.learn_one(r) for r in readings[cut:]]
    assert got == expected
