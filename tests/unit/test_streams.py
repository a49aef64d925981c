"""CSV streams: layouts, and readings in time order whatever the frame's index."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from monitor.streams import Stream, load_stream


def test_readings_follow_rows_by_position_even_on_a_filtered_frame(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    pd.DataFrame(
        {
            "timestamp": ["2024-01-01 00:00", "2024-01-01 00:00", "2024-01-01 00:05"],
            "entity": ["a", "b", "a"],
            "x": [1.0, 2.0, 3.0],
        }
    ).to_csv(path, index=False)
    stream = load_stream(path)
    only_a = Stream(stream.frame[stream.frame["entity"] == "a"], stream.channels)
    assert list(only_a.frame.index) != list(range(len(only_a.frame)))  # not reset
    readings = list(only_a.readings())
    assert [r.values["x"] for r in readings] == [1.0, 3.0]
    assert [r.timestamp.minute for r in readings] == [0, 5]
    assert all(r.entity == "a" for r in readings)
