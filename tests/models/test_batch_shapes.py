"""Models run their networks on a few batch sizes only, whatever the number of windows asked.

oneDNN caches a compiled primitive per input shape and keeps up to 1,024 of them: a daemon that
scored every batch size its polls produced grew by ~0.3-0.5 MB per size (measured: +300 MB over
500 sizes for the LSTM). The cache itself is torch's; what these tests pin is that the shapes
reaching the network are few, and that padding changes no window's result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from models.network import padded_batches

SIZES = range(1, 601)


@pytest.mark.parametrize("size", [512, 100, 20])
def test_padded_batches_keep_every_window_once_in_few_shapes(size: int) -> None:
    shapes: set[int] = set()
    for n in SIZES:
        x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1)
        seen = []
        for batch, real in padded_batches(x, size):
            assert real <= len(batch) <= size
            assert not batch[real:].any()  # the padding is zeros
            shapes.add(len(batch))
            seen.append(batch[:real])
        assert torch.equal(torch.cat(seen), x)
    # Powers of two up to 32, multiples of 32 up to the size, and the size itself.
    assert len(shapes) <= 6 + size // 32 + 1, sorted(shapes)


@pytest.mark.parametrize("kind", ["lstm", "conv"])
def test_a_model_meets_few_batch_shapes_and_scores_as_unpadded(kind: str) -> None:
    model = models.build(kind, channels=("a", "b"), window=16, latent_size=4, epochs=1)
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(300, 2)), seed=0)
    assert model.network is not None
    shapes: set[int] = set()
    model.network.register_forward_pre_hook(lambda _, args: shapes.add(args[0].shape[0]))
    windows = rng.normal(size=(300, 16, 2))
    alone = model.score(windows[:1]).window[0]
    for n in range(1, 300, 7):
        scores = model.score(windows[:n])
        assert scores.window.shape == (n,)
        assert scores.window[0] == pytest.approx(alone, rel=1e-5)
        reconstructed = model.reconstruct(windows[:n])
        assert reconstructed.shape == (n, 16, 2)
    assert len(shapes) <= 16, sorted(shapes)  # 43 sizes asked
    # Each window's score is its own: the same as when scored with every other window.
    whole = model.score(windows).window
    np.testing.assert_allclose(model.score(windows[:37]).window, whole[:37], rtol=1e-5)
