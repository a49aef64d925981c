"""The evaluation benchmark builds its folder and runs ``monitor evaluate`` over all of it.

``bench.bench_evaluate --quick``: 4 files of 3,000 rows, one of them wide, through the real CLI
in a subprocess (about 10 seconds). Only that every figure is produced and that every row came
back is checked; how fast is measured by the benchmark, never asserted here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench import bench_evaluate
from bench.bench_evaluate import LABEL_COLUMN, build_folder

pytestmark = pytest.mark.slow


def test_the_folder_has_nab_and_wide_files_with_labels_keyed_by_path(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, files=3, wide=1, rows=1500)
    csvs = sorted(p.relative_to(folder.data).as_posix() for p in folder.data.rglob("*.csv"))
    labels = json.loads(folder.labels.read_text())
    assert sorted(labels) == csvs and len(csvs) == 3
    narrow = [pd.read_csv(folder.data / name) for name in csvs if "_wide" not in name]
    wide = [pd.read_csv(folder.data / name, sep=";") for name in csvs if "_wide" in name]
    assert all(list(frame.columns) == ["timestamp", "value"] for frame in narrow)
    (frame,) = wide
    assert LABEL_COLUMN in frame.columns and len(frame.columns) == 7  # timestamp, 5, label
    assert frame[LABEL_COLUMN].sum() > 0  # its windows are marked in the ignored column
    assert folder.rows == sum(len(f) for f in [*narrow, *wide])
    assert max(len(f) for f in [*narrow, *wide]) == folder.max_rows <= 1500


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "evaluate.json"
    got = bench_evaluate.main(["--quick", "--json", str(out)])
    assert json.loads(out.read_text())["evaluate"]["wall_s"] == got["evaluate"]["wall_s"]
    return got


def test_every_row_of_every_file_comes_back_scored(results: dict[str, Any]) -> None:
    folder, figures = results["folder"], results["evaluate"]
    assert folder["files"] == 4 and folder["wide_files"] == 1
    assert figures["output_files"] == folder["files"]
    assert figures["output_rows"] == folder["rows"] > 0
    assert figures["nab_standard_overall"] is not None  # the table's overall row was printed


def test_time_rate_and_memory_figures(results: dict[str, Any]) -> None:
    figures = results["evaluate"]
    for name in ("wall_s", "rows_per_s", "share_of_an_hour", "peak_rss_mb"):
        assert math.isfinite(figures[name]) and figures[name] > 0, (name, figures[name])
    assert figures["peak_processes"] >= 1
