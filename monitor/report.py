"""Reports: one entity's readings, reconstruction, scores, episodes and latent codes, drawn.

``monitor report`` answers "what did the monitor see, and why did it alarm?" for one entity and
a time range. The entity's readings come from a CSV (:func:`report_from_csv`) or are read back
from the readings topic (:func:`report_from_topics`); either way they are replayed through the
very :class:`~monitor.pipeline.Detector` the daemon runs, with the serving model, and
:func:`build_report` collects, for every window that ends in the range:

- its score, the entity's threshold at that moment (NaN while it warms up) and its per-channel
  errors;
- whether it lies in an anomaly episode (its end between the episode's start and end);

and the model's reconstruction of each step of the range: the mean, over the kept windows that
contain the step, of their reconstructions of it. (A window's first and last steps are the ones
an autoencoder reconstructs worst; the mean shows what the model makes of the signal, which is
what its scores measure.)

Episodes are the Detector's own (from a CSV) or the ones published on the events topic (from
the topics); labelled windows come from a NAB-style windows file when one is known. The latent
codes of an evenly spaced subsample of the windows (``max_latent_windows``) are projected to
two dimensions by PCA (NumPy's SVD), flagged normal or in-episode.

:func:`render_png` draws one panel per channel (readings and reconstruction), the score against
the threshold, episodes and labels shaded on both, and the latent scatter; :func:`render_html`
writes a self-contained page (the PNG inline as a data URI, an episode table, the model
version; no external link, stylesheet or script). :func:`write_report` does both.

Example::

    model, config = load_serving(settings)
    report = report_from_csv("sample_streams/machines.csv", model, config, entity="machine-02")
    write_report(report, "runs/report/machine-02")  # machine-02.png, machine-02.html
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from models.base import Autoencoder
from monitor.episodes import episode_spans
from monitor.errors import ConfigError
from monitor.labels import find_labels_file, windows_for
from monitor.pipeline import Detector, DetectorConfig
from monitor.records import AnomalyEvent, Reading, WindowDecision

__all__ = [
    "EpisodeSummary",
    "Report",
    "build_report",
    "parse_range",
    "project_2d",
    "render_html",
    "render_png",
    "report_from_csv",
    "report_from_topics",
    "write_report",
]

Interval = tuple[datetime, datetime]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Windows per reconstruct/encode call: bounds memory for long streams.
_CHUNK = 4096
_EPISODE_COLOUR = "tab:red"
_LABEL_COLOUR = "#e6a100"


@dataclass(frozen=True, slots=True)
class EpisodeSummary:
    """One anomaly episode of the report's entity, summarised from the report's windows.

    ``start``/``end`` are the episode's (UTC; an episode still open at the end of the range ends
    there). ``peak_score`` is the highest score of the report's windows inside it, ``peak_ratio``
    that score over the threshold of its window, ``top_channel`` the channel that window's
    error is attributed to most (the Detector's attribution where it made one, else the
    largest per-channel error); ``windows`` counts the report's windows inside it (0, and NaN / None
    for the rest, when none of them is). ``labelled`` says whether it overlaps a labelled window;
    ``ongoing`` that it was still open at the end of the range.
    """

    start: datetime
    end: datetime
    peak_score: float
    peak_ratio: float
    peak_time: datetime | None
    top_channel: str | None
    windows: int
    labelled: bool
    ongoing: bool = False


@dataclass(frozen=True, eq=False)
class Report:
    """Everything a report shows, as arrays; built by :func:`build_report`, drawn by the renderers.

    Times are ``datetime64[ns]`` arrays holding UTC without a zone (what matplotlib plots).

    Attributes:
        entity, channels, model_kind, model_version, source: what was scored, by which model,
            from where (a file path or a topic name).
        start, end: the requested range (None: open).
        times: (readings,) event times of the entity's readings in the range.
        values: (readings, channels) their raw values; NaN where a reading lacks a channel.
        window_ends: (windows,) end of each scored window in the range, in time order.
        reconstruction_times: (steps,) the steps (of the windows' grid) in the range.
        reconstruction: (steps, channels) raw-unit reconstruction of each step, averaged over
            the windows that contain it.
        scores, thresholds: (windows,) score and threshold (NaN while warming up).
        channel_errors: (windows, channels) error per channel.
        in_episode: (windows,) whether each window's end lies in an episode.
        episodes: the episodes overlapping the range, in time order.
        labels: labelled anomaly windows overlapping the range, in time order.
        latent: (points, 2) PCA projection of the latent codes of ``latent_windows``.
        latent_windows: (points,) indexes into the windows, increasing.
        latent_explained: (2,) share of the codes' variance each axis explains.
        notes: sentences the HTML page shows under the summary (how things were obtained).
    """

    entity: str
    channels: tuple[str, ...]
    model_kind: str
    model_version: str
    source: str
    start: datetime | None
    end: datetime | None
    times: np.ndarray
    values: np.ndarray
    window_ends: np.ndarray
    reconstruction_times: np.ndarray
    reconstruction: np.ndarray
    scores: np.ndarray
    thresholds: np.ndarray
    channel_errors: np.ndarray
    in_episode: np.ndarray
    episodes: tuple[EpisodeSummary, ...]
    labels: tuple[Interval, ...]
    latent: np.ndarray
    latent_windows: np.ndarray
    latent_explained: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def windows(self) -> int:
        """Scored windows in the range."""
        return len(self.window_ends)

    @property
    def latent_anomalous(self) -> np.ndarray:
        """(points,) True for the projected windows that lie in an episode."""
        return self.in_episode[self.latent_windows]


# -- the core: readings in, a Report out ----------------------------------------------------------


def build_report(
    model: Autoencoder,
    readings: Iterable[Reading],
    *,
    entity: str | None = None,
    config: DetectorConfig | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    labels: Sequence[tuple[Any, Any]] = (),
    episodes: Sequence[tuple[Any, Any]] | None = None,
    source: str = "the input",
    notes: Sequence[str] = (),
    max_latent_windows: int = 2000,
    batch_readings: int = 1024,
    progress: bool = False,
) -> Report:
    """Replay an entity's readings through a fresh Detector and collect what a report shows.

    Every reading of the entity up to ``end`` (plus the grace period, which windows wait for)
    is fed in time order, so windows, thresholds and episodes at ``start`` are those of a run
    from the first reading; only windows ending in ``[start, end]`` are kept.

    Parameters:
        model: the model to score with (its window length and channels set the windows').
        readings: readings in any order; those of other entities are ignored.
        entity: the entity to report; None takes the only one there is.
        config: the Detector's configuration (``load_serving`` gives the daemon's).
        start, end: aware datetimes bounding the range (inclusive); None for open.
        labels: labelled anomaly windows, ``(start, end)`` pairs of anything
            ``pd.Timestamp`` reads (naive times are UTC).
        episodes: ``(start, end)`` pairs of the episodes to show (e.g. as published); None
            uses the episodes the Detector opens in this replay.
        source: names the input in messages and on the page.
        notes: extra sentences for the page.
        max_latent_windows: at most this many evenly spaced windows are encoded for the latent
            projection (>= 2).
        batch_readings: readings per ``Detector.process`` call (speed only).
        progress: a progress bar on stderr.

    Raises:
        ConfigError: the entity is unknown (the message lists the known ones), none was given
            for several, the range is empty or no full window ends in it.
    """
    if max_latent_windows < 2:
        raise ConfigError(f"report --latent-windows must be >= 2, got {max_latent_windows}")
    if start is not None and end is not None and start > end:
        raise ConfigError(f"the range starts ({start}) after it ends ({end})")
    readings = list(readings)
    entity = _choose_entity([r.entity for r in readings], entity, source)
    own = sorted((r for r in readings if r.entity == entity), key=lambda r: r.timestamp)

    detector = Detector(model, config)
    grace = timedelta(seconds=detector.config.window.grace_s)
    if end is not None:
        own = [r for r in own if r.timestamp <= end + grace]
    decisions: list[WindowDecision] = []
    events: list[AnomalyEvent] = []
    bar = tqdm(total=len(own), desc=f"report {entity}", unit="reading", disable=not progress)
    with bar:
        for first in range(0, len(own), batch_readings):
            batch = own[first : first + batch_readings]
            out = detector.process(batch)
            decisions.extend(d for d in out.decisions if _within(d.window.end, start, end))
            events.extend(out.events)
            bar.update(len(batch))
    shown = [r for r in own if _within(r.timestamp, start, end)]
    if not decisions:
        raise ConfigError(
            f"no full window of {entity!r} ends in the range {_span_text(start, end)} of "
            f"{source} ({len(shown)} readings there; a window needs {model.window} steps)"
        )

    channels = tuple(model.channels)
    times = _datetime64([r.timestamp for r in shown])
    values = np.full((len(shown), len(channels)), np.nan)  # (readings, channels)
    for i, reading in enumerate(shown):
        for j, channel in enumerate(channels):
            values[i, j] = reading.values.get(channel, np.nan)

    window_ends = _datetime64([d.window.end for d in decisions])
    scores = np.array([d.score for d in decisions], dtype=float)
    thresholds = np.array(
        [np.nan if d.threshold is None else d.threshold for d in decisions], dtype=float
    )
    channel_errors = np.stack([np.asarray(d.channel_errors, dtype=float) for d in decisions])
    # The Detector's attribution by reconstruction where it made one (anomalous windows), else
    # the raw per-channel error: the channel an event would name.
    top_channel = np.array([_top_channel(d) for d in decisions], dtype=int)
    reconstruction_times, reconstruction = _mean_reconstruction(model, decisions)
    keep = np.ones(len(reconstruction_times), dtype=bool)
    if start is not None:
        keep &= reconstruction_times >= _naive(start)
    if end is not None:
        keep &= reconstruction_times <= _naive(end)
    reconstruction_times, reconstruction = reconstruction_times[keep], reconstruction[keep]

    until = end or decisions[-1].window.end
    if episodes is None:
        spans, ongoing = _episodes_from(events, until=until)
    else:
        spans = [(_utc(a).to_pydatetime(), _utc(b).to_pydatetime()) for a, b in episodes]
        # Readers of the events topic extend an episode without a CLOSED event to `until`.
        ongoing = {s for s in spans if s[1] >= until}
    spans = sorted(s for s in spans if _overlaps(s, start, end))
    label_spans = tuple(
        sorted(
            s
            for s in ((_utc(a).to_pydatetime(), _utc(b).to_pydatetime()) for a, b in labels)
            if _overlaps(s, start, end)
        )
    )
    in_episode = np.zeros(len(decisions), dtype=bool)
    for a, b in spans:
        in_episode |= (window_ends >= _naive(a)) & (window_ends <= _naive(b))
    summaries = tuple(
        _summarise(
            span,
            span in ongoing,
            window_ends,
            scores,
            thresholds,
            top_channel,
            channels,
            label_spans,
        )
        for span in spans
    )

    chosen = _even_indexes(len(decisions), max_latent_windows)
    codes = np.concatenate(
        [
            model.encode(_stack([decisions[k] for k in chosen[i : i + _CHUNK]]))
            for i in range(0, len(chosen), _CHUNK)
        ]
    )
    latent, explained = project_2d(codes)

    return Report(
        entity=entity,
        channels=channels,
        model_kind=model.kind,
        model_version=model.version or "(unsaved)",
        source=source,
        start=start,
        end=end,
        times=times,
        values=values,
        window_ends=window_ends,
        reconstruction_times=reconstruction_times,
        reconstruction=reconstruction,
        scores=scores,
        thresholds=thresholds,
        channel_errors=channel_errors,
        in_episode=in_episode,
        episodes=summaries,
        labels=label_spans,
        latent=latent,
        latent_windows=chosen,
        latent_explained=explained,
        notes=tuple(notes),
    )


def project_2d(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA of latent codes (n, latent) onto their two main axes, by NumPy's SVD.

    Returns (points (n, 2), explained (2,)): the centred codes' coordinates on the first two
    principal axes (zeros for an axis the codes do not have: one-dimensional codes, or fewer
    than two points) and the share of the variance each explains. Each axis is signed so that its
    largest loading is positive, which makes the picture the same from run to run.

    >>> points, explained = project_2d(np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.1]]))
    >>> points.shape, bool(explained[0] > 0.99)
    ((3, 2), True)
    """
    x = np.asarray(codes, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"expected codes of shape (n, latent), got {x.shape}")
    points = np.zeros((len(x), 2))
    explained = np.zeros(2)
    if len(x) < 2:
        return points, explained
    centred = x - x.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)  # axes: (k, latent)
    k = min(2, len(singular))
    axes = axes[:k]
    signs = np.sign(axes[np.arange(k), np.argmax(np.abs(axes), axis=1)])
    signs[signs == 0] = 1.0
    points[:, :k] = centred @ (axes * signs[:, None]).T
    variance = singular**2
    if variance.sum() > 0:
        explained[:k] = variance[:k] / variance.sum()
    return points, explained


