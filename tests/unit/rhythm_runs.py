"""What the Detector rhythm tests compare of a run: its decisions, flattened, and its events."""

from __future__ import annotations

from typing import Any

from monitor.pipeline import DetectorOutput


def flat(outputs: list[DetectorOutput]) -> tuple[list[Any], list[Any]]:
    """(window end, score, threshold, anomalous, off rhythm) of every decision, and the events."""
    decisions = [
        (d.window.end, d.score, d.threshold, d.anomalous, d.off_rhythm)
        for out in outputs
        for d in out.decisions
    ]
    return decisions, [e for out in outputs for e in out.events]
