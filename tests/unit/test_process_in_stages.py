"""process_in_stages: a batch in stages, each scored on a scoring thread while the next is taken.

The daemon hands a big poll over in stages, decoding each as it is taken, and scores each
stage's windows on a thread of its own (monitor.daemon). Whatever the stages and the thread, the
detectors must decide exactly what :func:`process_together` decides on the whole batch: the same
windows, scores, events and refusals (with indices into each key's whole batch).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

import models
from monitor import windowing
from monitor.pipeline import (
    Detector,
    DetectorConfig,
    DetectorOutput,
    process_in_stages,
    process_together,
)
from monitor.records import Reading

CHANNELS = ("a", "b", "c")
WINDOW = 16
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = DetectorConfig.from_dicts(threshold={"spot_q": 1e-3}, max_batch_windows=64)
# Which detector (a Kafka partition, say) each entity's readings go to.
PARTITIONS = {"m1": "p0", "m2": "p0", "m3": "p1"}


def _series(steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None]
    return np.sin(2 * np.pi * t / (30 + 7 * np.arange(3))) + 0.05 * rng.normal(size=(steps, 3))


@pytest.fixture(scope="module")
def model() -> models.TorchAutoencoder:
    torch.set_num_threads(1)
    model = models.build("lstm", channels=CHANNELS, window=WINDOW, latent_size=4, epochs=3)
    model.fit(pd.DataFrame(_series(500, 0), columns=list(CHANNELS)), seed=0)
    return model


def _batches() -> list[dict[str, list[Reading]]]:
    """Batches of each partition's readings: three entities with a spike each, and readings
    the windows refuse (a wrong channel, a late one, a duplicate) in later parts of batches."""
    per_entity = {}
    for n, entity in enumerate(PARTITIONS):
        values = _series(700, n + 1)
        values[400 + 50 * n : 420 + 50 * n, n] += 8.0  # an anomaly on channel n
        per_entity[entity] = [
            Reading(
                entity, T0 + timedelta(minutes=i), dict(zip(CHANNELS, map(float, row), strict=True))
            )
            for i, row in enumerate(values)
        ]
    batches = []
    for start in range(0, 700, 350):
        batch: dict[str, list[Reading]] = {"p0": [], "p1": []}
        for i in range(start, start + 350):
            for entity, readings in per_entity.items():
                batch[PARTITIONS[entity]].append(readings[i])
            if i % 97 == 60:
                late = per_entity["m2"][i - 40]
                batch["p0"].append(replace(late, values={c: 5.0 for c in CHANNELS}))
                batch["p1"].append(per_entity["m3"][i])  # a duplicate
                batch["p0"].append(replace(per_entity["m1"][i], values={"z": 1.0}))
        batches.append(batch)
    return batches


def _stages(batch: dict[str, list[Reading]], size: int) -> Iterator[tuple[str, list[Reading]]]:
    """The partitions' readings in stages of ``size``, the partitions taking turns."""
    starts = dict.fromkeys(batch, 0)
    while any(starts[key] < len(batch[key]) for key in batch):
        for key, readings in batch.items():
            if starts[key] < len(readings):
                yield key, readings[starts[key] : starts[key] + size]
                starts[key] += size


def _decided(outputs: Sequence[dict]) -> list:
    """Everything the outputs say, scores to 1e-9 (a batch of other windows may round else)."""
    said = []
    for batch in outputs:
        for key, out in sorted(batch.items()):
            said.append((key, "accepted", out.accepted, "rejected", out.rejected))
            said.extend(
                (key, d.window.entity, d.window.end, round(d.score, 9), d.anomalous, d.off_rhythm)
                for d in out.decisions
            )
            said.extend(
                (key, e.kind, e.entity, e.window_end, e.episode_start, round(e.peak_score, 9))
                for e in out.events
            )
    return said


@pytest.mark.parametrize("size", [50, 137, 400])
def test_stages_scored_on_a_thread_decide_what_the_whole_batch_does(model, size: int) -> None:
    whole = {key: Detector(model, CONFIG) for key in ("p0", "p1")}
    staged = {key: Detector(model, CONFIG) for key in ("p0", "p1")}
    expected, got = [], []
    with ThreadPoolExecutor(max_workers=1) as scorer:
        for batch in _batches():
            expected.append(process_together(whole, batch))
            got.append(process_in_stages(staged, _stages(batch, size), scorer=scorer))
    decided = _decided(expected)
    assert _decided(got) == decided
    # The comparison is not empty: windows, events and every kind of refusal are in it.
    assert sum(len(out.decisions) for b in expected for out in b.values()) > 1500
    assert sum(len(out.events) for b in expected for out in b.values()) >= 3
    reasons = {reason for b in expected for out in b.values() for _, reason in out.rejected}
    assert reasons == {"late", "duplicate", "wrong_channels"}


