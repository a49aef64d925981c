"""Snapshots encoded in pieces (``monitor.kafka.state.json_pieces``) are exactly ``json.dumps``:
the daemon's encoder thread writes them piece by piece to hand the GIL back in between."""

from __future__ import annotations

import json
import zlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from monitor.kafka.state import PartitionState, json_pieces

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@given(value=JSON, depth=st.integers(0, 6))
def test_the_pieces_join_to_json_dumps(value: Any, depth: int) -> None:
    assert "".join(json_pieces(value, depth=depth)) == json.dumps(value, separators=(",", ":"))


@given(detector=st.dictionaries(st.text(), JSON, max_size=5))
def test_an_encoded_partition_state_decodes_to_itself(detector: dict[str, Any]) -> None:
    state = PartitionState("readings", 3, 120, "lstm-1", detector, 1_700_000_000_000, "ab12")
    assert PartitionState.decode(state.encode()) == state
    body = json.loads(zlib.decompress(state.encode()))
    assert body["detector"] == detector