def parse_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    """``--start``/``--end`` ISO-8601 text as aware UTC datetimes (naive = UTC; a date alone
    is its midnight). Raises ConfigError naming the option for bad text or an empty range."""
    parsed = []
    for name, text in (("--start", start), ("--end", end)):
        if text is None:
            parsed.append(None)
            continue
        try:
            stamp = pd.Timestamp(text.strip())
        except ValueError as exc:
            raise ConfigError(f"report {name}={text!r} is not an ISO-8601 time") from exc
        if pd.isna(stamp):
            raise ConfigError(f"report {name}={text!r} is not an ISO-8601 time")
        parsed.append(_utc(stamp).to_pydatetime())
    first, last = parsed
    if first is not None and last is not None and first >= last:
        raise ConfigError(f"report --start={start!r} is not before --end={end!r}")
    return first, last


def _choose_entity(seen: Iterable[str], entity: str | None, source: str) -> str:
    entities = list(dict.fromkeys(seen))
    if not entities:
        raise ConfigError(f"{source} holds no readings")
    if entity is None:
        if len(entities) > 1:
            raise ConfigError(
                f"{source} holds {len(entities)} entities ({_listing(entities)}); choose one "
                "with --entity"
            )
        return entities[0]
    if entity not in entities:
        raise ConfigError(
            f"entity {entity!r} has no readings in {source}; its entities are {_listing(entities)}"
        )
    return entity


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _episodes_from(
    events: Sequence[AnomalyEvent], *, until: datetime
) -> tuple[list[Interval], set[Interval]]:
    """(start, end) of the episodes the events describe, and those still open (which end at
    ``until``); see :func:`monitor.episodes.episode_spans`."""
    spans = episode_spans(events, until=until)
    return [(s.start, s.end) for s in spans], {(s.start, s.end) for s in spans if not s.closed}


