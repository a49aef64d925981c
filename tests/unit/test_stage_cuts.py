"""How the daemon cuts a polled batch into the stages it scores on its scoring thread."""

from __future__ import annotations

import doctest
import itertools

from hypothesis import given
from hypothesis import strategies as st

import monitor.daemon
from monitor.daemon import STAGE_READINGS, stage_cuts


@given(total=st.integers(0, 20_000), stage=st.integers(16, 2_000))
def test_stages_cover_the_batch_with_half_stages_at_both_ends(total: int, stage: int) -> None:
    cuts = stage_cuts(total, stage)
    assert cuts[0] == 0 and cuts[-1] == total
    sizes = [b - a for a, b in itertools.pairwise(cuts)]
    if total <= stage:
        assert sizes == [total]  # one stage, nothing handed over
        return
    assert all(size > 0 for size in sizes)
    middle = sizes[1:-1]
    assert middle and max(middle) <= stage
    assert len(sizes) == len(middle) + 2
    # The ends are half a middle stage, give or take the rounding.
    for end in (sizes[0], sizes[-1]):
        assert abs(2 * end - min(middle)) <= 2 and abs(2 * end - max(middle)) <= 2


@given(total=st.integers(0, 100), stage=st.integers(1, 15))
def test_tiny_stages_are_never_empty(total: int, stage: int) -> None:
    cuts = stage_cuts(total, stage)
    assert cuts[0] == 0 and cuts[-1] == total
    assert all(b > a for a, b in itertools.pairwise(cuts)) or total == 0


def test_the_default_stage_and_the_examples() -> None:
    assert stage_cuts(2000) == [0, 250, 750, 1250, 1750, 2000]
    assert stage_cuts(STAGE_READINGS) == [0, STAGE_READINGS]
    failed, _ = doctest.testmod(monitor.daemon, verbose=False)
    assert failed == 0
