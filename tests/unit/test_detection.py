"""The whole pure core on a synthetic multi-channel machine: model + Detector, no broker.

A slow drift, a spike, a level shift and a stuck sensor, each on its own channel and at its own
time, must each open an episode while it lasts, and the episode's attribution must name the
channel that was tampered with. Attribution is the model's reconstruction-based contribution,
averaged over a sample of the episode's windows (see monitor.episodes): on 7 generator/model
seeds it named the faulty channel in every case but one stuck sensor (named "vibration").
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import models
from monitor.generator import InjectedAnomaly, MachineSpec, generate_machine
from monitor.pipeline import Detector, DetectorConfig, process_together
from monitor.records import EpisodeEventKind, Reading

STEPS = 4000
TRAIN = 2000
CONFIG = DetectorConfig.from_dicts(threshold={"spot_q": 1e-3})
FAULTS = [
    InjectedAnomaly("slow_drift", "temperature", 2300, 300, 8.0),
    InjectedAnomaly("spike", "vibration", 2750, 3, 12.0),
    InjectedAnomaly("level_shift", "pressure", 3100, 250, 6.0),
    InjectedAnomaly("stuck_sensor", "flow", 3550, 250, 0.0),
]


@pytest.fixture(scope="module")
def machine() -> tuple[pd.DataFrame, models.Autoencoder, list[Reading]]:
    torch.set_num_threads(1)
    spec = MachineSpec(entity="m1", steps=STEPS, anomalies=tuple(FAULTS))
    frame, _ = generate_machine(spec, seed=4)
    channels = [c for c in frame.columns if c != "timestamp"]
    model = models.build("lstm", channels=tuple(channels), window=32, latent_size=16, epochs=25)
    model.fit(frame[channels].iloc[:TRAIN].reset_index(drop=True), seed=0)
    readings = [
        Reading("m1", ts.to_pydatetime(), {c: float(row[c]) for c in channels})
        for ts, (_, row) in zip(frame["timestamp"], frame[channels].iterrows(), strict=True)
    ]
    return frame, model, readings


@pytest.fixture(scope="module")
def run(machine) -> tuple[pd.DataFrame, list]:
    frame, model, readings = machine
    detector = Detector(model, CONFIG)
    events = []
    for start in range(0, len(readings), 500):
        events.extend(detector.process(readings[start : start + 500]).events)
    return frame, events


def _first_opened(run, fault: InjectedAnomaly):
    frame, events = run
    start = frame["timestamp"].iloc[fault.start]
    end = frame["timestamp"].iloc[min(fault.start + fault.length + 32, len(frame) - 1)]
    opened = [
        e
        for e in events
        if e.kind is EpisodeEventKind.OPENED and start <= pd.Timestamp(e.window_end) <= end
    ]
    return opened[0] if opened else None


@pytest.mark.parametrize("fault", FAULTS, ids=[f.kind for f in FAULTS])
def test_each_fault_opens_an_episode_while_it_lasts(run, fault: InjectedAnomaly) -> None:
    assert _first_opened(run, fault) is not None, f"{fault.kind} opened no episode"


@pytest.mark.parametrize("fault", FAULTS, ids=[f.kind for f in FAULTS])
def test_attribution_names_the_faulty_channel(run, fault: InjectedAnomaly) -> None:
    """The episode's last event (its CLOSED one), whose attribution has the most evidence."""
    _, events = run
    opened = _first_opened(run, fault)
    assert opened is not None
    episode = [e for e in events if e.episode_start == opened.episode_start]
    assert episode[-1].kind is EpisodeEventKind.CLOSED, [e.kind for e in episode]
    final = episode[-1].contributions
    top = max(final, key=final.get)
    assert top == fault.channel, f"{fault.kind}: attribution {final}"
    assert sum(final.values()) == pytest.approx(1.0)


def test_no_episode_opens_on_the_normal_part(run) -> None:
    frame, events = run
    first_fault = frame["timestamp"].iloc[FAULTS[0].start]
    early = [
        e
        for e in events
        if e.kind is EpisodeEventKind.OPENED and pd.Timestamp(e.window_end) < first_fault
    ]
    assert len(early) <= 1, early
    assert np.isfinite([e.score for e in events]).all()


def test_detectors_sharing_a_model_attribute_their_episodes_in_one_call(
    run, machine, monkeypatch
) -> None:
    """Three partitions' detectors, the machine's stream in each under another name: every
    batch attributes all the windows its events report in one model call, and the events are
    those of one detector alone (contributions to rounding: the batch differs)."""
    _, alone = run
    _, model, readings = machine
    calls: list[int] = []
    attribute = model.attribute
    monkeypatch.setattr(
        model, "attribute", lambda w, **kw: calls.append(len(w)) or attribute(w, **kw)
    )
    names = ("m1", "m2", "m3")
    detectors = {name: Detector(model, CONFIG) for name in names}
    events: dict[str, list] = {name: [] for name in names}
    batches = 0
    for start in range(0, len(readings), 500):
        part = readings[start : start + 500]
        outputs = process_together(
            detectors, {name: [replace(r, entity=name) for r in part] for name in names}
        )
        batches += 1
        for name in names:
            events[name].extend(outputs[name].events)
    assert 0 < len(calls) <= batches
    # Each call held the windows of all three: an equal number from each.
    assert all(n % 3 == 0 for n in calls)
    for name in names:
        got = events[name]
        assert [(e.kind, e.window_end) for e in got] == [(e.kind, e.window_end) for e in alone]
        for mine, theirs in zip(got, alone, strict=True):
            assert mine.entity == name
            assert mine.contributions == pytest.approx(theirs.contributions, abs=1e-6)


def test_a_snapshot_does_not_change_as_the_detector_goes_on(machine) -> None:
    """Everything in a snapshot is a copy: the daemon encodes it on another thread while the
    detector processes the next batches. Cuts inside episodes (attribution sums, peaks) too."""
    _, model, readings = machine
    detector = Detector(model, CONFIG)
    taken = []
    done = 0
    for cut in (2320, 2760, 3120, 3600):
        detector.process(readings[done:cut])
        done = cut
        snapshot = detector.snapshot()
        taken.append((snapshot, json.dumps(snapshot)))
    detector.process(readings[done:])
    for snapshot, text in taken:
        assert json.dumps(snapshot) == text
