"""``monitor run`` tunes the garbage collector for its loop (monitor.daemon.tune_gc)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from monitor.daemon import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(restored_gc: None) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    alive = object(), [1, 2]  # a tracked container alive before the call
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert not any(o is alive for o in gc.get_objects())  # frozen: out of every generation


def test_a_higher_threshold_set_by_the_operator_is_kept(restored_gc: None) -> None:
    gc.set_threshold(GC_YOUNG_THRESHOLD * 5, 20, 30)
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD * 5, 20, 30)


def test_cycles_made_after_it_are_still_collected_automatically(restored_gc: None) -> None:
    tune_gc()

    class Node:
        pass

    node = Node()
    node.self = node  # type: ignore[attr-defined]  # a reference cycle
    alive = weakref.ref(node)
    del node
    assert alive() is not None  # only the cyclic collector can free it
    # Net allocations past ten young collections (a middle one included), with no explicit call.
    kept = [[] for _ in range(GC_YOUNG_THRESHOLD * 12)]
    assert alive() is None
    assert len(kept) == GC_YOUNG_THRESHOLD * 12
