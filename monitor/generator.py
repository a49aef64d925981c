"""Synthetic multi-sensor machines with labelled anomalies, for demos, tests and benchmarks.

A machine has five channels driven by two hidden processes, so the channels are correlated the way
real plant data is:

- a *load* (daily shift pattern, weekly working-week pattern, a short operating cycle and slow
  random wander) drives ``current``; ``temperature`` follows current through a thermal lag on top
  of the ambient temperature, and ``vibration`` rises with current;
- a *pump speed* (its own daily/weekly pattern and cycle) drives ``pressure``, and ``flow`` follows
  the square root of the pressure drop.

Anomalies of named kinds (:data:`ANOMALY_KINDS`) are injected into the measured signals after they
are generated, so an anomaly changes the data inside its stretch and nowhere else, and every random
draw of the normal signal is the same with or without it: a spec generated with and without an
anomaly differs only where that anomaly is labelled.

Everything here is pure (NumPy/pandas) and deterministic for a given seed, except
:func:`write_dataset`, the one function that writes files.

Example:
    >>> spec = MachineSpec(entity="press-7", steps=600, anomalies=(
    ...     InjectedAnomaly("spike", "current", start=400, length=2, magnitude=5.0),))
    >>> frame, injected = generate_machine(spec, seed=1)
    >>> list(frame.columns)
    ['timestamp', 'temperature', 'vibration', 'current', 'pressure', 'flow']
    >>> len(frame), injected[0].kind
    (600, 'spike')
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitor.errors import ConfigError

__all__ = [
    "ANOMALY_KINDS",
    "CHANNELS",
    "NAB_TIMESTAMP_FORMAT",
    "InjectedAnomaly",
    "MachineSpec",
    "generate_fleet",
    "generate_machine",
    "write_dataset",
]

CHANNELS: tuple[str, ...] = ("temperature", "vibration", "current", "pressure", "flow")
"""The channels of a generated machine, in column order (°C, mm/s RMS, A, bar, m³/h)."""

ANOMALY_KINDS: tuple[str, ...] = (
    "spike",
    "level_shift",
    "slow_drift",
    "frequency_change",
    "stuck_sensor",
    "broken_correlation",
    "dropout",
)
"""The anomaly kinds :class:`InjectedAnomaly` accepts."""

NAB_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
"""How NAB writes label timestamps (UTC, no offset): ``2014-04-10 16:15:00.000000``."""

_CSV_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"  # as NAB's data files: UTC, no offset
_DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday, so weeks start on Monday

# Each channel's partner: the channel it should move with. broken_correlation decouples a channel
# from its partner; the roots (current, pressure) pair with the channel they drive.
_PARTNER: dict[str, str] = {
    "temperature": "current",
    "vibration": "current",
    "current": "temperature",
    "pressure": "flow",
    "flow": "pressure",
}
# Measurement noise (one standard deviation, channel units) at noise_scale = 1.
_NOISE_STD: dict[str, float] = {
    "temperature": 0.12,
    "vibration": 0.05,
    "current": 0.15,
    "pressure": 0.03,
    "flow": 0.4,
}
_MIN_LENGTH: dict[str, int] = {"frequency_change": 12, "broken_correlation": 12}
# Lengths (steps) and |magnitude| ranges generate_fleet draws from, per kind.
_FLEET_LENGTH: dict[str, tuple[int, int]] = {
    "spike": (1, 3),
    "level_shift": (36, 144),
    "slow_drift": (144, 360),
    "frequency_change": (72, 216),
    "stuck_sensor": (24, 144),
    "broken_correlation": (144, 288),
    "dropout": (6, 36),
}
_FLEET_MAGNITUDE: dict[str, tuple[float, float]] = {
    "spike": (4.0, 6.0),
    "level_shift": (2.0, 3.0),
    "slow_drift": (2.5, 4.0),
    "frequency_change": (2.5, 4.0),
    "stuck_sensor": (0.0, 0.0),
    "broken_correlation": (1.0, 1.0),
    "dropout": (0.0, 0.0),
}
_FLEET_CHANNELS: dict[str, tuple[str, ...]] = {
    # temperature's thermal lag smooths the operating cycle away, so frequency changes are
    # injected where the cycle is visible
    "frequency_change": ("vibration", "current", "pressure", "flow"),
}


@dataclass(frozen=True)
class InjectedAnomaly:
    """One anomaly to inject: what, on which channel, where (in steps) and how strong.

    Parameters:
        kind: one of :data:`ANOMALY_KINDS`.
        channel: the channel it affects; ``None`` for ``dropout`` (a dropout loses whole
            readings, so all channels), required for every other kind.
        start: index of the first affected step (0-based).
        length: number of affected steps; the stretch is ``[start, start + length)``.
        magnitude: meaning depends on the kind:

            - ``spike``, ``level_shift``: offset added over the stretch, in standard deviations of
              the channel's normal signal (negative for a drop);
            - ``slow_drift``: the offset reached at the end of a linear ramp, same units;
            - ``frequency_change``: factor applied to the frequency of the operating cycle (> 0);
            - ``broken_correlation``: share of the channel's signal replaced by a pattern
              uncorrelated with its partner channel, in (0, 1];
            - ``stuck_sensor``, ``dropout``: ignored (the sensor repeats its last reading, or the
              readings are missing).

    Raises:
        ConfigError: on an unknown kind or channel, a negative start, a too short stretch or a
            magnitude out of range for the kind.
    """

    kind: str
    channel: str | None
    start: int
    length: int
    magnitude: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ANOMALY_KINDS:
            raise ConfigError(f"anomaly kind={self.kind!r}: expected one of {ANOMALY_KINDS}")
        if self.kind == "dropout":
            if self.channel is not None:
                raise ConfigError(
                    f"dropout channel={self.channel!r}: expected None (a dropout loses whole rows)"
                )
        elif self.channel not in CHANNELS:
            raise ConfigError(f"{self.kind} channel={self.channel!r}: expected one of {CHANNELS}")
        if self.start < 0:
            raise ConfigError(f"{self.kind} start={self.start}: expected >= 0")
        min_length = _MIN_LENGTH.get(self.kind, 1)
        if self.length < min_length:
            raise ConfigError(f"{self.kind} length={self.length}: expected >= {min_length}")
        if not math.isfinite(self.magnitude):
            raise ConfigError(f"{self.kind} magnitude={self.magnitude}: expected a finite number")
        if self.kind == "frequency_change" and self.magnitude <= 0:
            raise ConfigError(f"frequency_change magnitude={self.magnitude}: expected > 0")
        if self.kind == "broken_correlation" and not 0 < self.magnitude <= 1:
            raise ConfigError(f"broken_correlation magnitude={self.magnitude}: expected in (0, 1]")

    @property
    def stop(self) -> int:
        """One past the last affected step."""
        return self.start + self.length


@dataclass(frozen=True)
class MachineSpec:
    """What to generate for one machine: its name, time grid, behaviour and anomalies.

    The amplitude and noise parameters are multipliers of the built-in defaults (1.0 = default),
    so fleets can vary machines without knowing the physics inside.

    Parameters:
        entity: the machine's name (the ``entity`` of its readings).
        steps: number of readings before dropouts are removed.
        interval_s: seconds between readings.
        start: time of the first reading, timezone-aware.
        load_level: mean load of the machine, in (0, 1]; sets the current and what follows it.
        daily_amplitude: strength of the daily shift pattern.
        weekly_amplitude: strength of the working-week pattern (quieter weekends).
        cycle_s: period of the machine's operating cycle, seconds.
        cycle_amplitude: strength of the operating cycle.
        noise_scale: multiplier of every channel's measurement noise.
        anomalies: the anomalies to inject, applied in order; each must lie within ``steps``.

    Raises:
        ConfigError: when a value is out of range; the message names the field.
    """

    entity: str = "machine-01"
    steps: int = 2016
    interval_s: int = 300
    start: datetime = _DEFAULT_START
    load_level: float = 0.6
    daily_amplitude: float = 1.0
    weekly_amplitude: float = 1.0
    cycle_s: float = 3600.0
    cycle_amplitude: float = 1.0
    noise_scale: float = 1.0
    anomalies: tuple[InjectedAnomaly, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.entity:
            raise ConfigError("entity='': expected a non-empty name")
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps}: expected >= 1")
        if self.interval_s <= 0:
            raise ConfigError(f"interval_s={self.interval_s}: expected > 0")
        if self.start.tzinfo is None:
            raise ConfigError(f"start={self.start.isoformat()}: expected a timezone-aware time")
        if not 0 < self.load_level <= 1:
            raise ConfigError(f"load_level={self.load_level}: expected in (0, 1]")
        if self.cycle_s < 2 * self.interval_s:
            raise ConfigError(
                f"cycle_s={self.cycle_s}: expected >= 2 * interval_s ({2 * self.interval_s})"
            )
        for name in ("daily_amplitude", "weekly_amplitude", "cycle_amplitude", "noise_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}={value}: expected a finite number >= 0")
        # a list would make the frozen spec unhashable and mutable from outside
        object.__setattr__(self, "anomalies", tuple(self.anomalies))
        for anomaly in self.anomalies:
            if not isinstance(anomaly, InjectedAnomaly):
                raise ConfigError(f"anomalies: expected InjectedAnomaly items, got {anomaly!r}")
            if anomaly.stop > self.steps:
                raise ConfigError(
                    f"{anomaly.kind} anomaly at steps [{anomaly.start}, {anomaly.stop}): "
                    f"expected within steps={self.steps}"
                )

    def timestamps(self) -> pd.DatetimeIndex:
        """The regular UTC time grid of all ``steps`` readings (dropouts included)."""
        start = pd.Timestamp(self.start).tz_convert("UTC")
        return pd.date_range(start, periods=self.steps, freq=pd.Timedelta(seconds=self.interval_s))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-ready), the inverse of :meth:`from_dict`."""
        data = asdict(self)
        data["start"] = self.start.isoformat()
        data["anomalies"] = [asdict(a) for a in self.anomalies]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MachineSpec:
        """Rebuild a spec from :meth:`to_dict` output; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"MachineSpec: unknown keys {sorted(unknown)}")
        values = dict(data)
        if "start" in values:
            values["start"] = datetime.fromisoformat(str(values["start"]))
        if "anomalies" in values:
            values["anomalies"] = tuple(InjectedAnomaly(**a) for a in values["anomalies"])
        return cls(**values)


@dataclass(frozen=True)
class _Latents:
    """The hidden processes a machine's channels are computed from; arrays of shape (steps,)."""

    load_wander: np.ndarray
    pump_wander: np.ndarray
    ambient_wander: np.ndarray
    daily: np.ndarray  # daily shift shape, roughly in [-1, 1]
    daily_pump: np.ndarray
    ambient_daily: np.ndarray
    weekly: np.ndarray  # working-week shape, in [-1, 1]
    cycle_phase: np.ndarray  # radians of the operating cycle