def test_the_next_stage_is_taken_while_the_scoring_thread_scores(model, monkeypatch) -> None:
    """Each stage is scored on the scoring thread; stage k + 1 is taken (e.g. decoded) before
    stage k is judged, so the two overlap."""
    log: list[tuple[str, int]] = []
    threads: set[int] = set()  # of the scoring calls (the episodes' attribution calls too)
    score, attribute = model.score_in_background, model.attribute
    attributing = False

    def scoring(windows: np.ndarray):
        if not attributing:
            threads.add(threading.get_ident())
        return score(windows)

    def attributing_on_the_callers_thread(windows: np.ndarray, **kw):
        nonlocal attributing
        attributing = True
        try:
            return attribute(windows, **kw)
        finally:
            attributing = False

    monkeypatch.setattr(model, "score_in_background", scoring)
    monkeypatch.setattr(model, "attribute", attributing_on_the_callers_thread)
    detector = Detector(model, CONFIG)
    judge = detector.judge
    judged = 0

    def judging(windows, scores, out, **kwargs) -> None:
        nonlocal judged
        log.append(("judge", judged))
        judged += 1
        judge(windows, scores, out, **kwargs)

    monkeypatch.setattr(detector, "judge", judging)
    readings = _batches()[0]["p1"]

    def stages() -> Iterator[tuple[str, list[Reading]]]:
        for k, start in enumerate(range(0, len(readings), 100)):
            log.append(("take", k))
            yield "p1", readings[start : start + 100]

    with ThreadPoolExecutor(max_workers=1) as scorer:
        out = process_in_stages({"p1": detector}, stages(), scorer=scorer)["p1"]
    assert out.accepted + len(out.rejected) == len(readings) and judged == 4
    assert threads and threading.get_ident() not in threads
    for k in range(judged - 1):
        assert log.index(("take", k + 1)) < log.index(("judge", k))


def test_without_a_scorer_all_stages_are_scored_in_one_call(model, monkeypatch) -> None:
    calls: list[int] = []
    score = model.score
    monkeypatch.setattr(model, "score", lambda w: calls.append(len(w)) or score(w))
    detectors = {key: Detector(model, replace(CONFIG, max_batch_windows=4096)) for key in "xy"}
    batch = _batches()[0]
    readings = {"x": batch["p0"], "y": batch["p1"]}
    outputs = process_in_stages(detectors, _stages(readings, 100))
    windows = sum(len(out.decisions) for out in outputs.values())
    assert windows > 500 and calls[0] == windows  # the others are the episodes' attribution


def test_detectors_of_different_models_are_refused(model) -> None:
    other = models.build("lstm", channels=CHANNELS, window=WINDOW, latent_size=4, epochs=1)
    other.fit(pd.DataFrame(_series(200, 5), columns=list(CHANNELS)), seed=0)
    detectors = {"p0": Detector(model, CONFIG), "p1": Detector(other, CONFIG)}
    batch = _batches()[0]
    with pytest.raises(ValueError, match="share one model"):
        process_together(detectors, batch)


def test_the_windowers_lane_changes_no_decision(model, monkeypatch) -> None:
    """The detectors with the windower's compiled lane (and the values it stacks, which the
    scoring and the rhythms take) decide what they decide with only the Python windowing."""

    def run(lane: bool) -> tuple[list, list[str], dict[str, Detector]]:
        monkeypatch.setattr(windowing, "_LANE", lane)
        monkeypatch.setattr(windowing, "_STEADY_FAST_PATH", lane)
        detectors = {key: Detector(model, CONFIG) for key in ("p0", "p1")}
        outputs = []
        with ThreadPoolExecutor(max_workers=1) as scorer:
            for batch in _batches():
                outputs.append(process_in_stages(detectors, _stages(batch, 137), scorer=scorer))
        snapshots = [json.dumps(d.snapshot(), sort_keys=True) for d in detectors.values()]
        return outputs, snapshots, detectors

    with_lane, snapshots, detectors = run(True)
    without, expected_snapshots, _ = run(False)
    assert all(d.windower._lane is not None and d.windower._lane.rows for d in detectors.values())
    assert _decided(with_lane) == _decided(without)
    assert [
        (d.score, d.threshold) for b in with_lane for out in b.values() for d in out.decisions
    ] == [(d.score, d.threshold) for b in without for out in b.values() for d in out.decisions]
    assert snapshots == expected_snapshots


def test_judging_with_the_stacked_values_is_judging_without(model) -> None:
    """``judge(values=...)`` (the rhythms take each window's last row from the stacked values)
    leaves every part of the detector as judging the windows alone does."""
    alone, stacked = Detector(model, CONFIG), Detector(model, CONFIG)
    for batch in _batches():
        readings = batch["p0"]
        for detector, give in ((alone, False), (stacked, True)):
            out = DetectorOutput()
            windows = detector.collect(readings, out)
            values = np.stack([w.values for w in windows])
            # A last row unlike the rest, so that taking another row would show.
            assert not np.array_equal(values[:, -1], values[:, -2])
            scores = model.score(values)
            detector.judge(windows, scores, out, values=values if give else None)
            detector.settle(out)
    assert json.dumps(stacked.snapshot(), sort_keys=True) == json.dumps(
        alone.snapshot(), sort_keys=True
    )
