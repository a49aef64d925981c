"""Property test: the rhythm's compiled batch kernel decides and learns exactly as the
per-entity Python implementation it replaced (``tests/property/rhythm_reference.py``).

Random settings small enough that every branch runs within a short stream (the first period,
slots seen for the first time, a full residual ring, closed history blocks wrapping around, the
warm-up, off-rhythm windows), one to three channels and entities interleaved, ends before and
after 1970, values from tiny to huge. Windows are fed in random batches; at random points the
state is snapshotted and restored, or an entity forgotten. The off flags must be equal and the
snapshots equal bit for bit.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.rhythm import Rhythm, RhythmConfig
from tests.property.rhythm_reference import ReferenceRhythm

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@st.composite
def configs(draw: st.DrawFn) -> RhythmConfig:
    history = draw(st.integers(1, 12))
    return RhythmConfig(
        period_s=draw(st.sampled_from([60.0, 90.0, 86_400.0])),
        slots=draw(st.integers(1, 8)),
        alpha=draw(st.sampled_from([0.2, 1.0, 0.05])),
        average=draw(st.integers(1, 5)),
        history=history,
        history_blocks=draw(st.integers(1, history)),
        risk=draw(st.sampled_from([1e-4, 0.2, 0.45])),
        warm=draw(st.integers(1, 10)),
    )


values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.0, 1e300, -1e300, 5e-324, 3.0]),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[RhythmConfig, int, list[tuple[str, float, list[float]]]]:
    """(config, channels, windows as (entity, end in epoch seconds, latest values))."""
    config = draw(configs())
    channels = draw(st.integers(1, 3))
    entities = [f"e{i}" for i in range(draw(st.integers(1, 3)))]
    clock = {e: draw(st.floats(-1e9, 2e9, allow_nan=False)) for e in entities}
    windows = []
    for _ in range(draw(st.integers(1, 300))):
        entity = draw(st.sampled_from(entities))
        clock[entity] += draw(st.sampled_from([1.0, 7.5, 10.0, 30.0, 61.0, 3_600.0]))
        latest = draw(st.lists(values, min_size=channels, max_size=channels))
        windows.append((entity, clock[entity], latest))
    return config, channels, windows


def reference_off(rhythm: ReferenceRhythm, entity: str, end: float, latest: list[float]) -> bool:
    return rhythm.learn_one(entity, EPOCH + timedelta(seconds=end), latest)


@settings(max_examples=150, deadline=None)
@given(case=streams(), data=st.data())
def test_the_kernel_learns_and_decides_as_the_python_rhythm(case, data) -> None:  # type: ignore[no-untyped-def]
    config, n_channels, windows = case
    channels = [f"c{i}" for i in range(n_channels)]
    reference = ReferenceRhythm(config, channels)
    rhythm = Rhythm(config, channels)
    # The reference gets each end as a datetime; both must see the same epoch seconds.
    windows = [
        (e, (EPOCH + timedelta(seconds=end)).timestamp() if abs(end) < 1e11 else end, latest)
        for e, end, latest in windows
    ]
    at = 0
    while at < len(windows):
        size = data.draw(st.integers(1, 40))
        batch = windows[at : at + size]
        at += size
        expected = [reference_off(reference, e, end, latest) for e, end, latest in batch]
        got = rhythm.learn_many(
            [e for e, _, _ in batch],
            [end for _, end, _ in batch],
            np.array([latest for _, _, latest in batch], dtype=np.float64),
        )
        assert got.tolist() == expected
        step = data.draw(st.sampled_from(["go on", "go on", "restore", "forget"]))
        if step == "restore":
            text = json.dumps(rhythm.snapshot())
            assert json.loads(text) == reference.snapshot()
            rhythm = Rhythm.from_snapshot(config, channels, json.loads(text))
            # Restoring recomputes the running sums exactly: the reference restores too.
            reference = ReferenceRhythm.from_snapshot(config, channels, json.loads(text))
        elif step == "forget":
            gone = data.draw(st.sampled_from(sorted({e for e, _, _ in windows})))
            reference.forget([gone])
            rhythm.forget([gone])
    assert rhythm.snapshot() == reference.snapshot()
    assert len(rhythm) == len(reference)


def test_rows_grow_and_are_reused_as_entities_come_and_go() -> None:
    """More entities than the first allocation, some forgotten and their rows taken by new ones:
    the same decisions and snapshot as the reference."""
    config = RhythmConfig(period_s=600.0, slots=10, average=3, history=20, history_blocks=4, warm=5)
    reference, rhythm = ReferenceRhythm(config, ["v"]), Rhythm(config, ["v"])
    rng = np.random.default_rng(3)
    names = [f"e{i}" for i in range(40)]
    for step in range(200):
        if step == 100:
            gone = names[5:25]
            reference.forget(gone)
            rhythm.forget(gone)
            names = names[:5] + names[25:] + [f"new{i}" for i in range(30)]
        ends = [EPOCH.timestamp() + 60.0 * step] * len(names)
        latest = rng.normal(size=(len(names), 1)) * (5.0 if step % 50 == 49 else 1.0)
        expected = [
            reference_off(reference, e, end, row.tolist())
            for e, end, row in zip(names, ends, latest, strict=True)
        ]
        assert rhythm.learn_many(names, ends, latest).tolist() == expected
    assert len(rhythm) == len(reference) == 50
    assert rhythm.snapshot() == reference.snapshot()
    assert any(expected)
