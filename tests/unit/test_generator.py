"""The synthetic machine generator: determinism, anomalies where labelled, correlations, labels."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.errors import ConfigError
from monitor.generator import (
    ANOMALY_KINDS,
    CHANNELS,
    InjectedAnomaly,
    MachineSpec,
    generate_fleet,
    generate_machine,
    write_dataset,
)

NAB_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")
STEPS = 864  # three days of 5-minute readings
SEED = 11


def _pair(anomaly: InjectedAnomaly, steps: int = STEPS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same machine with and without ``anomaly``, indexed by timestamp."""
    base_spec = MachineSpec(entity="m", steps=steps)
    base, _ = generate_machine(base_spec, SEED)
    with_anomaly, _ = generate_machine(replace(base_spec, anomalies=(anomaly,)), SEED)
    return base.set_index("timestamp"), with_anomaly.set_index("timestamp")


def _changed_steps(base: pd.DataFrame, other: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per channel, the step numbers (positions in ``base``) whose values differ."""
    other = other.reindex(base.index)
    return {c: np.flatnonzero(~np.isclose(base[c], other[c], rtol=0, atol=1e-12)) for c in CHANNELS}


def _dominant_period(values: np.ndarray) -> float:
    """Period (steps) of the strongest oscillation, after differencing away the daily trend."""
    diffs = np.diff(values)
    spectrum = np.abs(np.fft.rfft(diffs - diffs.mean()))
    frequencies = np.fft.rfftfreq(len(diffs))
    return float(1 / frequencies[1:][np.argmax(spectrum[1:])])


def test_same_seed_same_data_and_different_seed_different_data() -> None:
    spec = MachineSpec(
        steps=500,
        anomalies=(
            InjectedAnomaly("broken_correlation", "flow", 100, 50, 1.0),
            InjectedAnomaly("dropout", None, 300, 10),
        ),
    )
    first, _ = generate_machine(spec, 3)
    again, _ = generate_machine(spec, 3)
    other, _ = generate_machine(spec, 4)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["current"], other["current"])


def test_frame_layout_is_wide_utc_and_regular() -> None:
    spec = MachineSpec(entity="press-1", steps=288, interval_s=600)
    frame, injected = generate_machine(spec, 0)
    assert list(frame.columns) == ["timestamp", *CHANNELS]
    assert len(frame) == 288
    assert injected == []
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert (frame["timestamp"].diff().dropna() == pd.Timedelta(seconds=600)).all()
    assert frame[list(CHANNELS)].notna().all().all()


def test_daily_seasonality_is_present() -> None:
    frame, _ = generate_machine(MachineSpec(steps=288 * 7), 5)
    hourly = frame.groupby(frame["timestamp"].dt.hour)["current"].mean()
    # the day shift: afternoons clearly busier than nights, beyond the noise
    assert hourly.loc[13:16].mean() - hourly.loc[0:3].mean() > 3 * frame["current"].diff().std()


@pytest.mark.parametrize(
    "anomaly",
    [
        InjectedAnomaly("spike", "pressure", 400, 2, 5.0),
        InjectedAnomaly("level_shift", "current", 400, 60, -2.5),
        InjectedAnomaly("slow_drift", "temperature", 400, 200, 3.0),
        InjectedAnomaly("frequency_change", "vibration", 400, 144, 2.7),
        InjectedAnomaly("stuck_sensor", "flow", 400, 60),
        InjectedAnomaly("broken_correlation", "temperature", 400, 144, 1.0),
    ],
    ids=lambda a: a.kind,
)
def test_anomaly_changes_its_channel_in_its_stretch_and_nothing_else(
    anomaly: InjectedAnomaly,
) -> None:
    base, changed = _pair(anomaly)
    assert len(changed) == len(base)
    differences = _changed_steps(base, changed)
    for channel in CHANNELS:
        if channel != anomaly.channel:
            assert differences[channel].size == 0, channel
    steps = differences[anomaly.channel]
    assert steps.size > 0
    assert steps.min() >= anomaly.start and steps.max() < anomaly.stop
    # nearly every step of the stretch is affected (a phase-continuous frequency change may
    # coincide with the normal signal at its first step)
    assert steps.size >= 0.9 * anomaly.length


def test_spike_level_shift_and_drift_have_the_labelled_shape() -> None:
    spike_base, spike = _pair(InjectedAnomaly("spike", "pressure", 400, 2, 5.0))
    jump = (spike["pressure"] - spike_base["pressure"]).to_numpy()[400:402]
    noise = spike_base["pressure"].diff().std()
    assert np.allclose(jump, jump[0]) and jump[0] > 5 * noise

    shift_base, shift = _pair(InjectedAnomaly("level_shift", "current", 400, 60, -2.5))
    offset = (shift["current"] - shift_base["current"]).to_numpy()[400:460]
    assert np.allclose(offset, offset[0]) and offset[0] < -2 * shift_base["current"].std()

    drift_base, drift = _pair(InjectedAnomaly("slow_drift", "temperature", 400, 200, 3.0))
    ramp = (drift["temperature"] - drift_base["temperature"]).to_numpy()[400:600]
    assert np.all(np.diff(ramp) > 0)
    assert np.allclose(np.diff(ramp), ramp[0])  # linear, starting one step above zero
    assert ramp[-1] > 2 * drift_base["temperature"].std()


def test_stuck_sensor_repeats_the_last_good_reading() -> None:
    _, stuck = _pair(InjectedAnomaly("stuck_sensor", "flow", 400, 60))
    flow = stuck["flow"].to_numpy()
    assert np.all(flow[400:460] == flow[399])
    assert flow[460] != flow[399]


def test_frequency_change_changes_the_operating_cycle_period() -> None:
    base, faster = _pair(InjectedAnomaly("frequency_change", "vibration", 400, 144, 3.0))
    normal_period = _dominant_period(base["vibration"].to_numpy()[400:544])
    fast_period = _dominant_period(faster["vibration"].to_numpy()[400:544])
    assert normal_period == pytest.approx(12, rel=0.15)  # cycle_s 3600 at 300 s steps
    assert fast_period == pytest.approx(4, rel=0.15)


@pytest.mark.parametrize(("channel", "partner"), [("temperature", "current"), ("flow", "pressure")])
def test_correlation_holds_normally_and_breaks_where_injected(channel: str, partner: str) -> None:
    anomaly = InjectedAnomaly("broken_correlation", channel, 400, 288, 1.0)
    base, broken = _pair(anomaly)
    stretch = slice(400, 688)
    assert base[channel].corr(base[partner]) > 0.8
    normal_in_stretch = base[channel].iloc[stretch].corr(base[partner].iloc[stretch])
    broken_in_stretch = broken[channel].iloc[stretch].corr(broken[partner].iloc[stretch])
    assert normal_in_stretch > 0.8
    assert abs(broken_in_stretch) < 0.3
    # the channel keeps a plausible level: a decoupling, not a shift
    assert abs(broken[channel].iloc[stretch].mean() - base[channel].iloc[stretch].mean()) < (
        0.5 * base[channel].iloc[stretch].std()
    )


def test_normal_channels_are_correlated_as_the_physics_says() -> None:
    frame, _ = generate_machine(MachineSpec(steps=2016), 21)
    corr = frame[list(CHANNELS)].corr()
    assert corr.loc["current", "temperature"] > 0.8
    assert corr.loc["current", "vibration"] > 0.8
    assert corr.loc["pressure", "flow"] > 0.9


def test_dropout_removes_the_rows_and_keeps_the_others() -> None:
    anomaly = InjectedAnomaly("dropout", None, 400, 30)
    base, dropped = _pair(anomaly)
    assert len(dropped) == len(base) - 30
    missing = base.index.difference(dropped.index)
    assert missing.equals(base.index[400:430])
    pd.testing.assert_frame_equal(base.drop(missing), dropped)


def test_anomalies_do_not_disturb_each_other() -> None:
    first = InjectedAnomaly("broken_correlation", "pressure", 100, 100, 1.0)
    second = InjectedAnomaly("broken_correlation", "flow", 500, 100, 1.0)
    spec = MachineSpec(steps=STEPS, anomalies=(first, second))
    both, _ = generate_machine(spec, SEED)
    only_second, _ = generate_machine(replace(spec, anomalies=(second,)), SEED)
    differences = _changed_steps(both.set_index("timestamp"), only_second.set_index("timestamp"))
    assert differences["flow"].size == 0
    assert differences["pressure"].min() >= 100 and differences["pressure"].max() < 200


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from([k for k in ANOMALY_KINDS if k != "dropout"]),
    channel=st.sampled_from(CHANNELS),
    start=st.integers(0, 280),
    length=st.integers(12, 100),
    magnitude=st.floats(0.2, 1.0),
)
def test_any_anomaly_stays_inside_its_stretch(
    kind: str, channel: str, start: int, length: int, magnitude: float
) -> None:
    anomaly = InjectedAnomaly(kind, channel, start, length, magnitude)
    base, changed = _pair(anomaly, steps=400)
    for channel_steps in _changed_steps(base, changed).values():
        assert channel_steps.size == 0 or (
            channel_steps.min() >= anomaly.start and channel_steps.max() < anomaly.stop
        )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "meltdown", "channel": "current", "start": 0, "length": 1}, "kind"),
        ({"kind": "spike", "channel": "humidity", "start": 0, "length": 1}, "channel"),
        ({"kind": "dropout", "channel": "current", "start": 0, "length": 1}, "channel"),
        ({"kind": "spike", "channel": "current", "start": -1, "length": 1}, "start"),
        ({"kind": "frequency_change", "channel": "current", "start": 0, "length": 5}, "length"),
        (
            {"kind": "broken_correlation", "channel": "flow", "start": 0, "length": 20},
            "magnitude",
        ),
    ],
)
def test_invalid_anomalies_are_refused_with_the_field_named(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        InjectedAnomaly(**kwargs)


def test_spec_refuses_anomalies_past_the_end_and_round_trips() -> None:
    with pytest.raises(ConfigError, match="steps=100"):
        MachineSpec(steps=100, anomalies=(InjectedAnomaly("spike", "flow", 99, 2, 3.0),))
    spec = MachineSpec(
        entity="x", steps=100, anomalies=[InjectedAnomaly("stuck_sensor", "flow", 10, 5)]
    )
    assert isinstance(spec.anomalies, tuple)
    assert MachineSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_fleet_labels_are_valid_nab_windows_covering_each_anomaly() -> None:
    frame, labels = generate_fleet(entities=3, steps=1200, seed=4, anomalies_per_entity=3)
    again, labels_again = generate_fleet(entities=3, steps=1200, seed=4, anomalies_per_entity=3)
    pd.testing.assert_frame_equal(frame, again)
    assert labels == labels_again

    assert list(frame.columns) == ["timestamp", "entity", *CHANNELS]
    assert frame["timestamp"].is_monotonic_increasing
    entities = sorted(frame["entity"].unique())
    assert entities == ["machine-01", "machine-02", "machine-03"]
    windows = labels["windows"]
    assert sorted(windows) == entities
    json.dumps(labels)  # plain data, ready to write
    first = frame["timestamp"].min()
    prefix_end = first + pd.Timedelta(minutes=5) * 600  # normal_prefix 0.5 of 1200 steps
    for entity, entity_windows in windows.items():
        assert len(entity_windows) == 3
        previous_end = None
        for start, end in entity_windows:
            assert NAB_TIME.match(start) and NAB_TIME.match(end)
            assert pd.Timestamp(start, tz="UTC") <= pd.Timestamp(end, tz="UTC")
            assert pd.Timestamp(start, tz="UTC") >= prefix_end, entity
            if previous_end is not None:
                assert pd.Timestamp(start) > pd.Timestamp(previous_end)
            previous_end = end
    kinds = {a["kind"] for a in labels["anomalies"]}
    assert kinds == set(ANOMALY_KINDS)  # 9 anomalies visit every kind
    for anomaly in labels["anomalies"]:
        assert anomaly["window"] in windows[anomaly["entity"]]
        window_start, window_end = (pd.Timestamp(t) for t in anomaly["window"])
        assert window_start <= pd.Timestamp(anomaly["start"]) <= pd.Timestamp(anomaly["end"])
        assert pd.Timestamp(anomaly["end"]) <= window_end


def test_fleet_prefix_is_normal_and_anomalies_sit_in_their_windows() -> None:
    frame, labels = generate_fleet(entities=2, steps=1200, seed=9, anomalies_per_entity=4)
    for entity, machine in labels["machines"].items():
        spec, seed = MachineSpec.from_dict(machine["spec"]), machine["seed"]
        rows = frame[frame["entity"] == entity].drop(columns="entity").reset_index(drop=True)
        regenerated, _ = generate_machine(spec, seed)
        pd.testing.assert_frame_equal(rows, regenerated)
        clean, _ = generate_machine(replace(spec, anomalies=()), seed)
        differences = _changed_steps(clean.set_index("timestamp"), rows.set_index("timestamp"))
        changed = np.unique(np.concatenate(list(differences.values())))
        assert changed.size > 0 and changed.min() >= 600
        covered = np.zeros(spec.steps, dtype=bool)
        for anomaly in spec.anomalies:
            covered[anomaly.start : anomaly.stop] = True
        assert covered[changed].all()
        times = clean["timestamp"]
        for start, end in labels["windows"][entity]:
            inside = (times >= pd.Timestamp(start, tz="UTC")) & (
                times <= pd.Timestamp(end, tz="UTC")
            )
            assert not inside.iloc[:600].any()


def test_fleet_refuses_anomalies_that_do_not_fit() -> None:
    with pytest.raises(ConfigError, match="steps=100"):
        generate_fleet(entities=1, steps=100, seed=0, anomalies_per_entity=5)


def test_write_dataset_writes_csv_and_nab_labels(tmp_path) -> None:
    frame, labels = generate_fleet(entities=2, steps=800, seed=1, anomalies_per_entity=2)
    paths = write_dataset(frame, labels, tmp_path / "out", "fleet")
    assert [p.name for p in paths] == ["fleet.csv", "fleet.labels.json", "fleet.anomalies.json"]
    read = pd.read_csv(paths[0])
    assert list(read.columns) == ["timestamp", "entity", *CHANNELS]
    assert len(read) == len(frame)
    assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", read["timestamp"].iloc[0])
    parsed = pd.to_datetime(read["timestamp"], utc=True)
    assert (parsed == frame["timestamp"]).all()
    assert np.allclose(read["flow"], frame["flow"], atol=1e-4)
    assert json.loads(paths[1].read_text()) == labels["windows"]
    anomalies = json.loads(paths[2].read_text())
    assert anomalies == labels["anomalies"]
    assert {"kind", "entity", "channel", "start", "end"} <= set(anomalies[0])
    with pytest.raises(ConfigError, match="windows"):
        write_dataset(frame, {"anomalies": []}, tmp_path, "bad")