def _ar1(rng: np.random.Generator, n: int, phi: float, std: float) -> np.ndarray:
    """A stationary AR(1) series with lag-one coefficient ``phi`` and marginal ``std``."""
    innovations = rng.normal(0.0, std * math.sqrt(1 - phi * phi), n)
    innovations[0] = rng.normal(0.0, std)
    return _recursive(innovations, phi)


def _recursive(inputs: np.ndarray, phi: float) -> np.ndarray:
    """y[t] = phi * y[t-1] + inputs[t], y[0] = inputs[0], computed in C by pandas' ewm."""
    alpha = 1.0 - phi
    scaled = inputs / alpha
    scaled[0] = inputs[0]  # ewm starts at its first input unweighted
    filtered = pd.Series(scaled).ewm(alpha=alpha, adjust=False).mean()
    return filtered.to_numpy()


def _lowpass(values: np.ndarray, phi: float) -> np.ndarray:
    """First-order lag y[t] = phi * y[t-1] + (1 - phi) * x[t], starting at y[0] = x[0]."""
    filtered = pd.Series(values).ewm(alpha=1.0 - phi, adjust=False).mean()
    return filtered.to_numpy()


def _latents(spec: MachineSpec, rng: np.random.Generator) -> _Latents:
    """Draw the hidden processes; every random draw of a machine happens here or in the noise."""
    times = spec.timestamps()
    hours = (times.hour + times.minute / 60 + times.second / 3600).to_numpy(dtype=float)
    days = times.day_of_week.to_numpy(dtype=float) + hours / 24
    # a day shift: busy from morning to evening, peaking mid-afternoon, with a lunch dip
    daily = -np.cos(2 * np.pi * (hours - 2.0) / 24) + 0.25 * np.cos(4 * np.pi * (hours - 12.5) / 24)
    daily_pump = -np.cos(2 * np.pi * (hours - 1.0) / 24)
    ambient_daily = -np.cos(2 * np.pi * (hours - 3.0) / 24)
    # busiest mid-week, quietest over the weekend (days counted from Monday 00:00)
    weekly = np.cos(2 * np.pi * (days - 2.5) / 7)
    elapsed_s = np.arange(spec.steps, dtype=float) * spec.interval_s
    cycle_phase = 2 * np.pi * elapsed_s / spec.cycle_s + rng.uniform(0, 2 * np.pi)
    per_step = spec.interval_s / 3600  # wander time constants are in hours, not steps
    return _Latents(
        load_wander=_ar1(rng, spec.steps, math.exp(-per_step / 4.0), 0.04),
        pump_wander=_ar1(rng, spec.steps, math.exp(-per_step / 3.0), 0.03),
        ambient_wander=_ar1(rng, spec.steps, math.exp(-per_step / 8.0), 0.6),
        daily=daily,
        daily_pump=daily_pump,
        ambient_daily=ambient_daily,
        weekly=weekly,
        cycle_phase=cycle_phase,
    )


