"""A camera: exposure program, sensor capture and the ISP configured for it.

The exposure program knows the scene illuminance (an ideal light meter): it exposes a white patch
to `target` of the full well, up to the sensor's longest exposure, keeps the configured analog gain,
and sets the ISP's digital gain (and white balance) so that white maps to linear 1.0. In dim light
the exposure saturates at its maximum and the digital gain amplifies the noise, as in a real camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import SuiteError
from hwsim.sensor import adc, pixel, scene
from hwsim.sensor.config import SensorConfig
from hwsim.sensor.isp import LINEAR_MAX, IspParams

AE_TARGET = 0.8


@dataclass(frozen=True)
class Exposure:
    lux: float
    exposure_s: float
    white_e: np.ndarray  # mean electrons of a white patch per channel (R, G, B; mono: one)


def white_response(cfg: SensorConfig) -> np.ndarray:
    """Response of each channel to a white patch, relative to the green (or mono) quantum efficiency."""
    return np.ones(1) if cfg.cfa == "mono" else scene.channel_response(cfg).sum(axis=1)


def exposure_program(cfg: SensorConfig, lux: float, target: float = AE_TARGET) -> Exposure:
    """Exposure time that puts the brightest channel's white at `target` x full well, capped."""
    if not (np.isfinite(lux) and lux > 0):
        raise SuiteError(f"illuminance {lux} lux: must be a finite number > 0 (--lux)")
    rel = white_response(cfg)
    per_second = cfg.quantum_efficiency * float(scene.mean_photons(1.0, lux, 1.0, cfg)) * rel
    t = min(cfg.max_exposure_s, target * cfg.full_well_e / per_second.max())
    return Exposure(lux=lux, exposure_s=t, white_e=per_second * t)


def isp_for(cfg: SensorConfig, exp: Exposure, demosaic: str = "mhc", out_shape: tuple[int, int] | None = None,
            gray: bool = False) -> IspParams:
    """ISP settings for this exposure: digital gain x white balance so each channel's white -> 65535,
    and the CCM that undoes the colour filters' crosstalk (rows of the inverse sum to 1)."""
    gains = LINEAR_MAX / (cfg.system_gain * exp.white_e)
    ccm = None
    if cfg.cfa != "mono":
        resp = scene.channel_response(cfg)
        ccm = np.linalg.inv(resp / resp.sum(axis=1, keepdims=True))
    return IspParams.build(cfg.cfa, cfg.black_level_dn, gains, ccm, demosaic=demosaic, out_shape=out_shape,
                           gray=gray)


def capture(image_u8: np.ndarray, exp: Exposure, cfg: SensorConfig, seed: int, frame: int = 0) -> np.ndarray:
    """Raw DN [..., H, W] of an 8-bit sRGB image [..., H, W(, 3)] seen as reflectance.

    The fixed pattern comes from `seed` alone; the temporal noise from (seed, frame).
    """
    response = scene.relative_response(scene.reflectance(image_u8), cfg)
    photons = scene.mean_photons(response, exp.lux, exp.exposure_s, cfg)
    fpn = pixel.FixedPattern.draw(cfg, photons.shape[-2:], seed)
    rng = np.random.default_rng([seed, pixel.TEMPORAL_STREAM, frame])
    return adc.digitize(pixel.expose(photons, exp.exposure_s, cfg, fpn, rng), cfg)
