"""Scene -> mean photo-electrons per pixel: sRGB linearization and the camera equation.

A Lambertian scene of linear reflectance R lit by E_v lux has luminance L = E_v R / pi. A lens of
f-number N and transmittance T images it (on axis, distant object) to a sensor-plane illuminance
E_s = pi L T / (4 N^2) = E_v R T / (4 N^2). A pixel of pitch p collects, in exposure t,
mu_p = E_s p^2 t * P photons, with P = lambda / (h c K_v) photons per lux second square metre
at the equivalent wavelength lambda and luminous efficacy K_v; mu_e = eta mu_p electrons.
"""

from __future__ import annotations

import numpy as np

from hwsim.sensor.config import SensorConfig

PLANCK_J_S = 6.62607015e-34
LIGHT_M_PER_S = 299792458.0
# Linear-light luminance weights of the sRGB/Rec.709 primaries (a colour scene seen by a mono sensor).
LUMINANCE = np.array([0.2126, 0.7152, 0.0722])


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB encoding in [0, 1] (the inverse of srgb_to_linear)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def reflectance(image_u8: np.ndarray) -> np.ndarray:
    """An 8-bit sRGB (or grayscale) image read as linear reflectance in [0, 1], same shape."""
    return srgb_to_linear(np.asarray(image_u8, dtype=np.float64) / 255.0)


def photons_per_lux_second(cfg: SensorConfig) -> float:
    """Photons per pixel per lux second of sensor-plane illuminance: p^2 lambda / (h c K_v)."""
    area_m2 = (cfg.pixel_pitch_um * 1e-6) ** 2
    photon_j = PLANCK_J_S * LIGHT_M_PER_S / (cfg.wavelength_nm * 1e-9)
    return area_m2 / (cfg.efficacy_lm_per_w * photon_j)


def sensor_illuminance(lux: float, cfg: SensorConfig) -> float:
    """Sensor-plane illuminance (lux) behind the lens for a white (R = 1) Lambertian patch."""
    return lux * cfg.lens_transmittance / (4.0 * cfg.f_number**2)


def mean_photons(refl: np.ndarray, lux: float, exposure_s: float, cfg: SensorConfig) -> np.ndarray:
    """Mean photons per pixel (before the quantum efficiency) for linear reflectance `refl`."""
    return refl * (sensor_illuminance(lux, cfg) * exposure_s * photons_per_lux_second(cfg))


def channel_response(cfg: SensorConfig) -> np.ndarray:
    """3x3: row c = relative quantum efficiency of channel c's filter to the scene's linear R, G, B."""
    return np.asarray(cfg.channel_qe)[:, None] * np.asarray(cfg.crosstalk, dtype=np.float64)


def cfa_index(shape: tuple[int, int]) -> np.ndarray:
    """Channel (0 R, 1 G, 2 B) of each pixel of an RGGB mosaic of `shape` (H, W)."""
    row = np.arange(shape[0])[:, None] % 2
    col = np.arange(shape[1])[None, :] % 2
    return np.where(row == col, 2 * row, 1)  # (0,0) R, (1,1) B, the rest G


def relative_response(refl: np.ndarray, cfg: SensorConfig) -> np.ndarray:
    """Per-pixel response relative to a white patch on the green channel, [..., H, W].

    Mono: the luminance of a colour scene, or the gray reflectance. RGGB: each pixel keeps its
    filter's weighted sum of the scene's linear R, G, B (a gray scene is replicated to R = G = B).
    """
    refl = np.asarray(refl, dtype=np.float64)
    rgb = refl.ndim >= 3 and refl.shape[-1] == 3
    if cfg.cfa == "mono":
        return refl @ LUMINANCE if rgb else refl
    if not rgb:
        refl = np.repeat(refl[..., None], 3, axis=-1)
    per_channel = refl @ channel_response(cfg).T  # [..., H, W, 3]
    idx = cfa_index(per_channel.shape[-3:-1])
    return np.take_along_axis(per_channel, np.broadcast_to(idx[..., None], (*per_channel.shape[:-1], 1)),
                              axis=-1)[..., 0]
