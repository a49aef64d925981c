"""Benchmark the autoencoder variants on CPU: fit time, scoring throughput, epoch time.

Run ``python -m bench.bench_models`` (about 2-4 minutes on one core). It prints:

1. a default fit of each variant on a 4,000-step one-channel noisy sine (window 64): seconds,
   epochs, validation error, and detection of injected faults by the float32 (eager) network
   and its int8 dynamic quantisation on the same weights (separation = lowest fault score /
   highest normal score; above 1 means every fault window outscores every normal window);
2. scoring throughput in windows/s of ``model.score`` (scaling, forward pass and per-window,
   per-channel and per-step errors) for batch sizes 1, 64 and 512, window 64, 1 and 8
   channels, for three runtimes: eager float32, int8 dynamic quantisation, TorchScript trace;
3. training seconds for one epoch on 10,000 windows (window 64, 1 and 8 channels).

and closes with the fastest configuration found. Defaults: one torch thread (``--threads``),
all four variants (``--kinds``); ``--compile`` adds torch.compile to the throughput table (slow:
it compiles every cell). Numbers on a shared machine vary by some 10-20% between runs.

Findings (torch 2.13 CPU, one thread, 2 shared cores; ONNX Runtime is not installed):

- Fastest: the dense autoencoder, eager float32, at large batches (about 0.3-0.6 M windows/s
  at batch 512, one channel): one flattened window is a few matrix products that batch
  perfectly. The LSTM and VAE are bounded by 2 x 64 dependent recurrent steps per window
  (about 15-25 k windows/s at batch 64-512); the conv model sits in between.
- int8 dynamic quantisation: 2-3x *slower* for the LSTM and VAE (the quantised LSTM cell does
  not pay off at hidden size 32) and raises their normal-score floor a little; faster only for
  the dense model with 8 channels at batch 512 (about 1.4x), slower at batch 1 and 64. Hence
  ``inference="auto"`` stays float32 for every variant; "int8" remains an option.
- TorchScript trace: 5-30% faster at batch 1-64 (less Python call overhead), no gain at 512;
  torch.jit is deprecated in torch 2.x, so it is not offered as a runtime.
- torch.compile: ~20 s to compile, no consistent gain (slower at batch 1 for the LSTM).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

import models
from models.autoencoder import TorchAutoencoder

WINDOW = 64
BATCHES = (1, 64, 512)
CHANNELS = (1, 8)


def noisy_sines(steps: int, channels: int, *, seed: int = 0) -> np.ndarray:
    """(steps, channels) sines of different periods, phases and scales plus 5% noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None]
    period = 40 + 7 * np.arange(channels)
    clean = (1 + np.arange(channels)) * np.sin(2 * np.pi * t / period + np.arange(channels))
    return clean + 0.05 * (1 + np.arange(channels)) * rng.standard_normal((steps, channels))


def windows(series: np.ndarray, n: int, stride: int = 8) -> np.ndarray:
    return np.stack([series[i * stride : i * stride + WINDOW] for i in range(n)])


