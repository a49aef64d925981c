"""Run the benchmarks: ``python -m bench`` (``make bench``).

By default the three speed benchmarks run, one after the other (10-12 minutes on 2 cores):

- ``daemon`` (:mod:`bench.bench_daemon`): throughput, latency, memory and back-pressure of the
  daemon on a real broker; its figures go to ``bench/results/latest.json``;
- ``models`` (:mod:`bench.bench_models`): fit time, scoring throughput and epoch time of the
  autoencoder variants;
- ``evaluate`` (:mod:`bench.bench_evaluate`): ``monitor evaluate`` over a folder of 60 files of
  ~22,000 rows; its figures go to ``bench/results/evaluate.json``.

``--only daemon`` (or ``models``, or ``nab`` for the NAB configuration sweep of
:mod:`bench.nab_sweep`, which needs the NAB data and is not run by default) picks some;
``--quick`` runs them small, to check that they work, not to measure anything. Each module also
runs on its own with more options: ``python -m bench.bench_daemon --help``.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence

# name -> (module, arguments for --quick, run by default)
BENCHMARKS: dict[str, tuple[str, list[str], bool]] = {
    "daemon": ("bench.bench_daemon", ["--quick"], True),
    "models": (
        "bench.bench_models",
        ["--kinds", "lstm", "--skip", "1,3", "--min-seconds", "0.05"],
        True,
    ),
    "evaluate": ("bench.bench_evaluate", ["--quick"], True),
    "nab": ("bench.nab_sweep", ["--grid", "best"], False),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    default = ",".join(name for name, (_, _, on) in BENCHMARKS.items() if on)
    parser.add_argument(
        "--only", default=default, help=f"benchmarks, comma-separated (default {default}; "
        f"known: {', '.join(BENCHMARKS)})",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small runs: do they work?")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    started = time.perf_counter()
    for name in names:
        module_name, quick_args, _ = BENCHMARKS[name]
        print(f"\n######## {name}: python -m {module_name}", flush=True)
        module = importlib.import_module(module_name)
        module.main(quick_args if args.quick else [])
    print(f"\n(all benchmarks: {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