def _clean_channels(spec: MachineSpec, lat: _Latents) -> dict[str, np.ndarray]:
    """The noise-free channel signals the latents imply (physics, no randomness)."""
    cycle = spec.cycle_amplitude * np.sin(lat.cycle_phase)
    load = (
        spec.load_level
        + 0.18 * spec.daily_amplitude * lat.daily
        + 0.09 * spec.weekly_amplitude * lat.weekly
        + 0.04 * cycle
        + lat.load_wander
    )
    load = np.clip(load, 0.02, 1.3)
    current = 4.0 + 16.0 * load
    ambient = 20.0 + 3.0 * lat.ambient_daily + lat.ambient_wander
    # thermal lag of about 30 minutes between the current and the winding temperature
    phi = math.exp(-spec.interval_s / 1800.0)
    temperature = ambient + 1.6 * _lowpass(current, phi)
    vibration = 0.5 + 0.1 * current + 0.15 * cycle
    pump = (
        0.55
        + 0.12 * spec.daily_amplitude * lat.daily_pump
        + 0.06 * spec.weekly_amplitude * lat.weekly
        + 0.045 * cycle
        + lat.pump_wander
    )
    pressure = 1.5 + 3.0 * np.clip(pump, 0.05, 1.3)
    flow = 30.0 * np.sqrt(np.maximum(pressure - 1.0, 0.05))
    return {
        "temperature": temperature,
        "vibration": vibration,
        "current": current,
        "pressure": pressure,
        "flow": flow,
    }


