"""Adaptive thresholds on anomaly scores: warm-started, updated only with normal scores.

A threshold turns a score (higher = more anomalous, in the model's normalised error units) into a
decision: ``classify(score)`` is True when the score is above ``value``. Three methods, selected per
deployment by :class:`ThresholdConfig.method`:

``"quantile"``
    The ``quantile``-quantile of the last ``history`` scores (rolling, exact, linear interpolation
    as ``numpy.quantile``), the windows judged anomalous counted as censored above it. Simple and
    distribution-free; its false-alarm rate on stationary data is ``1 - quantile`` per window, so
    it suits rates of 1e-2..1e-3 with a history of a few thousand scores.
``"ewma"``
    A robust exponentially weighted location and spread (Huber-clipped EWMA, started from the
    median and MAD of the validation scores), ``value = m + k * s``: one outlier moves it by a
    bounded amount, and it forgets with a time constant of ~1/alpha windows, so it follows slow
    drift of the normal error. Suits a roughly symmetric error; ``k`` sets the rate.
``"spot"`` (default)
    Streaming peaks-over-threshold (SPOT): the scores above the ``level`` quantile ``t`` are
    modelled by a generalised Pareto tail, and ``value`` is the score exceeded with probability
    ``q`` (the risk) under that tail. It is calibrated far into the tail (q = 1e-4 is one false
    alarm per 10 000 windows on stationary data) from a modest number of scores, which is why it is
    the default: reconstruction errors are heavy-tailed and alarms must be rare. ``spot_depth > 0``
    gives DSPOT, which applies SPOT to the score minus the mean of the last ``spot_depth`` normal
    scores, for a drifting normal level. The GPD fit (Grimshaw's maximum likelihood or the
    method of moments, whichever is more likely) is libspot's; the excess store is kept here,
    so snapshots are exact and bounded (``spot_max_excess`` peaks).

Warm-up rules, common to all methods: ``warm_start(scores)`` resets the threshold from the model's
validation scores (non-finite scores are ignored). With at least ``min_warm_scores`` of them it is
ready at once; otherwise it keeps them and keeps learning from ``learn_one`` until it has
``min_warm_scores`` scores, and meanwhile ``value`` is None and ``classify`` returns False.
Nothing here raises on data: ``classify`` of NaN is False, ``learn_one`` ignores non-finite scores.

Re-baselining (``rebaseline_after = n > 0``, every method; off by default): a lasting change of
level (a sensor moved to a new operating point) makes every window anomalous, and since only
normal windows are learnt the threshold would never accept the new level, so its episode would
never close and no later anomaly of the entity could open one. After ``n`` windows reported by
``learn_anomalous`` with no normal score learnt in between, the threshold restarts from those
``n`` scores, as from a warm start (with fewer than ``min_warm_scores`` of them), taking the new
level as normal. That first value comes from few scores, and only from windows that were above
the old threshold (for a level shift, every window of the new level; for a burst of spikes, only
the spikes), so it is provisional: the threshold keeps those scores and the normal scores it
learns next, and once it holds ``min_warm_scores`` of them it restarts from all of them, a
sample of the new level's whole distribution. The threshold forgets the old level and its tail:
the price is that an anomaly lasting ``n`` windows is learnt as normal. ``n`` of a few window
lengths keeps short anomalies out of it.

Only normal windows are learnt: the caller passes a window's score to ``learn_one`` when it was
judged normal, and to ``learn_anomalous`` when it was judged anomalous. ``learn_anomalous`` never
teaches a threshold an anomaly's magnitude, but it tells the threshold that a score above its value
was left out (*censored*): the quantile method counts the window as above the threshold, because a
rolling quantile of only the scores below itself ratchets down without end; SPOT imputes a censored
peak from its fitted tail, at most at the nominal rate ``q`` (see :class:`SpotThreshold`), which
removes most of the bias that leaving out exceedances gives the tail fit; the EWMA ignores it (its
clipped updates barely notice the censoring). SPOT also ignores a ``learn_one`` score above its
value (the method's rule: anomalies never enter the tail model).

Convergence on stationary data (measured; see tests/unit/test_thresholds.py): the quantile method
keeps an exceedance rate within ~20 % of ``1 - quantile``; the EWMA's value goes to
``median + k * sigma`` for normal data; SPOT's warm-start estimate of the ``q = 1e-4`` quantile of
exponential scores is within a few percent with 50 000 scores, and in streaming the realised rate
for ``q = 1e-4`` over 300 000 scores is 1.2e-4 (exponential) and 2.4e-4 (normal, whose tail the
GPD approaches slowly) with censored peaks imputed, against 2.5e-4 and 3.3e-4 without.

References:
    Siffer, Fouque, Termier, Largouët. Anomaly Detection in Streams with Extreme Value Theory.
    KDD 2017. https://doi.org/10.1145/3097983.3098144 (SPOT, DSPOT).
    Grimshaw. Computing Maximum Likelihood Estimates for the Generalized Pareto Distribution.
    Technometrics 35(2), 1993.
    Huber. Robust Estimation of a Location Parameter. Ann. Math. Statist. 35(1), 1964 (ewma).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "EWMAThreshold",
    "QuantileThreshold",
    "SpotThreshold",
    "Threshold",
    "ThresholdConfig",
    "make_threshold",
    "threshold_from_snapshot",
]

_METHODS = ("quantile", "ewma", "spot")
_MIN_WARM_START = 50  # validation scores a warm start needs, whatever min_warm_scores says
_MAD_TO_SIGMA = 1.4826
_HUBER_C = 3.0
# 1 / E[min(|Z|, 3)], Z standard normal: 2(phi(0) - phi(3)) + 6(1 - Phi(3)) = 0.797124.
_HUBER_SIGMA = 1.0 / 0.797124
# Fewer peaks than this give no usable GPD fit; SPOT then uses the empirical tail (see _fit).
_MIN_PEAKS = 5
_SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class ThresholdConfig:
    """Which threshold a deployment uses, and its parameters.

    Parameters:
        method: ``"spot"`` (default), ``"quantile"`` or ``"ewma"`` (see the module docstring).
        min_warm_scores: scores needed before the threshold gives a value (>= 2); below this
            it answers "not anomalous". 500 validation windows is a typical validation split.
        quantile: the target quantile of normal scores for ``"quantile"``, in (0, 1).
        history: how many recent normal scores ``"quantile"`` keeps (>= min_warm_scores).
        ewma_k: spreads above the location for ``"ewma"`` (> 0); 4 is ~1e-4 one-sided for
            normal data, ~1e-2..1e-3 for the heavier-tailed errors of autoencoders.
        ewma_alpha: step size of ``"ewma"``, in (0, 1); ~1/alpha windows of memory.
        spot_q: SPOT risk, the target probability of a normal score exceeding the value, in
            (0, 1 - spot_level).
        spot_level: quantile of the initial scores above which scores are peaks, in (0, 1).
        spot_max_excess: peaks kept for the tail fit (oldest dropped), >= 5.
        spot_depth: 0 for SPOT; d > 0 for DSPOT over the mean of the last d normal scores.
        rebaseline_after: 0 (default) or ``n >= 2``: after ``n`` windows judged anomalous in a
            row (``learn_anomalous`` with no ``learn_one`` between; the pipeline learns nothing
            while an episode is open, so: the anomalous windows of an episode) the threshold
            restarts from their ``n`` scores (see "Re-baselining" in the module docstring).
        spot_impute_censored: let windows judged anomalous (``learn_anomalous``) enter SPOT's
            tail as censored peaks, at the fitted tail's conditional median above the value, at
            most at the nominal rate ``spot_q`` (see :class:`SpotThreshold`); False is the
            paper's SPOT, which drops them.

    Raises:
        ValueError: a field is out of range; the message names it.
    """

    method: str = "spot"
    min_warm_scores: int = 500
    quantile: float = 0.995
    history: int = 10_000
    ewma_k: float = 4.0
    ewma_alpha: float = 0.01
    spot_q: float = 1e-4
    spot_level: float = 0.98
    spot_max_excess: int = 1_000
    spot_depth: int = 0
    spot_impute_censored: bool = True
    rebaseline_after: int = 0

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(
                f"ThresholdConfig.method must be one of {_METHODS}, got {self.method!r}"
            )
        for name in (
            "min_warm_scores",
            "history",
            "spot_max_excess",
            "spot_depth",
            "rebaseline_after",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"ThresholdConfig.{name} must be an int, got {value!r}")
        if self.min_warm_scores < 2:
            raise ValueError(
                f"ThresholdConfig.min_warm_scores must be >= 2, got {self.min_warm_scores}"
            )
        if self.history < self.min_warm_scores:
            raise ValueError(
                f"ThresholdConfig.history must be >= min_warm_scores ({self.min_warm_scores}), "
                f"got {self.history}"
            )
        _check_open_unit("quantile", self.quantile)
        if not (isinstance(self.ewma_k, int | float) and math.isfinite(self.ewma_k)) or (
            self.ewma_k <= 0
        ):
            raise ValueError(
                f"ThresholdConfig.ewma_k must be a finite number > 0, got {self.ewma_k!r}"
            )
        _check_open_unit("ewma_alpha", self.ewma_alpha)
        _check_open_unit("spot_level", self.spot_level)
        _check_open_unit("spot_q", self.spot_q)
        if self.spot_q >= 1 - self.spot_level:
            raise ValueError(
                f"ThresholdConfig.spot_q must be < 1 - spot_level = {1 - self.spot_level:g} "
                f"(the risk lies in the tail above the level), got {self.spot_q!r}"
            )
        if self.spot_max_excess < _MIN_PEAKS:
            raise ValueError(
                f"ThresholdConfig.spot_max_excess must be >= {_MIN_PEAKS}, "
                f"got {self.spot_max_excess}"
            )
        if self.spot_depth < 0:
            raise ValueError(f"ThresholdConfig.spot_depth must be >= 0, got {self.spot_depth}")
        if self.rebaseline_after < 0 or self.rebaseline_after == 1:
            raise ValueError(
                "ThresholdConfig.rebaseline_after must be 0 (never) or >= 2, "
                f"got {self.rebaseline_after}"
            )
        if not isinstance(self.spot_impute_censored, bool):
            raise ValueError(
                "ThresholdConfig.spot_impute_censored must be a bool, "
                f"got {self.spot_impute_censored!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        return dict(_config_dict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdConfig:
        """Build a config from a dict; an unknown key is a ValueError naming it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ThresholdConfig: unknown key(s) {unknown}; expected {sorted(known)}")
        return cls(**data)


