"""Pixel and readout in electrons: photon shot noise, dark current and its shot noise, PRNU, DSNU,
full-well clipping and read noise (the EMVA 1288 linear model; ISETCam's noise chain)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsim.sensor.config import SensorConfig

# Independent random streams of one seed: the sensor's fixed pattern and each frame's temporal noise.
FIXED_PATTERN_STREAM, TEMPORAL_STREAM = 0, 1


@dataclass(frozen=True)
class FixedPattern:
    """The sensor's own spatial non-uniformities: the same in every frame of one sensor (seed)."""

    gain: np.ndarray  # PRNU: 1 + prnu * N(0, 1) per pixel
    offset_e: np.ndarray  # DSNU: dsnu_e * N(0, 1) per pixel, electrons

    @classmethod
    def draw(cls, cfg: SensorConfig, shape: tuple[int, int], seed: int) -> FixedPattern:
        rng = np.random.default_rng([seed, FIXED_PATTERN_STREAM])
        return cls(gain=1.0 + cfg.prnu * rng.standard_normal(shape), offset_e=cfg.dsnu_e * rng.standard_normal(shape))


def expose(mean_photons: np.ndarray, exposure_s: float, cfg: SensorConfig, fpn: FixedPattern,
           rng: np.random.Generator) -> np.ndarray:
    """Signal at the sense node in electrons (float, read noise included) for one exposure.

    Photo-electrons (quantum efficiency x PRNU) and dark-current electrons are one Poisson draw
    (photon and dark shot noise), clipped at the full well; then the DSNU offset and Gaussian read
    noise are added.
    """
    mean_e = cfg.quantum_efficiency * mean_photons * fpn.gain + cfg.dark_current_e_per_s * exposure_s
    well = np.minimum(rng.poisson(np.maximum(mean_e, 0.0)), cfg.full_well_e)
    return well + fpn.offset_e + cfg.read_noise_e * rng.standard_normal(well.shape)
