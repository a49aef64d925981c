"""Unit tests of EpisodeConfig.max_open: persistent episodes are closed after a bounded length."""

from __future__ import annotations

import json

import pytest

from monitor.episodes import EpisodeConfig, Episodes
from monitor.records import EpisodeEventKind
from tests.unit.test_episodes import SMALL, decision, feed

LIMITED = EpisodeConfig(
    open_after=3,
    open_within=5,
    close_after_quiet=4,
    cooldown=3,
    update_every=2,
    top_steps=2,
    max_open=10,
)


def test_a_lasting_anomaly_closes_after_max_open_windows_then_reopens() -> None:
    episodes = Episodes(LIMITED)
    events = feed(episodes, [2.0] * 30)
    kinds = [(i, e.kind) for i, e in events if e.kind is not EpisodeEventKind.UPDATED]
    # Opened at 2, closed 10 windows later at 12; the cooldown runs over 13..15 (those windows
    # still enter the history), so 16 reopens, and 26 closes again.
    assert kinds == [
        (2, EpisodeEventKind.OPENED),
        (12, EpisodeEventKind.CLOSED),
        (16, EpisodeEventKind.OPENED),
        (26, EpisodeEventKind.CLOSED),
    ]
    closed = events[[e.kind for _, e in events].index(EpisodeEventKind.CLOSED)][1]
    assert closed.score == 2.0 and closed.peak_score == 2.0


def test_without_max_open_a_lasting_anomaly_stays_one_episode() -> None:
    episodes = Episodes(SMALL)
    events = feed(episodes, [2.0] * 30)
    assert [(i, e.kind) for i, e in events] == [(2, EpisodeEventKind.OPENED)]
    assert episodes.is_open("e")


def test_a_window_that_closes_a_persistent_episode_emits_only_closed() -> None:
    # The peak rises on the very window that reaches max_open: one event, CLOSED, not UPDATED.
    episodes = Episodes(LIMITED)
    events = feed(episodes, [2.0, 2.0, 2.0] + [2.0] * 9 + [7.0])
    assert [(i, e.kind) for i, e in events][-1] == (12, EpisodeEventKind.CLOSED)
    assert events[-1][1].peak_score == 7.0
    assert all(len(episodes.learn_one(decision(13 + k, 2.0))) <= 1 for k in range(20))


def test_quiet_close_before_max_open_is_unchanged() -> None:
    episodes = Episodes(LIMITED)
    events = feed(episodes, [2.0, 2.0, 2.0, 0.5, 2.0, 0.5, 0.5, 0.5, 0.5])
    assert [(i, e.kind) for i, e in events] == [
        (2, EpisodeEventKind.OPENED),
        (8, EpisodeEventKind.CLOSED),
    ]


def test_snapshot_in_the_middle_of_a_long_episode_is_exact() -> None:
    stream = [decision(i, 2.0 if i % 7 else 0.5) for i in range(60)]
    whole = Episodes(LIMITED)
    expected = [whole.learn_one(d) for d in stream]
    for cut in (5, 11, 33):
        part = Episodes(LIMITED)
        got = [part.learn_one(d) for d in stream[:cut]]
        part = Episodes.from_snapshot(LIMITED, json.loads(json.dumps(part.snapshot())))
        got += [part.learn_one(d) for d in stream[cut:]]
        assert got == expected


def test_max_open_is_validated_and_round_trips() -> None:
    assert EpisodeConfig().max_open == 0
    with pytest.raises(ValueError, match="max_open"):
        EpisodeConfig(max_open=-1)
    with pytest.raises(ValueError, match="max_open"):
        EpisodeConfig(max_open=2.5)  # type: ignore[arg-type]
    assert EpisodeConfig.from_dict(LIMITED.to_dict()) == LIMITED
