"""Benchmark ``monitor evaluate`` on a folder of the size users bring: 60 files of ~22,000 rows.

Run ``python -m bench.bench_evaluate`` (a few minutes on 2 cores; ``--quick`` builds 4 small
files and proves only that every figure is produced). The issue's bar: a whole folder of 50+
files of up to 22k rows evaluated "in well under an hour on 2 cores".

The folder is built from :func:`monitor.generator.generate_fleet` machines (5-minute steps, two
injected anomalies each after a normal first 15%; a dropout removes readings), one file per
machine in three category sub-folders, as NAB lays its data out:

- ``--files - --wide`` single-channel files, NAB's layout (``timestamp,value``): the channel of
  the machine's first anomaly;
- ``--wide`` multi-channel files: every channel in a wide CSV separated by ``;``, with a
  ``label`` column (1 inside a labelled window) that the run ignores (``--ignore-columns``).

A labels file (NAB's windows format, keyed by each file's path under the folder) holds every
file's windows of the anomalies it can show. Then the CLI runs as a user would run it, in a
subprocess: ``monitor evaluate DATA --out OUT --labels LABELS --ignore-columns label --workers
2`` with the package defaults. Reported: wall time (and its share of an hour), rows per second,
the peak resident memory of the evaluation's process tree (sampled every 0.2 s), and the
overall NAB standard score of the table it printed: a sanity figure that shows the scoring ran,
not a detection result (the injected anomalies are not NAB's).

Figures go to ``bench/results/evaluate.json`` (``--json``; a ``--quick`` run writes nothing
unless asked). Speed is measured here and never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from bench.harness import REPO
from monitor.generator import CHANNELS, generate_fleet

RESULTS = REPO / "bench" / "results" / "evaluate.json"
CATEGORIES = ("plantA", "plantB", "plantC")
LABEL_COLUMN = "label"
_NAB_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class Folder:
    """What :func:`build_folder` wrote: the data folder, the labels file, files and rows."""

    data: Path
    labels: Path
    files: int
    wide: int
    rows: int
    max_rows: int


def build_folder(root: Path, *, files: int, wide: int, rows: int, seed: int = 0) -> Folder:
    """Write ``files`` CSVs of about ``rows`` rows (``wide`` of them multi-channel) under
    ``root/data`` and their labels to ``root/labels.json``."""
    if not 0 <= wide <= files:
        raise ValueError(f"--wide must be between 0 and --files ({files}), got {wide}")
    fleet, labels = generate_fleet(
        files, rows, seed=seed, anomalies_per_entity=2, normal_prefix=0.15
    )
    data = root / "data"
    windows: dict[str, list[list[str]]] = {}
    by_entity = {entity: frame for entity, frame in fleet.groupby("entity", sort=True)}
    anomalies = pd.DataFrame(labels["anomalies"])
    total, longest = 0, 0
    for number, (entity, frame) in enumerate(by_entity.items()):
        frame = frame.drop(columns="entity").reset_index(drop=True)
        times = pd.to_datetime(frame["timestamp"], utc=True)
        # A dropout loses whole readings: there is no value to see, so it is not labelled.
        own = anomalies[(anomalies["entity"] == entity) & anomalies["channel"].notna()]
        is_wide = number >= files - wide
        if is_wide:
            shown = own
            name = f"{entity}_wide.csv"
        else:
            channel = str(own.iloc[0]["channel"]) if len(own) else CHANNELS[0]
            shown = own[own["channel"] == channel]
            frame = frame[["timestamp", channel]].rename(columns={channel: "value"})
            name = f"{entity}.csv"
        key = f"{CATEGORIES[number % len(CATEGORIES)]}/{name}"
        spans = [list(w) for w in shown["window"]]
        windows[key] = spans
        frame["timestamp"] = times.dt.strftime(_NAB_TIME)
        if is_wide:
            inside = pd.Series(0, index=frame.index)
            for start, end in spans:
                inside[times.between(pd.Timestamp(start, tz=UTC), pd.Timestamp(end, tz=UTC))] = 1
            frame[LABEL_COLUMN] = inside
        path = data / key
        path.parent.mkdir(parents=True, exist_ok=True)
        separator = ";" if is_wide else ","
        frame.to_csv(path, index=False, sep=separator, float_format="%.4f", lineterminator="\n")
        total += len(frame)
        longest = max(longest, len(frame))
    labels_path = root / "labels.json"
    labels_path.write_text(json.dumps(windows, indent=1) + "\n", encoding="utf-8")
    return Folder(data, labels_path, files, wide, total, longest)


class PeakMemory(threading.Thread):
    """Samples the summed RSS of a process and its children until stopped; keeps the peak."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        super().__init__(name="bench-evaluate-memory", daemon=True)
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                rss = 0
                for proc in tree:
                    try:
                        rss += proc.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
            except psutil.NoSuchProcess:
                return
            if rss > self.peak_bytes:
                self.peak_bytes, self.peak_processes = rss, len(tree)
            self._stop_event.wait(self.every_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_evaluate(folder: Folder, out: Path, *, workers: int) -> dict[str, Any]:
    """``monitor evaluate`` on the folder in a subprocess; wall time, peak memory, its table."""
    command = [sys.executable, "-m", "monitor.cli", "evaluate", str(folder.data), "--out", str(out)]
    command += ["--labels", str(folder.labels), "--ignore-columns", LABEL_COLUMN]
    command += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in [n for n in env if n.startswith("MONITOR_")]:
        del env[name]  # the package defaults, whatever this shell has set
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    memory = PeakMemory(process.pid)
    memory.start()
    stdout, stderr = process.communicate()
    wall_s = time.perf_counter() - started
    memory.stop()
    if process.returncode != 0:
        raise RuntimeError(f"monitor evaluate failed ({process.returncode}):\n{stderr[-3000:]}")
    outputs = sorted(out.rglob("*.csv"))
    out_rows = sum(len(pd.read_csv(p, usecols=["timestamp"])) for p in outputs)
    match = re.search(r"^\|\s*overall\s*\|\s*\d+\s*\|\s*\d+\s*\|\s*([\d.]+)", stdout, re.M)
    return {
        "wall_s": wall_s,
        "rows_per_s": folder.rows / wall_s,
        "share_of_an_hour": wall_s / 3600,
        "peak_rss_mb": memory.peak_bytes / 2**20,
        "peak_processes": memory.peak_processes,
        "output_files": len(outputs),
        "output_rows": out_rows,
        "nab_standard_overall": float(match.group(1)) if match else None,
        "table": stdout.strip(),
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="4 small files: figures, not speed")
    parser.add_argument("--files", type=int, help="files in the folder (60)")
    parser.add_argument("--wide", type=int, help="of which multi-channel, ';'-separated (10)")
    parser.add_argument("--rows", type=int, help="rows per file before dropouts (22,000)")
    parser.add_argument("--workers", type=int, default=2, help="monitor evaluate --workers (2)")
    parser.add_argument("--json", type=Path, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)
    files = args.files or (4 if args.quick else 60)
    wide = args.wide if args.wide is not None else (1 if args.quick else 10)
    rows = args.rows or (3_000 if args.quick else 22_000)

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "workers": args.workers,
        "load_start": _load(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        started = time.perf_counter()
        folder = build_folder(Path(tmp), files=files, wide=wide, rows=rows)
        results["build_s"] = time.perf_counter() - started
        results["folder"] = {
            "files": folder.files,
            "wide_files": folder.wide,
            "wide_channels": len(CHANNELS),
            "rows": folder.rows,
            "max_rows_per_file": folder.max_rows,
        }
        print(
            f"monitor evaluate on {folder.files} files ({folder.wide} with {len(CHANNELS)} "
            f"channels), {folder.rows:,} rows (at most {folder.max_rows:,} per file), "
            f"{args.workers} workers...",
            flush=True,
        )
        results["evaluate"] = run_evaluate(folder, Path(tmp) / "out", workers=args.workers)
    results["load_end"] = _load()
    figures = results["evaluate"]
    print(figures.pop("table"))
    print(
        f"\n== monitor evaluate: {folder.files} files, {folder.rows:,} rows, {os.cpu_count()} "
        f"CPUs, load {results['load_start']} -> {results['load_end']} ==\n"
        f"wall time {figures['wall_s']:.0f} s ({figures['share_of_an_hour']:.1%} of an hour), "
        f"{figures['rows_per_s']:,.0f} rows/s, peak memory {figures['peak_rss_mb']:,.0f} MB "
        f"over {figures['peak_processes']} processes; {figures['output_files']} output files, "
        f"{figures['output_rows']:,} rows; NAB standard (sanity) "
        f"{figures['nab_standard_overall']}"
    )
    target = args.json or (None if args.quick else RESULTS)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {target}")
    return results


if __name__ == "__main__":
    main()