def faults(normal: np.ndarray) -> np.ndarray:
    """Spikes, level shifts and a frozen sensor in channel 0 of copies of normal windows."""
    spike, shift, frozen = normal.copy(), normal.copy(), normal.copy()
    spike[:, WINDOW // 2, 0] += 3.0
    shift[:, WINDOW // 2 :, 0] += 1.0
    frozen[:, WINDOW // 4 :, 0] = frozen[:, WINDOW // 4 : WINDOW // 4 + 1, 0]
    return np.concatenate([spike, shift, frozen])


def rate(fn: Callable[[np.ndarray], object], batch: np.ndarray, min_seconds: float) -> float:
    """Windows per second of ``fn(batch)``, repeated for at least ``min_seconds``."""
    fn(batch)  # warm-up
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or calls < 3:
        fn(batch)
        calls += 1
    return calls * len(batch) / elapsed


def channel_names(n: int) -> tuple[str, ...]:
    return ("value",) if n == 1 else tuple(f"c{i}" for i in range(n))


def section_default_fit(kinds: list[str]) -> None:
    print("\n== 1. Default fit, 4,000 steps x 1 channel, window 64 (defaults of each Config) ==")
    print(f"{'kind':6} {'fit s':>6} {'epochs':>6} {'val err':>8} "
          f"{'eager: normal/sep':>18} {'int8: normal/sep':>18}")  # fmt: skip
    series = noisy_sines(4000, 1)
    normal = windows(noisy_sines(2000, 1, seed=1), 200)
    faulty = faults(normal)
    for kind in kinds:
        model = models.build(kind, channels=("value",), window=WINDOW, inference="eager")
        started = time.perf_counter()
        report = model.fit(series, seed=0)
        seconds = time.perf_counter() - started
        cells = []
        for runtime in (model, model.with_inference("int8")):
            n, f = runtime.score(normal).window, runtime.score(faulty).window
            cells.append(f"{n.mean():.5f}/{f.min() / n.max():5.2f}")
        print(f"{kind:6} {seconds:6.1f} {len(report.epochs):6d} "
              f"{report.validation_scores.mean():8.5f} {cells[0]:>18} {cells[1]:>18}")  # fmt: skip


def quick_model(kind: str, channels: int, inference: str = "eager") -> TorchAutoencoder:
    """A default-sized model fitted for one short epoch: enough for timing the forward pass."""
    model = models.build(
        kind, channels=channel_names(channels), window=WINDOW, epochs=1,
        max_train_windows=256, inference=inference,
    )  # fmt: skip
    model.fit(noisy_sines(1500, channels), seed=0)
    return model


def traced(model: TorchAutoencoder) -> TorchAutoencoder:
    """The model scoring through a TorchScript trace of its network (evaluated only here:
    torch.jit is deprecated in torch 2.x, so the library does not offer it as a runtime)."""
    twin = model.with_inference("eager")
    assert model.network is not None
    example = torch.zeros(1, WINDOW, len(model.channels))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        twin._runtime = torch.jit.trace(model.network.eval(), example)
    return twin


def compiled(model: TorchAutoencoder) -> TorchAutoencoder:
    twin = model.with_inference("eager")
    assert model.network is not None
    twin._runtime = torch.compile(model.network.eval(), dynamic=True)
    return twin


def section_throughput(kinds: list[str], min_seconds: float, with_compile: bool) -> list[tuple]:
    runtimes = ["eager", "int8", "jit"] + (["compile"] if with_compile else [])
    print("\n== 2. Scoring throughput, windows/s (model.score, window 64) ==")
    header = " ".join(f"{r + ' b' + str(b):>12}" for b in BATCHES for r in runtimes)
    print(f"{'kind':6} {'ch':>2} {header}")
    results = []
    for kind in kinds:
        for channels in CHANNELS:
            model = quick_model(kind, channels)
            variants = {
                "eager": model,
                "int8": model.with_inference("int8"),
                "jit": traced(model),
            }
            if with_compile:
                variants["compile"] = compiled(model)
            data = windows(noisy_sines(8 * 512 + WINDOW, channels, seed=2), 512)
            cells = []
            for batch in BATCHES:
                for name in runtimes:
                    r = rate(variants[name].score, data[:batch], min_seconds)
                    results.append((r, kind, channels, batch, name))
                    cells.append(f"{r:12,.0f}")
            print(f"{kind:6} {channels:2d} {' '.join(cells)}")
    return results


def section_epoch(kinds: list[str]) -> None:
    print("\n== 3. Training: seconds for one epoch on 10,000 windows (defaults, window 64) ==")
    print(f"{'kind':6} {'1 ch':>7} {'8 ch':>7}")
    for kind in kinds:
        cells = []
        for channels in CHANNELS:
            model = models.build(
                kind, channels=channel_names(channels), window=WINDOW, epochs=1,
                max_train_windows=10_000, validation_fraction=0.05, max_validation_windows=256,
            )  # fmt: skip
            report = model.fit(noisy_sines(10_700, channels), seed=0)
            assert report.train_windows == 10_000, report.train_windows
            seconds = report.seconds
            cells.append(f"{seconds:7.2f}")
        print(f"{kind:6} {' '.join(cells)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="lstm,dense,conv,vae")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--min-seconds", type=float, default=0.3, help="per throughput cell")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--skip", default="", help="sections to skip, e.g. 1,3")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    skip = set(args.skip.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    started = time.perf_counter()
    if "1" not in skip:
        section_default_fit(kinds)
    results = [] if "2" in skip else section_throughput(kinds, args.min_seconds, args.compile)
    if "3" not in skip:
        section_epoch(kinds)
    if results:
        print("\n== Fastest configuration per batch size ==")
        for batch in BATCHES:
            best = max(r for r in results if r[3] == batch)
            eager = next(
                r[0] for r in results
                if r[1:4] == best[1:4] and r[4] == "eager"
            )  # fmt: skip
            print(f"batch {batch:3d}: {best[1]} with {best[2]} channel(s), {best[4]}: "
                  f"{best[0]:,.0f} windows/s ({best[0] / eager:.2f}x eager)")  # fmt: skip
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
