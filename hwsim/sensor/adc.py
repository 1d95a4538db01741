"""Analog gain and the N-bit ADC: electrons -> digital numbers with a black level, clamped."""

from __future__ import annotations

import numpy as np

from hwsim.sensor.config import SensorConfig


def digitize(electrons: np.ndarray, cfg: SensorConfig) -> np.ndarray:
    """DN = clamp(floor(K e + black + 1/2), 0, 2^N - 1) with K = conversion gain x analog gain / LSB.

    Returns int64 (an N-bit value per pixel). The ADC rounds to the nearest code; its
    quantization noise is 1/12 DN^2.
    """
    dn = np.floor(electrons * cfg.system_gain + cfg.black_level_dn + 0.5)
    return np.clip(dn, 0, cfg.dn_max).astype(np.int64)