def _anomaly_rng(seed: int, anomaly: InjectedAnomaly) -> np.random.Generator:
    """A random stream for one anomaly, independent of the machine's stream and of the others.

    Keyed by where the anomaly is, not by its place in the list, so adding or removing another
    anomaly does not change this one.
    """
    channel = CHANNELS.index(anomaly.channel) if anomaly.channel in CHANNELS else len(CHANNELS)
    kind = ANOMALY_KINDS.index(anomaly.kind)
    key = (1, kind, channel, anomaly.start, anomaly.length)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _uncorrelated_pattern(
    rng: np.random.Generator, partner: np.ndarray, period_steps: float
) -> np.ndarray:
    """A smooth standardised pattern with exactly zero sample correlation with ``partner``."""
    n = len(partner)
    steps = np.arange(n, dtype=float)
    pattern = np.sin(2 * np.pi * steps / period_steps + rng.uniform(0, 2 * np.pi))
    pattern = pattern + _ar1(rng, n, 0.9, 0.7)
    centred = partner - partner.mean()
    pattern = pattern - pattern.mean()
    norm = float(centred @ centred)
    if norm > 0:
        pattern = pattern - (pattern @ centred) / norm * centred
    std = pattern.std()
    return pattern / std if std > 0 else pattern


def _inject(
    spec: MachineSpec,
    seed: int,
    anomaly: InjectedAnomaly,
    observed: dict[str, np.ndarray],
    clean: dict[str, np.ndarray],
    noise: dict[str, np.ndarray],
    lat: _Latents,
    scale: dict[str, float],
) -> None:
    """Apply one anomaly to ``observed`` in place, inside its stretch only."""
    stretch = slice(anomaly.start, anomaly.stop)
    kind, channel = anomaly.kind, anomaly.channel
    if kind == "dropout" or channel is None:
        return  # rows are removed when the frame is built
    values = observed[channel]
    offset = anomaly.magnitude * scale[channel]
    if kind in ("spike", "level_shift"):
        values[stretch] += offset
    elif kind == "slow_drift":
        values[stretch] += offset * np.arange(1, anomaly.length + 1) / anomaly.length
    elif kind == "stuck_sensor":
        values[stretch] = values[max(anomaly.start - 1, 0)]
    elif kind == "frequency_change":
        phase = lat.cycle_phase.copy()
        # phase-continuous at the start, so the change is in rhythm, not a jump
        phase[stretch] = phase[anomaly.start] + anomaly.magnitude * (
            phase[stretch] - phase[anomaly.start]
        )
        changed = _clean_channels(spec, replace(lat, cycle_phase=phase))[channel]
        values[stretch] = changed[stretch] + noise[channel][stretch]
    elif kind == "broken_correlation":
        own = clean[channel][stretch]
        partner = clean[_PARTNER[channel]][stretch]
        period_steps = 5.3 * 3600 / spec.interval_s  # unrelated to the daily and cycle periods
        pattern = _uncorrelated_pattern(_anomaly_rng(seed, anomaly), partner, period_steps)
        detached = own.mean() + max(own.std(), 0.5 * scale[channel]) * pattern
        mixed = (1 - anomaly.magnitude) * own + anomaly.magnitude * detached
        values[stretch] = mixed + noise[channel][stretch]