@functools.cache
def _config_dict(config: ThresholdConfig) -> dict[str, Any]:
    """``asdict(config)``, once per config: every entity's threshold snapshot holds its config,
    and ``asdict`` (a deep copy, field by field) was ~12 µs of the ~107 µs a one-channel entity's
    snapshot took."""
    return asdict(config)


def _check_open_unit(name: str, value: object) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not (0.0 < float(value) < 1.0)
    ):
        raise ValueError(f"ThresholdConfig.{name} must be in (0, 1), got {value!r}")


def _finite(scores: Iterable[float] | np.ndarray) -> list[float]:
    array = np.asarray(scores, dtype=np.float64).ravel()
    return [float(x) for x in array[np.isfinite(array)]]


class Threshold(ABC):
    """An adaptive threshold on scores (see the module docstring for the contract)."""

    def __init__(self, config: ThresholdConfig) -> None:
        self.config = config
        # Scores gathered before the threshold is ready; at most min_warm_scores of them.
        self._warm: list[float] = []
        # Scores of the anomalous windows since the last normal one (rebaseline_after > 0).
        self._streak: deque[float] = deque(maxlen=max(config.rebaseline_after, 1))
        # After a re-baseline: the new level's scores so far, until min_warm_scores of them.
        self._rebased: list[float] | None = None

    @property
    @abstractmethod
    def value(self) -> float | None:
        """The current threshold, or None while warming up."""

    def warm_start(self, scores: np.ndarray) -> None:
        """Reset the threshold from scores of normal data (the model's validation errors).

        The threshold is ready at once, even from fewer than ``min_warm_scores`` scores (at
        least ``_MIN_WARM_START``): they are the warm-up a model comes with, and a threshold left
        warming up would judge every window normal and learn whatever comes, anomalies included.
        """
        self._reset()
        self._warm = []
        self._streak.clear()
        self._rebased = None
        finite = _finite(scores)
        if len(finite) >= min(self.config.min_warm_scores, _MIN_WARM_START):
            self._initialise(finite)
        else:
            self._warm = finite

    def classify(self, score: float) -> bool:
        """True if ``score`` is above the threshold; False while warming up or for NaN."""
        value = self.value
        try:
            return value is not None and float(score) > value
        except (TypeError, ValueError):
            return False

    def learn_one(self, score: float) -> None:
        """Update with one score judged normal; non-finite scores are ignored."""
        try:
            x = float(score)
        except (TypeError, ValueError):
            return
        if not math.isfinite(x):
            return
        if self._streak:
            self._streak.clear()
        if not self._ready() and self.value is None:
            self._warm.append(x)
            if len(self._warm) >= self.config.min_warm_scores:
                warm, self._warm = self._warm, []
                self._initialise(warm)
            return
        if self._rebased is not None:
            self._rebased.append(x)
            if len(self._rebased) >= self.config.min_warm_scores:
                # Enough of the new level: restart from all of it, not only the first streak.
                scores, self._rebased = self._rebased, None
                self._initialise(scores)
                return
        self._learn(x)

    def learn_anomalous(self, score: float) -> None:
        """Record a window judged anomalous; it is not learnt as a normal score.

        ``"quantile"`` counts the window as censored (above the threshold) so that leaving
        anomalies out does not drag its quantile down; ``"spot"`` may impute a censored peak
        (``spot_impute_censored``); ``"ewma"`` ignores it. With ``rebaseline_after = n``, the
        ``n``-th anomalous window in a row restarts the threshold from the scores of those ``n``
        windows (provisionally: see "Re-baselining" in the module docstring). Ignored while
        warming up.
        """
        if not self._ready():
            return
        x = float(score) if isinstance(score, int | float) else math.nan
        n = self.config.rebaseline_after
        if n and math.isfinite(x):
            self._streak.append(x)
            if len(self._streak) >= n:
                # A lasting new level: its scores are the new normal.
                scores = list(self._streak)
                self._streak.clear()
                self._initialise(scores)
                self._rebased = scores
                return
        self._learn_anomalous(x)

    def _learn_anomalous(self, x: float) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        """The full state as a JSON-serialisable dict."""
        return {
            "version": _SNAPSHOT_VERSION,
            "method": self.config.method,
            "config": self.config.to_dict(),
            "warm": list(self._warm),
            "streak": list(self._streak),
            "rebased": None if self._rebased is None else list(self._rebased),
            "state": self._state(),
        }

    @abstractmethod
    def _ready(self) -> bool: ...

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _initialise(self, scores: list[float]) -> None: ...

    @abstractmethod
    def _learn(self, x: float) -> None: ...

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _restore(self, state: Mapping[str, Any]) -> None: ...