def _summarise(
    span: Interval,
    ongoing: bool,
    window_ends: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray,
    top_channel: np.ndarray,
    channels: tuple[str, ...],
    labels: Sequence[Interval],
) -> EpisodeSummary:
    a, b = _datetime64(list(span))
    inside = np.flatnonzero((window_ends >= a) & (window_ends <= b))
    labelled = any(_overlaps(label, *span) for label in labels)
    if not len(inside):
        return EpisodeSummary(*span, math.nan, math.nan, None, None, 0, labelled, ongoing)
    peak = int(inside[np.argmax(scores[inside])])
    threshold = thresholds[peak]
    ratio = scores[peak] / threshold if np.isfinite(threshold) and threshold > 0 else math.nan
    return EpisodeSummary(
        start=span[0],
        end=span[1],
        peak_score=float(scores[peak]),
        peak_ratio=float(ratio),
        peak_time=_utc(pd.Timestamp(window_ends[peak])).to_pydatetime(),
        top_channel=channels[int(top_channel[peak])],
        windows=len(inside),
        labelled=labelled,
        ongoing=ongoing,
    )


def _mean_reconstruction(
    model: Autoencoder, decisions: Sequence[WindowDecision]
) -> tuple[np.ndarray, np.ndarray]:
    """(steps,) grid times and (steps, channels) reconstructions averaged over the windows
    that contain each step."""
    length = model.window
    back = np.arange(length - 1, -1, -1)  # steps from each step to its window's end
    times, values = [], []
    for first in range(0, len(decisions), _CHUNK):
        part = decisions[first : first + _CHUNK]
        ends = _datetime64([d.window.end for d in part]).astype(np.int64)
        starts = _datetime64([d.window.start for d in part]).astype(np.int64)
        interval = (ends - starts) // max(length - 1, 1)  # (n,) the entity's grid step, ns
        times.append((ends[:, None] - interval[:, None] * back[None, :]).ravel())  # (n * time,)
        values.append(model.reconstruct(_stack(part)).reshape(-1, len(model.channels)))
    flat_times, flat_values = np.concatenate(times), np.concatenate(values)
    steps, slot = np.unique(flat_times, return_inverse=True)
    counts = np.bincount(slot, minlength=len(steps))
    means = np.column_stack(
        [
            np.bincount(slot, weights=flat_values[:, c], minlength=len(steps)) / counts
            for c in range(flat_values.shape[1])
        ]
    )  # (steps, channels)
    return steps.astype("datetime64[ns]"), means


