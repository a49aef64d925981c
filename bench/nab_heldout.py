"""How much of a NAB sweep's in-sample gain survives on files it did not choose on.

Run ``python -m bench.nab_heldout --base r4_base r4_q1e2 r4_n1 ...`` after
:mod:`bench.nab_sweep` has run those configurations (same seeds) into its ``--json``
(``runs/nab_sweep.json``). The configurations' parameters were chosen on the same 35 files they
are scored on, so the in-sample gain over the baseline is optimistic. Here, ``--splits`` times
(200), the files are shuffled into two halves; the configuration (baseline included) with the
best mean NAB standard score over seeds on the first half is chosen, and its score minus the
baseline's on the second half is that split's held-out gain. Printed: the in-sample scores, the
mean held-out gain with its standard deviation, the share of splits that gained, and how often
each configuration was chosen.

A half's score is NAB's normalisation over its files, from the per-file raw standard scores the
sweep keeps: ``100 * (raw - null) / (perfect - null)`` with ``null = -windows`` and ``perfect =
windows`` (a scorable window costs 1 when missed and earns at most 1).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HeldOut", "held_out", "subset_score"]


@dataclass(frozen=True)
class HeldOut:
    """The outcome of :func:`held_out`: in-sample scores and the held-out gains per split."""

    in_sample: dict[str, float]
    gains: list[float]
    chosen: Counter[str]

    @property
    def mean_gain(self) -> float:
        return statistics.mean(self.gains)

    @property
    def positive_share(self) -> float:
        return sum(g > 0 for g in self.gains) / len(self.gains)


def _seeds(records: Mapping[str, Any], name: str) -> list[str]:
    return sorted(key.rsplit("@", 1)[1] for key in records if key.rsplit("@", 1)[0] == name)


def subset_score(
    records: Mapping[str, Any], name: str, seeds: Sequence[str], files: Sequence[str]
) -> float:
    """Mean over seeds of the NAB standard score of configuration ``name`` over ``files``."""
    scores = []
    for seed in seeds:
        per_file = records[f"{name}@{seed}"]["files"]
        raw = sum(per_file[f]["raw_standard"] for f in files)
        windows = sum(per_file[f]["windows"] for f in files)
        scores.append(100.0 * (raw + windows) / (2 * windows) if windows else 0.0)
    return statistics.mean(scores)


def held_out(
    records: Mapping[str, Any], base: str, names: Sequence[str], *, splits: int = 200, seed: int = 0
) -> HeldOut:
    """Choose among ``base`` and ``names`` on random halves of the files; score on the others.

    Raises:
        ValueError: a configuration lacks one of the baseline's seeds, or has other files.
    """
    candidates = [base, *(n for n in names if n != base)]
    seeds = _seeds(records, base)
    if not seeds:
        raise ValueError(f"no record of {base!r} in the sweep results")
    files = sorted(records[f"{base}@{seeds[0]}"]["files"])
    for name in candidates:
        for s in seeds:
            record = records.get(f"{name}@{s}")
            if record is None:
                raise ValueError(f"{name!r} has no run with seed {s} (the baseline's seeds)")
            if sorted(record["files"]) != files:
                raise ValueError(f"{name}@{s} was run on other files than {base}@{seeds[0]}")
    rng = random.Random(seed)
    gains: list[float] = []
    chosen: Counter[str] = Counter()
    for _ in range(splits):
        shuffled = files[:]
        rng.shuffle(shuffled)
        choose_on, score_on = shuffled[: len(files) // 2], shuffled[len(files) // 2 :]
        best = max(candidates, key=lambda n: subset_score(records, n, seeds, choose_on))
        chosen[best] += 1
        gains.append(
            subset_score(records, best, seeds, score_on)
            - subset_score(records, base, seeds, score_on)
        )
    in_sample = {n: subset_score(records, n, seeds, files) for n in candidates}
    return HeldOut(in_sample, gains, chosen)


def main(argv: Sequence[str] | None = None) -> HeldOut:
    parser = argparse.ArgumentParser(
        prog="python -m bench.nab_heldout", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--json", type=Path, default=Path("runs/nab_sweep.json"))
    parser.add_argument("--base", required=True, help="the baseline configuration's name")
    parser.add_argument("names", nargs="+", help="the configurations to choose among")
    parser.add_argument("--splits", type=int, default=200)
    args = parser.parse_args(argv)
    records = json.loads(args.json.read_text(encoding="utf-8"))
    result = held_out(records, args.base, args.names, splits=args.splits)
    for name, score in sorted(result.in_sample.items(), key=lambda item: -item[1]):
        print(f"{name:30s} in-sample {score:5.1f}")
    print(
        f"held out ({args.splits} splits): gain {result.mean_gain:+.2f} "
        f"(sd {statistics.stdev(result.gains):.2f}), {result.positive_share:.0%} of splits "
        f"gained; chosen: {dict(result.chosen.most_common())}"
    )
    return result


if __name__ == "__main__":
    main()