class QuantileThreshold(Threshold):
    """The ``quantile``-quantile of the last ``history`` scores, anomalies counted as censored.

    Normal scores (``learn_one``) enter the rolling history with their value; windows judged
    anomalous (``learn_anomalous``) enter as *censored*: known only to lie above the threshold.
    The value is ``numpy.quantile(history, quantile)`` (linear interpolation) with censored
    entries ranked above every normal score; where the quantile falls among the censored
    entries (more anomalies than ``1 - quantile`` of the history) it is the largest normal
    score, so anomalies' magnitudes never raise it. Without the censored entries the rolling
    quantile of normal scores alone would ratchet down: each step would cut the top
    ``1 - quantile`` off the data the next step is estimated from.

    A sorted copy of the history is kept, so an update costs O(history) memory moves, no sort.

    >>> threshold = QuantileThreshold(ThresholdConfig(method="quantile", min_warm_scores=5,
    ...                                               quantile=0.5))
    >>> threshold.warm_start(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    >>> threshold.value, threshold.classify(3.5)
    (3.0, True)
    """

    def __init__(self, config: ThresholdConfig) -> None:
        super().__init__(config)
        self._history: deque[float] = deque()  # math.inf = a censored (anomalous) window
        self._sorted: list[float] = []
        self._value: float | None = None
        self._stale = False

    @property
    def value(self) -> float | None:
        if self._stale:
            self._value = self._quantile()
            self._stale = False
        return self._value

    def _quantile(self) -> float | None:
        data = self._sorted
        finite = bisect.bisect_left(data, math.inf)  # normal scores are data[:finite]
        if finite == 0:
            return self._value  # only censored windows in the history: keep the last value
        position = (len(data) - 1) * self.config.quantile
        low = math.floor(position)
        high = min(low + 1, len(data) - 1)
        if high >= finite:
            return data[finite - 1]
        fraction = position - low
        a, b = data[low], data[high]
        # numpy's lerp: the form that is exact at both ends.
        return b - (b - a) * (1 - fraction) if fraction >= 0.5 else a + (b - a) * fraction

    def _ready(self) -> bool:
        return self._value is not None or self._stale

    def _reset(self) -> None:
        self._history.clear()
        self._sorted = []
        self._value = None
        self._stale = False

    def _initialise(self, scores: list[float]) -> None:
        self._reset()
        for x in scores[-self.config.history :]:
            self._history.append(x)
        self._sorted = sorted(self._history)
        self._stale = True

    def _learn(self, x: float) -> None:
        self._history.append(x)
        bisect.insort(self._sorted, x)
        if len(self._history) > self.config.history:
            old = self._history.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._stale = True

    def _learn_anomalous(self, x: float) -> None:
        self._learn(math.inf)

    def _state(self) -> dict[str, Any]:
        return {
            "history": [None if math.isinf(x) else x for x in self._history],
            "value": self.value,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._reset()
        self._history = deque(math.inf if x is None else float(x) for x in state["history"])
        self._sorted = sorted(self._history)
        value = state["value"]
        self._value = None if value is None else float(value)


class EWMAThreshold(Threshold):
    """Robust exponentially weighted location + ``k`` spreads (Huber-clipped EWMA).

    Each normal score ``x`` updates the location ``m`` and the spread ``s`` (in standard
    deviation units) with the residual clipped at ``c = 3`` spreads::

        r = clip(x - m, -c*s, c*s)
        m += alpha * r
        s += alpha * (min(|x - m|, c*s) * 1.2545 - s)

    1.2545 = 1 / E[min(|Z|, 3)] for a standard normal Z, so for normal data ``s`` converges to
    the standard deviation; the clipping bounds the influence of one score to ``alpha * c * s``
    (a plain EWMA of mean and variance can be moved arbitrarily far by one outlier). Warm start:
    ``m`` is the median of the scores and ``s`` = 1.4826 * their median absolute deviation (MAD),
    robust to anomalies among the validation windows. ``value = m + k * s``; memory ~1/alpha
    windows, so it follows slow drift of the normal error.

    References:
        Huber. Robust Estimation of a Location Parameter. Ann. Math. Statist. 35(1), 1964.
    """

    def __init__(self, config: ThresholdConfig) -> None:
        super().__init__(config)
        self._location: float | None = None
        self._spread = 0.0
        self._floor = 0.0

    @property
    def value(self) -> float | None:
        if self._location is None:
            return None
        return self._location + self.config.ewma_k * self._spread

    def _ready(self) -> bool:
        return self._location is not None

    def _reset(self) -> None:
        self._location = None
        self._spread = 0.0
        self._floor = 0.0

    def _initialise(self, scores: list[float]) -> None:
        data = np.asarray(scores, dtype=np.float64)
        location = float(np.median(data))
        spread = _MAD_TO_SIGMA * float(np.median(np.abs(data - location)))
        # A floor keeps the spread positive when most warm scores are equal (MAD = 0).
        scale = float(np.mean(np.abs(data - location)))
        self._floor = max(1e-12, 1e-6 * max(abs(location), scale))
        self._location = location
        self._spread = max(spread, self._floor)

    def _learn(self, x: float) -> None:
        assert self._location is not None
        alpha = self.config.ewma_alpha
        bound = _HUBER_C * self._spread
        residual = x - self._location
        self._location += alpha * min(max(residual, -bound), bound)
        deviation = min(abs(x - self._location), bound) * _HUBER_SIGMA
        self._spread = max(self._spread + alpha * (deviation - self._spread), self._floor)

    def _state(self) -> dict[str, Any]:
        return {"location": self._location, "spread": self._spread, "floor": self._floor}

    def _restore(self, state: Mapping[str, Any]) -> None:
        location = state["location"]
        self._location = None if location is None else float(location)
        self._spread = float(state["spread"])
        self._floor = float(state["floor"])


class SpotThreshold(Threshold):
    """SPOT / DSPOT: a generalised Pareto tail over the ``level`` quantile, value at risk ``q``.

    State: the initial threshold ``t`` (the ``level`` quantile of the warm-start scores), the
    last ``spot_max_excess`` peaks ``x - t`` (``x > t``), the counts ``n`` (normal scores seen)
    and ``Nt`` (peaks seen), and for DSPOT the last ``spot_depth`` normal scores. The value is
    ``t + sigma/gamma * ((q * n / Nt) ** -gamma - 1)`` (``t - sigma * log(q * n / Nt)`` when
    ``gamma == 0``) with ``gamma, sigma`` fitted by libspot on the stored peaks, refitted at each
    new peak. A normal score above the value is not learnt (SPOT's rule).

    Censoring: leaving out every score above the value cuts the top of the tail the GPD is
    fitted to, so the fit comes out too light and the realised exceedance rate drifts above
    ``q`` (1.5-3x on stationary data; libspot's own streaming shows the same). With
    ``spot_impute_censored`` each window reported by ``learn_anomalous`` adds a peak at the
    conditional median of the fitted tail above the current value
    (``u + (sigma + gamma*u)/gamma * (2**gamma - 1)``, ``u`` the value's excess over ``t``), but
    only while the imputed peaks number at most ``q`` times the normal scores learnt: as many
    exceedances as stationary data would have produced among them. An anomaly's magnitude never
    enters the tail, and a long anomaly adds nothing beyond that budget (which grows only with
    normal scores).

    References:
        Siffer et al., Anomaly Detection in Streams with Extreme Value Theory, KDD 2017.
    """

    def __init__(self, config: ThresholdConfig) -> None:
        super().__init__(config)
        self._t: float | None = None
        self._peaks: deque[float] = deque(maxlen=config.spot_max_excess)
        self._n = 0
        self._nt = 0
        self._gamma = math.nan
        self._sigma = math.nan
        self._tail_value: float | None = None  # value relative to the drift (DSPOT) baseline
        self._drift: deque[float] = deque(maxlen=max(config.spot_depth, 1))
        self._censored = 0  # windows reported by learn_anomalous since the (warm) start
        self._imputed = 0  # of which entered the tail as imputed peaks

    @property
    def value(self) -> float | None:
        if self._tail_value is None:
            return None
        if not self._drift:  # _baseline() is 0.0; this is called several times per window
            return self._tail_value + 0.0
        return self._tail_value + self._baseline()

    @property
    def tail(self) -> dict[str, float | int | None]:
        """The fitted tail, for inspection: t, gamma, sigma, n, Nt, peaks stored, censored
        windows and imputed peaks."""
        return {
            "censored": self._censored,
            "imputed": self._imputed,
            "t": self._t,
            "gamma": self._gamma,
            "sigma": self._sigma,
            "n": self._n,
            "Nt": self._nt,
            "peaks": len(self._peaks),
        }

    def _baseline(self) -> float:
        if self.config.spot_depth == 0 or not self._drift:
            return 0.0
        return math.fsum(self._drift) / len(self._drift)

    def _ready(self) -> bool:
        return self._tail_value is not None

    def _reset(self) -> None:
        self._t = None
        self._peaks.clear()
        self._n = 0
        self._nt = 0
        self._gamma = math.nan
        self._sigma = math.nan
        self._tail_value = None
        self._drift.clear()
        self._censored = 0
        self._imputed = 0

    def _initialise(self, scores: list[float]) -> None:
        self._reset()
        depth = self.config.spot_depth
        if depth:
            # DSPOT: each score relative to the mean of the `depth` scores before it.
            residuals = []
            for i, x in enumerate(scores):
                if i >= depth:
                    residuals.append(x - math.fsum(scores[i - depth : i]) / depth)
            if len(residuals) < 2:
                residuals = [x - math.fsum(scores) / len(scores) for x in scores]
            self._drift.extend(scores[-depth:])
        else:
            residuals = list(scores)
        data = np.asarray(residuals, dtype=np.float64)
        self._t = float(np.quantile(data, self.config.spot_level))
        excesses = data[data > self._t] - self._t
        self._n = len(data)
        self._nt = len(excesses)
        self._peaks.extend(float(e) for e in excesses)
        self._fit()

    def _learn(self, x: float) -> None:
        assert self._t is not None and self._tail_value is not None
        baseline = self._baseline() if self._drift else 0.0  # as _baseline(), without the call
        if x > self._tail_value + baseline:  # above the value
            return
        residual = x - baseline
        self._n += 1
        if self.config.spot_depth:
            self._drift.append(x)
        if residual > self._t:
            self._nt += 1
            self._peaks.append(residual - self._t)
            self._fit()
        else:
            self._tail_value = self._quantile()

    def _learn_anomalous(self, x: float) -> None:
        if self._t is None or self._tail_value is None:
            return
        self._censored += 1
        if not self.config.spot_impute_censored:
            return
        # As many imputed peaks as stationary data would have exceeded among the normal scores.
        if self._imputed + 1 > self.config.spot_q * (self._n - self._imputed):
            return
        u = self._tail_value - self._t
        gamma, sigma = self._gamma, self._sigma
        if not (math.isfinite(gamma) and math.isfinite(sigma)) or sigma <= 0:
            return
        if gamma == 0.0:
            excess = u + sigma * math.log(2.0)
        else:
            scale = sigma + gamma * u
            if scale <= 0:
                return  # the value is at the end of a bounded tail: nothing lies above it
            excess = u + scale / gamma * (2.0**gamma - 1.0)
        if not math.isfinite(excess) or excess <= 0:
            return
        self._imputed += 1
        self._n += 1
        self._nt += 1
        self._peaks.append(excess)
        self._fit()

    def _fit(self) -> None:
        """Fit the GPD on the stored peaks with libspot, then recompute the value."""
        self._gamma, self._sigma = _fit_gpd(list(self._peaks))
        self._tail_value = self._quantile()

    def _quantile(self) -> float:
        assert self._t is not None
        if self._nt == 0 or not self._peaks:
            # No peak at all (constant scores): nothing above t has been normal.
            return self._t
        if not (math.isfinite(self._gamma) and math.isfinite(self._sigma)) or self._sigma <= 0:
            # Too few or degenerate peaks for a tail fit: the largest normal peak.
            return self._t + max(self._peaks)
        ratio = self.config.spot_q * self._n / self._nt
        try:
            if self._gamma == 0.0:
                value = self._t - self._sigma * math.log(ratio)
            else:
                value = self._t + (self._sigma / self._gamma) * (ratio ** (-self._gamma) - 1.0)
        except (OverflowError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            # A wild fit on few peaks (huge gamma): the largest normal peak instead.
            return self._t + max(self._peaks)
        return value

    def _state(self) -> dict[str, Any]:
        return {
            "t": self._t,
            "peaks": list(self._peaks),
            "n": self._n,
            "nt": self._nt,
            "drift": list(self._drift) if self.config.spot_depth else [],
            "censored": self._censored,
            "imputed": self._imputed,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._reset()
        t = state["t"]
        if t is None:
            return
        self._t = float(t)
        self._peaks.extend(float(p) for p in state["peaks"])
        self._n = int(state["n"])
        self._nt = int(state["nt"])
        if self.config.spot_depth:
            self._drift.extend(float(x) for x in state["drift"])
        self._censored = int(state["censored"])
        self._imputed = int(state["imputed"])
        self._fit()


def _fit_gpd(peaks: list[float]) -> tuple[float, float]:
    """(gamma, sigma) of a generalised Pareto distribution fitted to positive ``peaks``.

    libspot fits the tail of its own excess store: it is given the peaks after five zeros with a
    level of 1e-9, so its P² excess threshold is exactly 0 and its excesses are exactly our peaks
    (checked; otherwise it is fed the peaks one by one after a 4-value fit, which libspot
    thresholds at 0 too). Deterministic: the same peaks give the same parameters.
    """
    positive = [p for p in peaks if p > 0]
    if len(positive) < _MIN_PEAKS:
        return math.nan, math.nan
    from libspot import Spot  # a C extension; imported here so the module imports without it

    data = np.concatenate([np.zeros(5), np.asarray(positive, dtype=np.float64)])
    spot = Spot(q=1e-12, level=1e-9, discard_anomalies=0, max_excess=len(positive))
    # The anomaly threshold at q=1e-12 may be NaN (an error); gamma and sigma are what we need.
    with contextlib.suppress(RuntimeError):
        spot.fit(data)
    if spot.excess_threshold != 0.0 or spot.Nt != len(positive):
        spot = Spot(q=1e-12, level=1e-9, discard_anomalies=0, max_excess=len(positive))
        with contextlib.suppress(RuntimeError):
            spot.fit(np.zeros(4))
        for p in positive:
            spot.step(p)
    return float(spot.gamma), float(spot.sigma)


_CLASSES: dict[str, type[Threshold]] = {
    "quantile": QuantileThreshold,
    "ewma": EWMAThreshold,
    "spot": SpotThreshold,
}


def make_threshold(config: ThresholdConfig) -> Threshold:
    """A fresh (warming-up) threshold of the configured method."""
    return _CLASSES[config.method](config)


def threshold_from_snapshot(config: ThresholdConfig, snapshot: Mapping[str, Any]) -> Threshold:
    """Rebuild a threshold from :meth:`Threshold.snapshot` output.

    Raises:
        ValueError: the snapshot is of another version or was taken with another config.
    """
    if snapshot.get("version") != _SNAPSHOT_VERSION:
        raise ValueError(
            f"threshold snapshot version {snapshot.get('version')!r} is not {_SNAPSHOT_VERSION}"
        )
    if ThresholdConfig.from_dict(snapshot["config"]) != config:
        raise ValueError(
            f"threshold snapshot was taken with another config: {snapshot['config']}, "
            f"not {config.to_dict()}"
        )
    threshold = make_threshold(config)
    threshold._warm = [float(x) for x in snapshot["warm"]]
    threshold._restore(snapshot["state"])
    threshold._streak.extend(float(x) for x in snapshot.get("streak", ()))
    rebased = snapshot.get("rebased")
    threshold._rebased = None if rebased is None else [float(x) for x in rebased]
    return threshold