def _top_channel(decision: WindowDecision) -> int:
    shares = getattr(decision, "contributions", None)
    errors = decision.channel_errors if shares is None else shares
    return int(np.argmax(np.asarray(errors, dtype=float)))


def _even_indexes(n: int, limit: int) -> np.ndarray:
    """At most ``limit`` increasing indexes spread evenly over ``range(n)``, first and last
    included."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def _stack(decisions: Sequence[WindowDecision]) -> np.ndarray:
    # Raw float64, as the Detector scores them (the model normalises in float64).
    return np.stack([d.window.values for d in decisions])  # (n, time, ch)


def _within(moment: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or moment >= start) and (end is None or moment <= end)


def _overlaps(span: Interval, start: datetime | None, end: datetime | None) -> bool:
    return (end is None or span[0] <= end) and (start is None or span[1] >= start)


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _datetime64(moments: Sequence[datetime]) -> np.ndarray:
    index = pd.DatetimeIndex([_utc(m) for m in moments], dtype="datetime64[ns, UTC]")
    return index.tz_localize(None).to_numpy()


def _span_text(start: datetime | None, end: datetime | None) -> str:
    return f"[{_show(start) if start else 'the beginning'} .. {_show(end) if end else 'the end'}]"


def _show(moment: Any) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S")


# -- sources: a CSV, or the topics ----------------------------------------------------------------


def _read_labels(
    labels_file: Path, entity: str, csv: Path | None
) -> tuple[list[Interval], str | None]:
    """The entity's labelled windows (as datetimes) and their key (:func:`windows_for`)."""
    windows, key = windows_for(labels_file, entity=entity, stream=csv)
    return [(a.to_pydatetime(), b.to_pydatetime()) for a, b in windows], key


