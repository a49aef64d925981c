"""Reading episodes back from their events: the one function the job, replay and report share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.episodes import EpisodeSpan, episode_spans
from monitor.records import AnomalyEvent, EpisodeEventKind, Severity

T0 = datetime(2024, 5, 1, tzinfo=UTC)
H = timedelta(hours=1)


def _event(kind: EpisodeEventKind, entity: str, start: datetime, end: datetime) -> AnomalyEvent:
    return AnomalyEvent(
        kind=kind,
        entity=entity,
        episode_start=start,
        window_start=end - H,
        window_end=end,
        score=2.0,
        peak_score=2.0,
        threshold=1.0,
        severity=Severity.HIGH,
        model_version="v1",
    )


def test_events_group_into_episodes_and_an_open_one_reaches_until() -> None:
    opened, updated, closed = (
        EpisodeEventKind.OPENED,
        EpisodeEventKind.UPDATED,
        EpisodeEventKind.CLOSED,
    )
    events = [
        _event(opened, "b", T0, T0 + H),
        _event(opened, "a", T0 + 2 * H, T0 + 3 * H),
        _event(updated, "b", T0, T0 + 4 * H),
        _event(closed, "b", T0, T0 + 5 * H),
        _event(opened, "a", T0 + 20 * H, T0 + 21 * H),  # after `until`: not known yet
    ]
    until = T0 + 10 * H
    assert episode_spans(events, until=until) == [
        EpisodeSpan("a", T0 + 2 * H, until, False),
        EpisodeSpan("b", T0, T0 + 5 * H, True),
    ]
    # `since` keeps the episodes that reach it: the closed one ended before.
    assert episode_spans(events, until=until, since=T0 + 6 * H) == [
        EpisodeSpan("a", T0 + 2 * H, until, False)
    ]
    assert episode_spans([], until=until) == []
