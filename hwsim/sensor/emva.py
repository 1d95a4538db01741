"""EMVA 1288-style characterization of the simulated sensor: the photon-transfer method.

A uniform field of mu_p photons per pixel is exposed in two frames A, B (and two dark frames at the
same exposure time) for a series of exposure times. Per step: mu_y = mean(A + B) / 2 and the temporal
variance sigma_y^2 = var(A - B) / 2, which cancels the fixed pattern. Then (EMVA 1288 R4.0 linear):
  system gain K        slope of sigma_y^2 - sigma_y.dark^2 against mu_y - mu_y.dark, below 70 % of saturation
  quantum efficiency   slope of mu_y - mu_y.dark against mu_p, divided by K
  temporal dark noise  sigma_d = sqrt(sigma_y.dark^2 - 1/12) / K at the shortest exposure (electrons)
  dark current         slope of mu_y.dark / K against the exposure time
  saturation capacity  mu_e.sat = (mu_y - mu_y.dark) / K where sigma_y^2 peaks (EMVA's definition: some
                       pixels already clip there, so it sits a few shot-noise sigmas below the full well)
  full well            the plateau of (mu_y - mu_y.dark) / K once every pixel clips (this simulator's addition)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hwsim.sensor import adc, pixel
from hwsim.sensor.config import SensorConfig

LINEAR_RANGE = 0.7  # fit K and the quantum efficiency below this fraction of saturation (EMVA 1288)
QUANTIZATION_VAR_DN2 = 1 / 12
# EMVA 1288 R4.0: below this temporal dark noise the ADC's quantization hides the dark noise.
MIN_DARK_NOISE_DN = 0.5


@dataclass
class PhotonTransfer:
    """The measured curve and the characteristics recovered from it (EMVA 1288 symbols)."""

    exposure_s: list[float]
    mu_p: list[float]  # photons per pixel
    mu_y: list[float]  # DN
    mu_y_dark: list[float]
    var_y: list[float]  # DN^2, temporal
    var_y_dark: list[float]
    system_gain: float  # K, DN / e-
    quantum_efficiency: float
    dark_noise_e: float  # sigma_d at the shortest exposure
    dark_current_e_per_s: float
    saturation_e: float
    full_well_e: float

    def to_dict(self) -> dict:
        return asdict(self)


def expected(cfg: SensorConfig, exposure_s: float) -> dict[str, float]:
    """What the configuration says the measurement should find (dark noise at `exposure_s`)."""
    return {"system_gain": cfg.system_gain, "quantum_efficiency": cfg.quantum_efficiency,
            "dark_noise_e": float(np.sqrt(cfg.read_noise_e**2 + cfg.dark_current_e_per_s * exposure_s)),
            "dark_current_e_per_s": cfg.dark_current_e_per_s, "full_well_e": cfg.full_well_e}


def _frame_pair(mu_p: float, t: float, cfg: SensorConfig, fpn: pixel.FixedPattern, rng: np.random.Generator
                ) -> tuple[float, float]:
    a, b = (adc.digitize(pixel.expose(np.full(fpn.gain.shape, mu_p), t, cfg, fpn, rng), cfg).astype(np.float64)
            for _ in range(2))
    return float((a + b).mean() / 2), float((a - b).var() / 2)


def photon_transfer(cfg: SensorConfig, shape: tuple[int, int] = (256, 256), steps: int = 80,
                    overexpose: float = 1.3, seed: int = 0) -> PhotonTransfer:
    """Measure the sensor at `steps` exposure times, from a short one to `overexpose` x the full well."""
    fpn = pixel.FixedPattern.draw(cfg, shape, seed)
    rng = np.random.default_rng([seed, pixel.TEMPORAL_STREAM])
    t_max = cfg.max_exposure_s
    rate = overexpose * cfg.full_well_e / (cfg.quantum_efficiency * t_max)  # photons per second
    times = np.linspace(t_max / steps, t_max, steps)
    rows = []
    for t in times:
        mu_y, var_y = _frame_pair(rate * t, t, cfg, fpn, rng)
        mu_d, var_d = _frame_pair(0.0, t, cfg, fpn, rng)
        rows.append((rate * t, mu_y, mu_d, var_y, var_d))
    mu_p, mu_y, mu_d, var_y, var_d = (np.array(c) for c in zip(*rows, strict=True))
    sat = int(np.argmax(var_y))
    signal, noise = mu_y - mu_d, var_y - var_d
    lin = signal <= LINEAR_RANGE * signal[sat]
    k = float(np.dot(signal[lin], noise[lin]) / np.dot(signal[lin], signal[lin]))  # line through the origin
    eta = float(np.dot(mu_p[lin], signal[lin]) / np.dot(mu_p[lin], mu_p[lin])) / k
    dark_e2 = (var_d[0] - QUANTIZATION_VAR_DN2) / k**2
    return PhotonTransfer(exposure_s=times.tolist(), mu_p=mu_p.tolist(), mu_y=mu_y.tolist(), mu_y_dark=mu_d.tolist(),
                          var_y=var_y.tolist(), var_y_dark=var_d.tolist(), system_gain=k, quantum_efficiency=eta,
                          dark_noise_e=float(np.sqrt(max(dark_e2, 0.0))),
                          dark_current_e_per_s=float(np.polyfit(times, mu_d, 1)[0]) / k,
                          saturation_e=float(signal[sat] / k), full_well_e=float(signal.max() / k))
