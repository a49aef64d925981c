"""The held-out check of NAB sweeps: its normalisation and what it tells broad from lucky gains."""

from __future__ import annotations

from typing import Any

import pytest

from bench.nab_heldout import held_out, subset_score

FILES = [f"cat/f{i}.csv" for i in range(10)]


def _records(**raw_per_file: list[float]) -> dict[str, Any]:
    """Sweep records, seeds 0 and 1, two windows per file, the given raw score per file."""
    return {
        f"{name}@{seed}": {
            "files": {f: {"raw_standard": raw[i], "windows": 2} for i, f in enumerate(FILES)}
        }
        for name, raw in raw_per_file.items()
        for seed in (0, 1)
    }


def test_no_detection_scores_0_and_perfect_scores_100() -> None:
    records = _records(none=[-2.0] * 10, perfect=[2.0] * 10, half=[0.0] * 10)
    assert subset_score(records, "none", ["0", "1"], FILES) == 0.0
    assert subset_score(records, "perfect", ["0", "1"], FILES) == 100.0
    assert subset_score(records, "half", ["0", "1"], FILES[:3]) == 50.0


def test_a_gain_on_every_file_survives_on_the_held_out_half() -> None:
    records = _records(base=[0.0] * 10, broad=[0.4] * 10)
    result = held_out(records, "base", ["broad"], splits=50)
    assert result.in_sample["broad"] == pytest.approx(60.0)
    assert result.chosen == {"broad": 50}
    assert result.mean_gain == pytest.approx(10.0) and result.positive_share == 1.0


def test_a_gain_from_one_file_does_not() -> None:
    # Both windows of one file caught, a false alarm more on the nine others: in-sample +0.5.
    records = _records(base=[0.0] * 10, lucky=[2.0] + [-0.2] * 9)
    result = held_out(records, "base", ["lucky"], splits=200)
    assert result.in_sample["lucky"] - result.in_sample["base"] == pytest.approx(0.5)
    # Chosen only on the halves that hold the lucky file; then the other half loses 5 points.
    assert result.positive_share == 0.0
    assert 0 < result.chosen["lucky"] < 200
    assert result.mean_gain == pytest.approx(-5.0 * result.chosen["lucky"] / 200)


def test_configurations_run_on_other_seeds_are_refused() -> None:
    records = _records(base=[0.0] * 10, other=[0.0] * 10)
    del records["other@1"]
    with pytest.raises(ValueError, match="no run with seed 1"):
        held_out(records, "base", ["other"])