def generate_machine(spec: MachineSpec, seed: int) -> tuple[pd.DataFrame, list[InjectedAnomaly]]:
    """Generate one machine's readings with its anomalies injected.

    The same ``spec`` and ``seed`` always give the same frame, and the normal signal does not
    depend on ``spec.anomalies``: removing an anomaly from the spec changes the frame only
    inside that anomaly's stretch.

    Parameters:
        spec: what to generate.
        seed: seed of every random draw.

    Returns:
        A wide frame with a ``timestamp`` column (UTC) and one float column per channel in
        :data:`CHANNELS` order, one row per reading, rows of dropouts removed; and the list of
        anomalies injected (``spec.anomalies``).

    Raises:
        ConfigError: if ``seed`` is negative.
    """
    if seed < 0:
        raise ConfigError(f"seed={seed}: expected >= 0")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    lat = _latents(spec, rng)
    clean = _clean_channels(spec, lat)
    noise = {
        channel: rng.normal(0.0, _NOISE_STD[channel] * spec.noise_scale, spec.steps)
        for channel in CHANNELS
    }
    observed = {channel: clean[channel] + noise[channel] for channel in CHANNELS}
    # magnitudes are in standard deviations of the normal signal, floored so a flat machine
    # (all amplitudes 0) still gets visible anomalies
    scale = {
        channel: max(float(clean[channel].std()), 3 * _NOISE_STD[channel]) for channel in CHANNELS
    }
    keep = np.ones(spec.steps, dtype=bool)
    for anomaly in spec.anomalies:
        _inject(spec, seed, anomaly, observed, clean, noise, lat, scale)
        if anomaly.kind == "dropout":
            keep[anomaly.start : anomaly.stop] = False
    frame = pd.DataFrame({"timestamp": spec.timestamps(), **observed})
    frame = frame.loc[keep].reset_index(drop=True)
    return frame, list(spec.anomalies)


def _nab_time(timestamp: pd.Timestamp) -> str:
    return timestamp.tz_convert("UTC").strftime(NAB_TIMESTAMP_FORMAT)