def _labels_note(labels_file: Path | None, key: str | None, entity: str) -> str:
    if labels_file is None:
        return "No labels file was found; no labelled windows are shown."
    if key is None:
        return f"{labels_file} has no entry for {entity}; no labelled windows are shown."
    return f"Labelled windows: {labels_file}, key {key}."


def report_from_csv(
    path: str | Path,
    model: Autoencoder,
    config: DetectorConfig | None = None,
    *,
    entity: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    labels: str | Path | None = None,
    ignore_columns: Sequence[str] = (),
    max_latent_windows: int = 2000,
    progress: bool = False,
) -> Report:
    """A report of one entity of a CSV stream (see :mod:`monitor.streams` for the layouts).

    The entity's rows are replayed through a Detector with ``model`` and ``config`` as the
    daemon would consume them from the start of a topic (see :func:`build_report`); the
    episodes are the ones this replay opens. ``labels`` is a NAB-style windows file; by
    default :func:`monitor.labels.find_labels_file` looks for one beside the CSV.

    Raises:
        ConfigError: the file is not a stream we accept, the entity is unknown, or the
            labels file is unreadable.
    """
    from monitor.streams import ENTITY, TIMESTAMP, Stream, load_stream

    path = Path(path)
    stream = load_stream(path, ignore_columns=ignore_columns)
    source = str(path)
    entity = _choose_entity(stream.entities, entity, source)
    missing = [c for c in model.channels if c not in stream.channels]
    if missing:
        raise ConfigError(
            f"{path}: the model's channels {list(model.channels)} are not all there "
            f"(missing {missing}; the file has {list(stream.channels)})"
        )
    extra = [c for c in stream.channels if c not in model.channels]
    frame = stream.frame[stream.frame[ENTITY] == entity].reset_index(drop=True)
    own = Stream(frame[[TIMESTAMP, ENTITY, *model.channels]], model.channels, path)
    labels_file = Path(labels) if labels is not None else find_labels_file(path)
    if labels is not None and not Path(labels).is_file():
        raise ConfigError(f"labels file {str(labels)!r} does not exist")
    spans, key = _read_labels(labels_file, entity, path) if labels_file else ([], None)
    notes = [
        f"Scores, thresholds and episodes: {path.name} replayed through a fresh Detector "
        "(thresholds warm-started from the model's validation scores), as the daemon would "
        "consume it from the start.",
        _labels_note(labels_file, key, entity),
    ]
    if extra:
        notes.append(f"Columns the model does not read, left out: {', '.join(extra)}.")
    return build_report(
        model,
        own.readings(),
        entity=entity,
        config=config,
        start=start,
        end=end,
        labels=spans,
        source=source,
        notes=notes,
        max_latent_windows=max_latent_windows,
        progress=progress,
    )


