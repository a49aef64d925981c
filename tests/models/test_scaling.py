"""Per-channel scalers against NumPy oracles, their fall-backs and their JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.scaling import MinMaxScaler, RobustScaler, scaler_from_dict
from models.series import sliding_windows


def test_robust_scaler_uses_median_and_iqr_per_channel() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(10, 2, 1000), rng.exponential(3, 1000)])
    x[::50, 0] = 1e6  # outliers must not move a robust scale
    scaler = RobustScaler().fit(x)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    np.testing.assert_allclose(scaler.offset, np.median(x, axis=0))
    np.testing.assert_allclose(scaler.scale, q75 - q25)
    z = scaler.transform(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose(np.median(z, axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(scaler.inverse_transform(z), x, rtol=1e-6, atol=1e-5)  # float32


def test_robust_scaler_falls_back_to_std_then_one() -> None:
    mostly_constant = np.r_[np.full(95, 5.0), np.arange(5.0)]  # IQR 0, std > 0
    constant = np.full(100, 7.0)
    scaler = RobustScaler().fit(np.column_stack([mostly_constant, constant]))
    assert scaler.scale[0] == pytest.approx(mostly_constant.std())
    assert scaler.scale[1] == 1.0
    assert np.isfinite(scaler.transform(np.array([[1.0, 2.0]]))).all()


def test_minmax_scaler_maps_training_range_to_unit_interval() -> None:
    x = np.column_stack([np.linspace(-3, 5, 50), np.full(50, 2.0)])
    scaler = MinMaxScaler().fit(x)
    z = scaler.transform(x)
    np.testing.assert_allclose(z[:, 0].min(), 0) and np.testing.assert_allclose(z[:, 0].max(), 1)
    assert scaler.scale[1] == 1.0


@pytest.mark.parametrize("cls", [RobustScaler, MinMaxScaler])
def test_scaler_round_trips_through_json(cls: type[RobustScaler] | type[MinMaxScaler]) -> None:
    x = np.random.default_rng(1).normal(size=(200, 3)) * [1, 10, 100]
    scaler = cls().fit(x)
    again = scaler_from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert type(again) is cls
    np.testing.assert_array_equal(again.transform(x), scaler.transform(x))


def test_malformed_scaler_is_rejected() -> None:
    with pytest.raises(ValueError, match="malformed"):
        scaler_from_dict({"kind": "robust", "offset": [0.0], "scale": [0.0]})
    with pytest.raises(ValueError, match="malformed"):
        scaler_from_dict({"kind": "zscore", "offset": [0.0], "scale": [1.0]})
    with pytest.raises(RuntimeError, match="not fitted"):
        RobustScaler().transform(np.zeros((1, 1)))


def test_sliding_windows_match_a_loop() -> None:
    x = np.arange(30, dtype=float).reshape(15, 2)
    w = sliding_windows(x, 4, stride=3)
    expected = np.stack([x[i : i + 4] for i in range(0, 15 - 4 + 1, 3)])
    np.testing.assert_array_equal(w, expected)
    assert sliding_windows(x[:3], 4).shape == (0, 4, 2)