def _fleet_anomalies(
    rng: np.random.Generator,
    kinds: Sequence[str],
    steps: int,
    first_step: int,
    pad_steps: int,
) -> tuple[InjectedAnomaly, ...]:
    """Place one anomaly of each kind in its own slot of ``[first_step, steps)``, windows apart."""
    if not kinds:
        return ()
    slot = (steps - first_step) // len(kinds)
    room = slot - 2 * pad_steps
    if room < 1:
        raise ConfigError(
            f"steps={steps}: too few for {len(kinds)} anomalies with {pad_steps}-step windows "
            f"after the normal prefix of {first_step} steps"
        )
    placed = []
    for number, kind in enumerate(kinds):
        low, high = _FLEET_LENGTH[kind]
        length = int(rng.integers(low, high + 1))
        length = max(min(length, room), _MIN_LENGTH.get(kind, 1))
        if length > room:
            raise ConfigError(
                f"steps={steps}: too few to place a {kind} of {length} steps "
                f"({room} free steps per anomaly)"
            )
        start = first_step + number * slot + pad_steps + int(rng.integers(0, room - length + 1))
        low_m, high_m = _FLEET_MAGNITUDE[kind]
        magnitude = float(rng.uniform(low_m, high_m)) if high_m > low_m else low_m
        if kind in ("spike", "level_shift", "slow_drift") and rng.random() < 0.5:
            magnitude = -magnitude
        if kind == "frequency_change" and rng.random() < 0.3:
            magnitude = 1 / magnitude  # a slow-down instead of a speed-up
        channel = None
        if kind != "dropout":
            choices = _FLEET_CHANNELS.get(kind, CHANNELS)
            channel = choices[int(rng.integers(len(choices)))]
        placed.append(InjectedAnomaly(kind, channel, start, length, round(magnitude, 3)))
    return tuple(placed)