def report_from_topics(
    settings: Any,
    model: Autoencoder,
    config: DetectorConfig | None = None,
    *,
    entity: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    labels: str | Path | None = None,
    max_records: int = 2_000_000,
    max_latent_windows: int = 2000,
    progress: bool = False,
) -> Report:
    """A report of one entity from the readings and events topics of ``settings``.

    Readings with event times in the range are read back from ``kafka.readings_topic``
    (without the ones the daemon dead-lettered; at most ``max_records`` records, the newest)
    and re-scored with ``model``: scores and reconstructions are the model's, but the
    thresholds start afresh from its validation scores at the first reading read back, so they
    may differ from the live daemon's. The episodes shown are the ones published on
    ``kafka.events_topic``. ``labels`` is an optional NAB-style windows file.

    Raises:
        BrokerError: the broker cannot be read.
        ConfigError: the entity is unknown or nothing is in the range.
    """
    from monitor.kafka.history import recent_episodes, recent_readings

    k = settings.kafka
    since = start or _EPOCH
    got = recent_readings(settings, since, until=end, max_records=max_records)
    source = f"topic {k.readings_topic}"
    entity = _choose_entity([r.entity for r in got.readings], entity, source)
    own = [r for r in got.readings if r.entity == entity]
    until = end or max(r.timestamp for r in own)
    published = [
        (e.start, e.end)
        for e in recent_episodes(settings, since, until=until, max_records=max_records)
        if e.entity == entity
    ]
    labels_file = Path(labels) if labels is not None else None
    if labels_file is not None and not labels_file.is_file():
        raise ConfigError(f"labels file {str(labels)!r} does not exist")
    spans, key = _read_labels(labels_file, entity, None) if labels_file else ([], None)
    counts = got.counts()
    notes = [
        f"Readings: {len(own)} of {entity} read back from {k.readings_topic} "
        f"({counts['records']} records in the span, {counts['dead_lettered']} dead-lettered "
        f"and {counts['undecodable']} undecodable left out).",
        f"Episodes: as published on {k.events_topic}. Scores and reconstructions: re-computed "
        "with this model; thresholds start afresh from its validation scores at the first "
        "reading read back, so they may differ from the live daemon's.",
        _labels_note(labels_file, key, entity) if labels_file else "No labels file was given.",
    ]
    return build_report(
        model,
        own,
        entity=entity,
        config=config,
        start=start,
        end=end,
        labels=spans,
        episodes=published,
        source=source,
        notes=notes,
        max_latent_windows=max_latent_windows,
        progress=progress,
    )


# -- rendering ------------------------------------------------------------------------------------


def render_png(report: Report, path: str | Path) -> Path:
    """Draw the report into a PNG file (matplotlib's Agg canvas; no display needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(report))
    return path


def render_html(report: Report, path: str | Path, *, png: bytes | None = None) -> Path:
    """Write the report as one self-contained HTML page.

    The page holds the figure (``png``, drawn if not given) as a ``data:`` URI, a summary
    (entity, source, range, model kind and version, counts), notes on how the figures were
    obtained, a table of the episodes (start, end, duration, peak score, peak / threshold, top
    channel, labelled) and one of the labelled windows (detected or not). It loads nothing:
    no link, stylesheet, font or script from elsewhere.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = base64.b64encode(png if png is not None else _png_bytes(report)).decode("ascii")
    path.write_text(_html(report, image), encoding="utf-8")
    return path


def write_report(report: Report, prefix: str | Path) -> tuple[Path, Path]:
    """Write ``PREFIX.png`` and ``PREFIX.html`` (the figure drawn once); returns both paths."""
    prefix = Path(prefix)
    png = _png_bytes(report)
    png_path = prefix.with_name(prefix.name + ".png")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(png)
    return png_path, render_html(report, prefix.with_name(prefix.name + ".html"), png=png)


