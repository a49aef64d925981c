"""Unit tests of monitor.episodes: the state machine, attribution, severity, snapshots."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.episodes import EpisodeConfig, Episodes, severity_of
from monitor.records import (
    AnomalyEvent,
    EpisodeEventKind,
    Severity,
    Signal,
    Window,
    WindowDecision,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHANNELS = ("a", "b", "c")
LENGTH = 8


def decision(
    i: int,
    score: float,
    *,
    threshold: float | None = 1.0,
    entity: str = "e",
    channel_errors: tuple[float, ...] = (1.0, 2.0, 7.0),
    hot_step: int = 3,
    model_version: str = "v1",
    off_rhythm: bool = False,
) -> WindowDecision:
    """The decision on the window ending at step i (stride 1, length 8, 1 s steps)."""
    window = Window(
        entity=entity,
        start=T0 + timedelta(seconds=i - LENGTH + 1),
        end=T0 + timedelta(seconds=i),
        channels=CHANNELS,
        values=np.zeros((LENGTH, len(CHANNELS))),
    )
    steps = np.arange(LENGTH, dtype=float) / 100
    steps[hot_step] = 5.0
    return WindowDecision(
        window=window,
        model_version=model_version,
        score=score,
        threshold=threshold,
        anomalous=threshold is not None and score > threshold,
        channel_errors=np.asarray(channel_errors, dtype=float),
        step_errors=steps,
        off_rhythm=off_rhythm,
    )


def feed(episodes: Episodes, scores: list[float], start: int = 0) -> list[tuple[int, AnomalyEvent]]:
    events = []
    for offset, score in enumerate(scores):
        for event in episodes.learn_one(decision(start + offset, score)):
            events.append((start + offset, event))
    return events


SMALL = EpisodeConfig(
    open_after=3, open_within=5, close_after_quiet=4, cooldown=3, update_every=2, top_steps=2
)


def test_opens_after_n_of_the_last_m_anomalous_windows() -> None:
    episodes = Episodes(SMALL)
    events = feed(episodes, [2.0, 0.5, 2.0, 0.5, 0.5, 2.0, 0.5, 0.5])
    assert events == []  # never 3 of the last 5
    events = feed(episodes, [2.0, 3.0], start=8)  # windows 5..9: 2, .5, .5, 2, 3
    assert [(i, e.kind) for i, e in events] == [(9, EpisodeEventKind.OPENED)]
    opened = events[0][1]
    assert episodes.is_open("e") and not episodes.is_open("other")
    assert opened.episode_start == T0 + timedelta(seconds=5 - LENGTH + 1)  # window ending at 5
    assert opened.window_end == T0 + timedelta(seconds=9)
    assert opened.score == 3.0 and opened.peak_score == 3.0 and opened.threshold == 1.0
    assert opened.model_version == "v1"


def test_closes_after_quiet_windows_then_cools_down() -> None:
    episodes = Episodes(SMALL)
    events = feed(episodes, [2.0, 2.0, 2.0, 0.5, 2.0, 0.5, 0.5, 0.5, 0.5])
    assert [(i, e.kind) for i, e in events] == [
        (2, EpisodeEventKind.OPENED),
        (8, EpisodeEventKind.CLOSED),  # 4 quiet windows after the anomalous window 4
    ]
    assert not episodes.is_open("e")
    # Cooldown of 3 windows: anomalies at 9..11 cannot open; window 12 can (3 of the last 5).
    events = feed(episodes, [2.0, 2.0, 2.0, 2.0], start=9)
    assert [(i, e.kind) for i, e in events] == [(12, EpisodeEventKind.OPENED)]


def test_updates_are_rate_limited_and_only_when_the_peak_rises() -> None:
    episodes = Episodes(SMALL)
    scores = [2.0, 2.0, 2.0, 3.0, 4.0, 5.0, 4.0, 4.0, 4.0, 6.0]
    events = feed(episodes, scores)
    kinds = [(i, e.kind) for i, e in events]
    # Opened at 2; the peak rises at 3, 4, 5 and 9; an update needs 2 windows since the last
    # event, so the rise at 5 is reported at 6 and the one at 3 at 4.
    assert kinds == [
        (2, EpisodeEventKind.OPENED),
        (4, EpisodeEventKind.UPDATED),
        (6, EpisodeEventKind.UPDATED),
        (9, EpisodeEventKind.UPDATED),
    ]
    assert [e.peak_score for _, e in events] == [2.0, 4.0, 5.0, 6.0]
    assert [e.score for _, e in events] == [2.0, 4.0, 4.0, 6.0]


def test_severity_comes_from_the_peak_ratio() -> None:
    assert severity_of(1.0) is Severity.LOW
    assert severity_of(1.5) is Severity.MEDIUM
    assert severity_of(2.0) is Severity.HIGH
    assert severity_of(4.0) is Severity.CRITICAL
    episodes = Episodes(SMALL)
    events = feed(episodes, [1.2, 1.2, 1.6, 0.5, 0.5, 9.0, 0.5, 0.5])
    assert [(e.kind, e.severity) for _, e in events] == [
        (EpisodeEventKind.OPENED, Severity.MEDIUM),
        (EpisodeEventKind.UPDATED, Severity.CRITICAL),
    ]


def test_attribution_is_the_peak_windows_shares_and_top_steps() -> None:
    episodes = Episodes(SMALL)
    episodes.learn_one(decision(0, 2.0, channel_errors=(1.0, 2.0, 7.0), hot_step=3))
    episodes.learn_one(decision(1, 5.0, channel_errors=(6.0, 3.0, 1.0), hot_step=6))
    (opened,) = episodes.learn_one(decision(2, 2.5, channel_errors=(1.0, 1.0, 1.0)))
    assert opened.contributions == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1})
    assert list(opened.contributions) == ["a", "b", "c"]  # largest share first
    assert sum(opened.contributions.values()) == pytest.approx(1.0)
    assert opened.top_steps == (6, 7)  # step 6 is hot, then the largest of the rest
    assert opened.peak_score == 5.0 and opened.score == 2.5


def test_top_channels_keeps_the_largest_shares() -> None:
    config = EpisodeConfig(open_after=1, open_within=1, top_channels=2)
    episodes = Episodes(config)
    (opened,) = episodes.learn_one(decision(0, 2.0, channel_errors=(1.0, 2.0, 7.0)))
    assert opened.contributions == pytest.approx({"c": 0.7, "b": 0.2})


def test_degenerate_errors_give_equal_shares() -> None:
    episodes = Episodes(EpisodeConfig(open_after=1, open_within=1))
    (opened,) = episodes.learn_one(decision(0, 2.0, channel_errors=(0.0, 0.0, 0.0)))
    assert opened.contributions == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_warming_threshold_counts_as_normal_and_closing_keeps_last_threshold() -> None:
    episodes = Episodes(SMALL)
    feed(episodes, [2.0, 2.0, 2.0])
    assert episodes.is_open("e")
    closed = []
    for i in range(3, 7):
        closed += episodes.learn_one(decision(i, 9.0, threshold=None))
    assert [e.kind for e in closed] == [EpisodeEventKind.CLOSED]
    assert closed[0].threshold == 1.0 and closed[0].score == 9.0


def test_entities_are_independent_and_idle_ones_hold_no_state() -> None:
    episodes = Episodes(SMALL)
    for i in range(3):
        episodes.learn_one(decision(i, 2.0, entity="hot"))
        episodes.learn_one(decision(i, 0.1, entity="calm"))
    assert episodes.is_open("hot") and not episodes.is_open("calm")
    assert episodes.open_entities() == ["hot"]
    assert "calm" not in episodes._entities


@settings(max_examples=150, deadline=None)
@given(
    windows=st.lists(
        st.tuples(
            st.sampled_from(["p", "q"]),
            st.sampled_from([0.1, 0.5, 2.0, 5.0]),  # scores against a threshold of 1
            st.booleans(),  # off the rhythms
            st.booleans(),  # the threshold warming up
        ),
        max_size=80,
    )
)
def test_normal_windows_of_untracked_entities_can_be_left_out(
    windows: list[tuple[str, float, bool, bool]],
) -> None:
    # The Detector pushes a window only when the entity is tracked, or the window is anomalous
    # or off its rhythms: the events and the state must be those of pushing every window.
    every, some = Episodes(SMALL), Episodes(SMALL)
    for i, (entity, score, off_rhythm, warming) in enumerate(windows):
        d = decision(
            i, score, entity=entity, off_rhythm=off_rhythm, threshold=None if warming else 1.0
        )
        every.push(d)
        if some.tracks(entity) or d.anomalous or d.off_rhythm:
            some.push(d)
        assert some.tracks(entity) == every.tracks(entity)
        assert some.is_open(entity) == every.is_open(entity)
    assert [repr(e) for e in some.settle()] == [repr(e) for e in every.settle()]
    assert some.snapshot() == every.snapshot()


def test_model_version_comes_from_the_decision() -> None:
    episodes = Episodes(EpisodeConfig(open_after=1, open_within=1))
    (opened,) = episodes.learn_one(decision(0, 2.0, model_version="v7"))
    assert opened.model_version == "v7"


def test_snapshot_restore_continue_is_exact() -> None:
    rng = np.random.default_rng(0)
    stream = []
    for i in range(300):
        entity = "xy"[i % 2]
        score = float(rng.choice([0.5, 1.5, 3.0, 5.0], p=[0.6, 0.2, 0.15, 0.05]))
        errors = tuple(float(v) for v in rng.random(3))
        off = bool(rng.random() < 0.1)
        stream.append(decision(i // 2, score, entity=entity, channel_errors=errors, off_rhythm=off))
    whole = Episodes(SMALL)
    expected = [whole.learn_one(d) for d in stream]
    assert sum(len(e) for e in expected) > 10
    for cut in (1, 37, 150, 299):
        part = Episodes(SMALL)
        got = [part.learn_one(d) for d in stream[:cut]]
        part = Episodes.from_snapshot(SMALL, json.loads(json.dumps(part.snapshot())))
        got += [part.learn_one(d) for d in stream[cut:]]
        assert got == expected


def test_off_rhythm_windows_open_episodes_and_events_name_their_signals() -> None:
    episodes = Episodes(SMALL)
    opened = []
    for i in range(3):  # below the threshold, but off the entity's rhythm
        opened += episodes.learn_one(decision(i, 0.5, off_rhythm=True))
    assert [e.kind for e in opened] == [EpisodeEventKind.OPENED]
    assert opened[0].signals == (Signal.RHYTHM,)
    assert opened[0].severity is Severity.LOW  # the score never passed the threshold
    episodes.learn_one(decision(3, 5.0))  # the model now sees it too
    events = [e for _, e in feed(episodes, [0.5] * 8, start=4)]
    closed = [e for e in events if e.kind is EpisodeEventKind.CLOSED]
    assert len(closed) == 1 and closed[0].signals == (Signal.RECONSTRUCTION, Signal.RHYTHM)
    # A new episode starts with only its own windows' signals.
    again = [e for _, e in feed(episodes, [0.5, 0.5, 0.5, 3.0, 3.0, 3.0], start=12)]
    assert [e.kind for e in again] == [EpisodeEventKind.OPENED]
    assert again[0].signals == (Signal.RECONSTRUCTION,)


def test_a_window_warming_up_is_normal_even_off_rhythm() -> None:
    episodes = Episodes(SMALL)
    events = [
        e
        for i in range(10)
        for e in episodes.learn_one(decision(i, 5.0, threshold=None, off_rhythm=True))
    ]
    assert events == [] and not episodes.is_open("e")


def test_a_snapshot_from_before_signals_restores_as_reconstruction() -> None:
    episodes = Episodes(SMALL)
    feed(episodes, [2.0, 2.0, 2.0])
    state = json.loads(json.dumps(episodes.snapshot()))
    for entity in state["entities"].values():
        del entity["signals"]
        if entity["peak"] is not None:
            del entity["peak"]["signals"]
    restored = Episodes.from_snapshot(SMALL, state)
    events = [e for i in range(3, 12) for e in restored.learn_one(decision(i, 0.5))]
    assert [e.kind for e in events] == [EpisodeEventKind.CLOSED]
    assert events[0].signals == (Signal.RECONSTRUCTION,)


def test_snapshot_with_another_config_is_refused() -> None:
    with pytest.raises(ValueError, match="config"):
        Episodes.from_snapshot(EpisodeConfig(), Episodes(SMALL).snapshot())


def test_defaults_suit_a_stride_one_window_64_stream() -> None:
    config = EpisodeConfig()
    assert (config.open_after, config.open_within) == (3, 5)
    assert config.close_after_quiet == 64 and config.cooldown == 64 and config.update_every == 16


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"open_after": 0}, "open_after"),
        ({"open_after": 4, "open_within": 3}, "open_within"),
        ({"close_after_quiet": 0}, "close_after_quiet"),
        ({"cooldown": -1}, "cooldown"),
        ({"update_every": 0}, "update_every"),
        ({"top_steps": -1}, "top_steps"),
        ({"severity_ratios": (2.0, 1.5, 4.0)}, "severity_ratios"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EpisodeConfig(**kwargs)


def test_config_round_trips_through_a_dict() -> None:
    config = EpisodeConfig(open_after=2, severity_ratios=(1.2, 3.0, 5.0))
    assert EpisodeConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_partition_move_hands_over_some_entities() -> None:
    stream = [decision(i, 3.0 if i % 7 < 4 else 0.5, entity=e) for i in range(40) for e in "xy"]
    whole = Episodes(SMALL)
    expected = [whole.learn_one(d) for d in stream]
    old_owner = Episodes(SMALL)
    for d in stream[:21]:
        old_owner.learn_one(d)
    assert old_owner.is_open("y")
    new_owner = Episodes(SMALL)
    new_owner.restore(json.loads(json.dumps(old_owner.snapshot(entities=["y"]))))
    old_owner.forget(["y"])
    assert not old_owner.is_open("y") and new_owner.is_open("y")
    for d, events in zip(stream[21:], expected[21:], strict=True):
        owner = old_owner if d.window.entity == "x" else new_owner
        assert owner.learn_one(d) == events
