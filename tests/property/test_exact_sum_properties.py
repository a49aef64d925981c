"""Property test: monitor.jit.exact_sum is math.fsum bit for bit on finite values (the kernels
rely on it to recompute running sums exactly as the Python they replaced did)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.jit import exact_sum

# Values whose sums cancel, round half-way and span the exponent range, beside ordinary ones.
awkward = st.sampled_from([1e16, -1e16, 1.0, 3.0, 1e-16, 0.1, -0.1, 5e-324, 1e300, -1e300, 0.0])
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(awkward, finite), max_size=80))
def test_exact_sum_equals_fsum(values: list[float]) -> None:
    assert exact_sum(np.array(values, dtype=np.float64)) == math.fsum(values)


def test_a_strided_view_is_summed_as_its_elements() -> None:
    ring = np.array([1e16, 1.0, 1.0, 2.0, -1e16, 3.0])
    assert exact_sum(ring[0::2]) == math.fsum([1e16, 1.0, -1e16])
    assert exact_sum(ring[1::2]) == math.fsum([1.0, 2.0, 3.0])
