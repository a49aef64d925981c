"""Shared fixtures for the model tests: a noisy multi-channel sine and windows with faults.

Every model is trained on the normal series and must score spiked, level-shifted and frozen
windows above every normal window of a later, unseen stretch of the same process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.signals import inject, sine_series, windows_of

# Two shared cores: one torch thread per test process keeps training fast and predictable.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def train_series() -> np.ndarray:
    return sine_series(2000, seed=1)


@pytest.fixture(scope="session")
def normal_windows() -> np.ndarray:
    """Windows of a later stretch of the same process, never seen in training."""
    return windows_of(sine_series(400, start=5000, seed=2))


@pytest.fixture(scope="session")
def faulty_windows(normal_windows: np.ndarray) -> dict[str, np.ndarray]:
    return inject(normal_windows[::2])
