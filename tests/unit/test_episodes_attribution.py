"""Episode attribution with an attribution function: the mean over a sample of the episode."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.episodes import EpisodeConfig, Episodes
from monitor.records import EpisodeEventKind, Window
from tests.unit.test_episodes import decision

CONFIG = EpisodeConfig(open_after=2, open_within=3, close_after_quiet=3, cooldown=0, update_every=2)


class Recorder:
    """An attribution function that blames channel a, then c, and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[Window] = []

    def __call__(self, window: Window) -> np.ndarray:
        self.asked.append(window)
        return np.array([1.0, 0.0, 0.0]) if len(self.asked) == 1 else np.array([0.0, 0.0, 1.0])


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
    episodes = Episodes(CONFIG, lambda window: np.array([np.nan, 1.0, 0.0]))
    events = _run(episodes, [2.0, 2.0, 0.0, 0.0, 0.0])
    assert events[-1].contributions == pytest.approx({"c": 0.7, "b": 0.2, "a": 0.1})
