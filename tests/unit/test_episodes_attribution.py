"""Episode attribution with an attribution function: the mean over a sample of the episode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from monitor.episodes import EpisodeConfig, Episodes
from monitor.records import EpisodeEventKind, Window, WindowDecision
from tests.unit.test_episodes import decision

CONFIG = EpisodeConfig(open_after=2, open_within=3, close_after_quiet=3, cooldown=0, update_every=2)


class Recorder:
    """An attribution function that blames channel a, then c, and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[Window] = []
        self.calls = 0

    def __call__(self, decisions: Sequence[WindowDecision]) -> np.ndarray:
        self.calls += 1
        rows = []
        for d in decisions:
            self.asked.append(d.window)
            rows.append([1.0, 0.0, 0.0] if len(self.asked) == 1 else [0.0, 0.0, 1.0])
        return np.array(rows)


def _run(episodes: Episodes, scores: list[float]) -> list:
    return [e for i, s in enumerate(scores) for e in episodes.learn_one(decision(i, s))]


def test_events_report_the_mean_attribution_of_the_sampled_windows() -> None:
    attribute = Recorder()
    episodes = Episodes(CONFIG, attribute)
    # Opens at window 1; anomalous windows 2..7 (every 2nd sampled), then quiet 8..10 closes.
    events = _run(episodes, [2.0, 2.0, 2.0, 3.0, 2.0, 4.0, 2.0, 5.0, 0.0, 0.0, 0.0])

    opened, closed = events[0], events[-1]
    assert opened.kind is EpisodeEventKind.OPENED and closed.kind is EpisodeEventKind.CLOSED
    assert opened.contributions == {"a": 1.0, "b": 0.0, "c": 0.0}  # the opening window alone
    # Window 1 opened it; windows 3, 5 and 7 are the sampled ones: a once, c three times.
    assert [w.end.second for w in attribute.asked] == [1, 3, 5, 7]
    assert closed.contributions == pytest.approx({"c": 0.75, "a": 0.25, "b": 0.0})
    assert list(closed.contributions) == ["c", "a", "b"]  # largest share first


def test_without_an_attribution_function_the_peak_window_errors_are_reported() -> None:
    events = _run(Episodes(CONFIG), [2.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    shares = events[-1].contributions
    assert shares == pytest.approx({"c": 0.7, "b": 0.2, "a": 0.1})  # errors (1, 2, 7)


def test_snapshot_restore_carries_the_attribution_on_exactly() -> None:
    scores = [2.0, 2.0, 2.0, 3.0, 2.0, 4.0, 2.0, 5.0, 0.0, 0.0, 0.0]
    whole = _run(Episodes(CONFIG, Recorder()), scores)

    attribute = Recorder()
    first = Episodes(CONFIG, attribute)
    head = [e for i, s in enumerate(scores[:4]) for e in first.learn_one(decision(i, s))]
    restored = Episodes.from_snapshot(CONFIG, first.snapshot(), attribute)
    tail = [
        e for i, s in enumerate(scores[4:], start=4) for e in restored.learn_one(decision(i, s))
    ]
    assert head + tail == whole


def test_a_broken_attribution_is_ignored_not_fatal() -> None:
    episodes = Episodes(CONFIG, lambda decisions: np.array([[np.nan, 1.0, 0.0]] * len(decisions)))
    events = _run(episodes, [2.0, 2.0, 0.0, 0.0, 0.0])
    assert events[-1].contributions == pytest.approx({"c": 0.7, "b": 0.2, "a": 0.1})


def _by_window(decisions: Sequence[WindowDecision]) -> np.ndarray:
    """Shares that depend on the window alone (its end's second), one row unusable (NaN)."""
    rows = []
    for d in decisions:
        second = d.window.end.second
        rows.append([np.nan, 1.0, 1.0] if second == 13 else [1.0 + second % 3, 0.5, second / 10])
    return np.array(rows)


class Counting:
    def __init__(self) -> None:
        self.calls = 0
        self.windows = 0

    def __call__(self, decisions: Sequence[WindowDecision]) -> np.ndarray:
        self.calls += 1
        self.windows += len(decisions)
        return _by_window(decisions)


# Two entities; e1 opens, updates, closes, and opens again (cooldown 0) within the run; window
# 13 of e1 is attributed and its shares are unusable.
RUN = [
    decision(i, score, entity=entity)
    for i in range(40)
    for entity, score in (
        ("e1", 3.0 if i < 16 or 22 <= i < 30 else 0.0),
        ("e2", 2.0 + i / 10 if 5 <= i < 25 else 0.0),
    )
]


def test_settling_a_batch_once_gives_the_events_of_one_window_at_a_time() -> None:
    one_by_one = Episodes(CONFIG, _by_window)
    expected = [e for d in RUN for e in one_by_one.learn_one(d)]
    assert sum(e.kind is EpisodeEventKind.OPENED for e in expected) == 3

    attribute = Counting()
    batched = Episodes(CONFIG, attribute)
    for d in RUN:
        batched.push(d)
    waiting = batched.pending()
    assert waiting and attribute.calls == 0  # noted, not yet attributed
    assert batched.settle() == expected
    assert (attribute.calls, attribute.windows) == (1, len(waiting))
    # Later windows after a settle go on from the settled state, exactly.
    tail = [decision(i, 3.0, entity="e1") for i in range(40, 48)]
    for d in tail:
        batched.push(d)
    assert batched.settle() == [e for d in tail for e in one_by_one.learn_one(d)]
    assert batched.snapshot() == one_by_one.snapshot()


def test_shares_computed_by_the_caller_settle_the_same_events() -> None:
    """As process_together does: the pending windows of several Episodes in one call."""
    first, second = Episodes(CONFIG, _by_window), Episodes(CONFIG, _by_window)
    for d in RUN:
        (first if d.window.entity == "e1" else second).push(d)
    waiting = [first.pending(), second.pending()]
    shares = _by_window([d for part in waiting for d in part])
    cut = len(waiting[0])
    events = first.settle(shares[:cut]) + second.settle(shares[cut:])

    alone = Episodes(CONFIG, _by_window)
    expected = [e for d in RUN for e in alone.learn_one(d)]
    key = lambda e: (e.entity, e.window_end, e.kind.value)  # noqa: E731
    assert sorted(events, key=key) == sorted(expected, key=key)


def test_a_snapshot_waits_for_the_settle() -> None:
    episodes = Episodes(CONFIG, _by_window)
    for d in RUN[:6]:
        episodes.push(d)
    with pytest.raises(RuntimeError, match="settle first"):
        episodes.snapshot()
    episodes.settle()
    assert episodes.snapshot()["entities"]