def generate_fleet(
    entities: int,
    steps: int,
    seed: int,
    anomalies_per_entity: int = 3,
    normal_prefix: float = 0.5,
    *,
    interval_s: int = 300,
    start: datetime = _DEFAULT_START,
    window_pad_steps: int = 24,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Generate a fleet of similar but not identical machines, with labelled anomalies.

    Machines differ in load, amplitudes, operating cycle and noise. The first ``normal_prefix``
    share of each machine's steps is anomaly-free, label windows included, so it can be used for
    training; the rest holds ``anomalies_per_entity`` anomalies, each in its own slot and each
    kind of :data:`ANOMALY_KINDS` used in turn across the fleet.

    Parameters:
        entities: number of machines, named ``machine-01``, ``machine-02``, ...
        steps: readings per machine before dropouts are removed.
        seed: seed of every random draw.
        anomalies_per_entity: anomalies injected into each machine.
        normal_prefix: share of the steps, in [0, 1), kept anomaly-free.
        interval_s: seconds between readings.
        start: time of the first reading, timezone-aware.
        window_pad_steps: how far each label window extends before and after its anomaly.

    Returns:
        A long frame with columns ``timestamp``, ``entity`` and the channels, ordered by time
        then entity (as a stream would deliver it); and the labels, a dict with:

        - ``"windows"``: NAB windows format, ``{entity: [["start", "end"], ...]}`` with
          timestamps as ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC);
        - ``"anomalies"``: one dict per anomaly: ``kind``, ``entity``, ``channel``, ``start`` and
          ``end`` (first and last affected reading, same timestamp format), ``start_step``,
          ``length``, ``magnitude``, ``window`` (its label window);
        - ``"machines"``: per entity, ``{"seed": int, "spec": MachineSpec.to_dict()}``: what
          :func:`generate_machine` needs to regenerate that machine alone.

    Raises:
        ConfigError: when the arguments are out of range (``seed`` must be >= 0) or the anomalies
            do not fit.
    """
    if entities < 1:
        raise ConfigError(f"entities={entities}: expected >= 1")
    if anomalies_per_entity < 0:
        raise ConfigError(f"anomalies_per_entity={anomalies_per_entity}: expected >= 0")
    if not 0 <= normal_prefix < 1:
        raise ConfigError(f"normal_prefix={normal_prefix}: expected in [0, 1)")
    if window_pad_steps < 0:
        raise ConfigError(f"window_pad_steps={window_pad_steps}: expected >= 0")
    if steps < 1:
        raise ConfigError(f"steps={steps}: expected >= 1")
    if seed < 0:
        raise ConfigError(f"seed={seed}: expected >= 0")
    fleet_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    # one order of the kinds, repeated: every kind is used in turn across the fleet, and a machine
    # has no kind twice unless it has more anomalies than there are kinds
    order = [str(k) for k in fleet_rng.permutation(ANOMALY_KINDS)]
    kinds = [order[i % len(order)] for i in range(entities * anomalies_per_entity)]
    first_step = math.ceil(normal_prefix * steps)
    frames = []
    windows: dict[str, list[list[str]]] = {}
    anomalies: list[dict[str, Any]] = []
    machines: dict[str, dict[str, Any]] = {}
    for number in range(entities):
        entity = f"machine-{number + 1:02d}"
        own = kinds[number * anomalies_per_entity : (number + 1) * anomalies_per_entity]
        spec = MachineSpec(
            entity=entity,
            steps=steps,
            interval_s=interval_s,
            start=start,
            load_level=round(float(fleet_rng.uniform(0.45, 0.7)), 3),
            daily_amplitude=round(float(fleet_rng.uniform(0.7, 1.3)), 3),
            weekly_amplitude=round(float(fleet_rng.uniform(0.5, 1.5)), 3),
            cycle_s=float(fleet_rng.choice([2400.0, 3600.0, 5400.0])),
            cycle_amplitude=round(float(fleet_rng.uniform(0.8, 1.2)), 3),
            noise_scale=round(float(fleet_rng.uniform(0.8, 1.3)), 3),
            anomalies=_fleet_anomalies(fleet_rng, own, steps, first_step, window_pad_steps),
        )
        machine_seed = seed * 1000 + number
        frame, injected = generate_machine(spec, seed=machine_seed)
        frame.insert(1, "entity", entity)
        frames.append(frame)
        machines[entity] = {"seed": machine_seed, "spec": spec.to_dict()}
        times = spec.timestamps()
        windows[entity] = []
        for anomaly in sorted(injected, key=lambda a: a.start):
            low = max(anomaly.start - window_pad_steps, 0)
            high = min(anomaly.stop - 1 + window_pad_steps, steps - 1)
            window = [_nab_time(times[low]), _nab_time(times[high])]
            windows[entity].append(window)
            anomalies.append(
                {
                    "kind": anomaly.kind,
                    "entity": entity,
                    "channel": anomaly.channel,
                    "start": _nab_time(times[anomaly.start]),
                    "end": _nab_time(times[anomaly.stop - 1]),
                    "start_step": anomaly.start,
                    "length": anomaly.length,
                    "magnitude": anomaly.magnitude,
                    "window": window,
                }
            )
    fleet = pd.concat(frames, ignore_index=True)
    fleet = fleet.sort_values(["timestamp", "entity"], kind="stable").reset_index(drop=True)
    return fleet, {"windows": windows, "anomalies": anomalies, "machines": machines}


def write_dataset(
    frame: pd.DataFrame, labels: Mapping[str, Any], directory: str | Path, name: str
) -> list[Path]:
    """Write a generated dataset: ``<name>.csv``, ``.labels.json`` (NAB) and ``.anomalies.json``.

    The CSV has the frame's columns, timestamps as ``YYYY-MM-DD HH:MM:SS`` in UTC (as NAB's data
    files) and values with 4 decimals. The labels file holds the NAB windows (``labels["windows"]``)
    so NAB-style scoring reads it unchanged; the anomalies file holds ``labels["anomalies"]``.

    Parameters:
        frame: a frame from :func:`generate_fleet` (or :func:`generate_machine`).
        labels: the labels dict from :func:`generate_fleet`.
        directory: where to write; created if missing.
        name: base name of the three files.

    Returns:
        The paths written: CSV, labels, anomalies.

    Raises:
        ConfigError: if ``labels`` lacks ``windows`` or ``anomalies``, or ``frame`` lacks
            ``timestamp``.
    """
    for key in ("windows", "anomalies"):
        if key not in labels:
            raise ConfigError(f"labels: missing key {key!r}; expected generate_fleet's labels")
    if "timestamp" not in frame.columns:
        raise ConfigError("frame: missing column 'timestamp'")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{name}.csv"
    labels_path = out / f"{name}.labels.json"
    anomalies_path = out / f"{name}.anomalies.json"
    to_write = frame.copy()
    to_write["timestamp"] = pd.to_datetime(to_write["timestamp"], utc=True).dt.strftime(
        _CSV_TIMESTAMP_FORMAT
    )
    to_write.to_csv(csv_path, index=False, float_format="%.4f", lineterminator="\n")
    labels_path.write_text(json.dumps(labels["windows"], indent=2) + "\n", encoding="utf-8")
    anomalies_path.write_text(json.dumps(labels["anomalies"], indent=2) + "\n", encoding="utf-8")
    return [csv_path, labels_path, anomalies_path]
