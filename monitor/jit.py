"""Compiled kernels: a function decorated with :func:`kernel` runs compiled by numba.

The streaming core keeps its per-entity state in arrays so that the work of a whole batch of
windows can run in one compiled call instead of one Python call per window. A kernel is plain
Python over NumPy arrays and scalars: without numba (not installed, or ``NUMBA_DISABLE_JIT=1``)
it runs as it is, slower and with the same results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

__all__ = ["EntityRows", "exact_sum", "kernel"]

F = TypeVar("F", bound=Callable[..., Any])

try:
    from numba import njit as _njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    _njit = None


def kernel(function: F) -> F:
    """Compile ``function`` with numba (cached on disk, so a process loads rather than compiles
    it after the first), or return it as it is without numba."""
    if _njit is None:  # pragma: no cover
        return function
    return _njit(cache=True, nogil=True)(function)  # type: ignore[no-any-return]


class EntityRows:
    """Per-entity state for a kernel: one row of each array per entity, rows of forgotten
    entities reused, the arrays grown by half when full.

    A subclass names its arrays in :meth:`_arrays` (a row's shape, dtype and initial value) and
    sets what that needs before calling ``EntityRows.__init__``.
    """

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}  # entity -> row
        self._free: list[int] = []
        self.capacity = 0
        self._grow(0)

    def _arrays(self) -> dict[str, tuple[tuple[int, ...], Any, float]]:
        """name -> (a row's shape, dtype, initial value) of every array."""
        raise NotImplementedError

    def _grow(self, capacity: int) -> None:
        """Room for ``capacity`` rows, keeping the rows there are (none at the first call)."""
        for name, (shape, dtype, fill) in self._arrays().items():
            grown = np.full((capacity, *shape), fill, dtype=dtype)
            kept = getattr(self, name, None)
            if kept is not None:
                grown[: len(kept)] = kept
            setattr(self, name, grown)
        self.capacity = capacity

    def take(self, entity: str) -> int:
        """A free row for the entity (its arrays as a released row left them)."""
        if self._free:
            row = self._free.pop()
        else:
            row = len(self.rows)
            if row == self.capacity:
                self._grow(max(16, row + row // 2))
        self.rows[entity] = row
        return row

    def release(self, entity: str) -> int | None:
        """Free the entity's row for another; its row, which the caller resets, or None."""
        row = self.rows.pop(entity, None)
        if row is not None:
            self._free.append(row)
        return row


@kernel
def exact_sum(values: np.ndarray) -> float:
    """``math.fsum`` of a 1-d float64 array: the correctly rounded sum, so that state summed
    here equals state summed by ``math.fsum`` bit for bit (CPython's algorithm, Shewchuk's
    partials). With a non-finite value the plain sum (inf or NaN), where ``math.fsum`` would
    give the same or raise on an intermediate overflow."""
    n = values.shape[0]
    for i in range(n):
        if not np.isfinite(values[i]):
            return float(np.sum(values))
    partials = np.empty(n + 1)
    used = 0
    for i in range(n):
        x = values[i]
        kept = 0
        for j in range(used):
            y = partials[j]
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo != 0.0:
                partials[kept] = lo
                kept += 1
            x = hi
        partials[kept] = x
        used = kept + 1
    if used == 0:
        return 0.0
    # Add the partials from the largest, then round half-way cases as the exact sum would.
    m = used - 1
    hi = partials[m]
    lo = 0.0
    while m > 0:
        x = hi
        m -= 1
        y = partials[m]
        hi = x + y
        lo = y - (hi - x)
        if lo != 0.0:
            break
    if m > 0 and ((lo < 0.0 and partials[m - 1] < 0.0) or (lo > 0.0 and partials[m - 1] > 0.0)):
        y = lo * 2.0
        x = hi + y
        if y == x - hi:
            hi = x
    return hi