def _png_bytes(report: Report) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: the bytes then hold no URL and do not change with the version.
    _figure(report).savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _figure(report: Report) -> Any:
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(report.channels)
    heights = [1.7] * n + [2.4, 3.8]
    figure = Figure(figsize=(13, sum(heights) + 0.9), dpi=100, layout="constrained")
    grid = figure.add_gridspec(n + 2, 2, height_ratios=heights, width_ratios=[1.25, 1])
    title = f"{report.entity}: {report.source}, model {report.model_kind} {report.model_version}"
    figure.suptitle(title, fontsize=11)

    timeline = []
    for j, channel in enumerate(report.channels):
        ax = figure.add_subplot(grid[j, :], sharex=timeline[0] if timeline else None)
        ax.plot(report.times, report.values[:, j], color="tab:blue", lw=0.8)
        ax.plot(
            report.reconstruction_times, report.reconstruction[:, j], color="tab:orange", lw=0.8
        )
        ax.set_ylabel(channel)
        timeline.append(ax)
    ax = figure.add_subplot(grid[n, :], sharex=timeline[0])
    ax.plot(report.window_ends, report.scores, color="black", lw=0.7, label="score")
    ax.plot(report.window_ends, report.thresholds, color="tab:red", lw=1.0, ls="--")
    above = report.scores > report.thresholds  # NaN threshold (warming up) compares False
    ax.scatter(report.window_ends[above], report.scores[above], s=5, color="tab:red", zorder=3)
    if _wants_log(report.scores):
        ax.set_yscale("log")
    ax.set_ylabel("score")
    timeline.append(ax)

    for ax in timeline:
        for a, b in report.labels:
            ax.axvspan(_naive(a), _naive(b), color=_LABEL_COLOUR, alpha=0.22, lw=0)
        for episode in report.episodes:
            ax.axvspan(
                _naive(episode.start), _naive(episode.end), color=_EPISODE_COLOUR, alpha=0.13, lw=0
            )
        ax.grid(True, alpha=0.25)
        ax.margins(x=0)
        if ax is not timeline[-1]:
            ax.tick_params(labelbottom=False)
    locator = mdates.AutoDateLocator()
    timeline[-1].xaxis.set_major_locator(locator)
    timeline[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    left = min(report.times[0], report.window_ends[0]) if len(report.times) else None
    right = max(report.times[-1], report.window_ends[-1]) if len(report.times) else None
    timeline[0].set_xlim(left, right)

    shading = [
        Patch(color=_EPISODE_COLOUR, alpha=0.3, label="episode"),
        Patch(color=_LABEL_COLOUR, alpha=0.4, label="labelled window"),
    ]
    timeline[0].legend(
        handles=[
            timeline[0].lines[0],
            timeline[0].lines[1],
            *shading,
        ],
        labels=["reading", "reconstruction (mean over the windows)", "episode", "label"],
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncols=4,
        fontsize=8,
        frameon=False,
    )
    ax = timeline[-1]
    ax.legend(
        handles=[ax.lines[0], ax.lines[1], *shading],
        labels=["window score", "threshold", "episode", "label"],
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncols=4,
        fontsize=8,
        frameon=False,
    )

    ax = figure.add_subplot(grid[n + 1, 0])
    points, flags = report.latent, report.latent_anomalous
    ax.scatter(*points[~flags].T, s=7, color="tab:blue", alpha=0.45, lw=0, label="normal")
    ax.scatter(*points[flags].T, s=10, color="tab:red", alpha=0.8, lw=0, label="in an episode")
    ax.set_xlabel(f"PC 1 ({report.latent_explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({report.latent_explained[1]:.0%})")
    ax.set_title(f"latent codes of {len(points)} windows (PCA)", fontsize=10)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.grid(True, alpha=0.25)

    ax = figure.add_subplot(grid[n + 1, 1])
    ax.axis("off")
    ax.text(0.0, 1.0, _summary_text(report), va="top", ha="left", family="monospace", fontsize=8.5)
    return figure


def _wants_log(scores: np.ndarray) -> bool:
    """A log axis when the scores span more than two decades (spikes dwarf normal errors)."""
    positive = scores[np.isfinite(scores) & (scores > 0)]
    if len(positive) < 2 or len(positive) < len(scores):
        return False
    return bool(positive.max() / np.quantile(positive, 0.5) > 100)


def _summary_text(report: Report) -> str:
    first, last = (
        (_show(report.times[0]), _show(report.times[-1])) if len(report.times) else ("-", "-")
    )
    lines = [
        f"entity     {report.entity}",
        f"from       {first}",
        f"to         {last}",
        f"readings   {len(report.times)}",
        f"windows    {report.windows} scored, {int(report.in_episode.sum())} in episodes",
        f"episodes   {len(report.episodes)}",
        f"labels     {len(report.labels)}",
        "",
    ]
    if report.episodes:
        lines.append("episode start        hours    peak  top channel")
        for e in report.episodes[:12]:
            hours = (e.end - e.start).total_seconds() / 3600
            lines.append(
                f"{_show(e.start)[:16]}  {hours:6.1f}  {_number(e.peak_score):>6}  "
                f"{e.top_channel or '-'}"
            )
        if len(report.episodes) > 12:
            lines.append(f"... and {len(report.episodes) - 12} more (see the HTML page)")
    return "\n".join(lines)


def _range_text(report: Report) -> str:
    """The readings' first and last time, and the range asked for if one was."""
    shown = f"{_show(report.times[0])} .. {_show(report.times[-1])}" if len(report.times) else "-"
    if report.start is None and report.end is None:
        return shown
    return f"{shown} (asked: {_span_text(report.start, report.end)})"


def _detected(label: Interval, episodes: Sequence[EpisodeSummary]) -> bool:
    return any(_overlaps(label, ep.start, ep.end) for ep in episodes)


def _naive(moment: datetime) -> np.datetime64:
    return _datetime64([moment])[0]


def _number(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3g}"


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto;
       max-width: 1320px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.8rem; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary th { width: 11rem; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; margin-top: 1rem; }
.notes { color: #555; font-size: 0.9rem; }
.episode-swatch { background: rgba(214, 39, 40, 0.3); padding: 0 0.4rem; }
.label-swatch { background: rgba(230, 161, 0, 0.4); padding: 0 0.4rem; }
"""


def _html(report: Report, image_base64: str) -> str:
    e = html.escape
    summary = [
        ("entity", report.entity),
        ("source", report.source),
        ("range (UTC)", _range_text(report)),
        ("model", f"{report.model_kind} {report.model_version}"),
        ("channels", ", ".join(report.channels)),
        ("readings", str(len(report.times))),
        ("windows scored", f"{report.windows} ({int(report.in_episode.sum())} in episodes)"),
        ("episodes", str(len(report.episodes))),
        ("labelled windows", str(len(report.labels))),
    ]
    rows = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary)
    notes = "\n".join(f"<li>{e(note)}</li>" for note in report.notes)
    if report.episodes:
        episode_rows = "\n".join(
            '<tr class="episode">'
            f'<td class="num">{i}</td><td>{_show(ep.start)}</td>'
            f"<td>{_show(ep.end)}{' (ongoing)' if ep.ongoing else ''}</td>"
            f'<td class="num">{(ep.end - ep.start).total_seconds() / 3600:.1f} h</td>'
            f'<td class="num">{_number(ep.peak_score)}</td>'
            f'<td class="num">{_number(ep.peak_ratio)}</td>'
            f"<td>{e(ep.top_channel or '-')}</td>"
            f'<td class="num">{ep.windows}</td>'
            f"<td>{'yes' if ep.labelled else 'no'}</td></tr>"
            for i, ep in enumerate(report.episodes, 1)
        )
        episodes = (
            "<table><tr><th>#</th><th>start (UTC)</th><th>end (UTC)</th><th>duration</th>"
            "<th>peak score</th><th>peak / threshold</th><th>top channel</th><th>windows</th>"
            f"<th>labelled</th></tr>\n{episode_rows}\n</table>"
        )
    else:
        episodes = "<p>No anomaly episode in this range.</p>"
    if report.labels:
        label_rows = "\n".join(
            f'<tr class="label"><td>{_show(a)}</td><td>{_show(b)}</td>'
            f"<td>{'yes' if _detected((a, b), report.episodes) else 'no'}</td></tr>"
            for a, b in report.labels
        )
        labels = (
            "<table><tr><th>start (UTC)</th><th>end (UTC)</th><th>overlapped by an episode</th>"
            f"</tr>\n{label_rows}\n</table>"
        )
    else:
        labels = "<p>No labelled window in this range.</p>"
    title = f"Anomaly report: {report.entity}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{e(title)}</h1>
<table class="summary">
{rows}
</table>
<ul class="notes">
{notes}
</ul>
<p class="notes">Panels: each channel's readings (blue) and the model's reconstruction (orange,
each step averaged over the windows that contain it); the window scores against the adaptive
threshold (dashed, red dots above it); <span class="episode-swatch">episodes</span> and
<span class="label-swatch">labelled windows</span> shaded; the latent codes of the windows
projected on their two principal axes, red for windows inside an episode.</p>
<img alt="{e(title)}" src="data:image/png;base64,{image_base64}">
<h2>Episodes</h2>
{episodes}
<h2>Labelled windows</h2>
{labels}
</body>
</html>
"""
