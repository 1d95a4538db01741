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

The series runs up to `overexpose` x the *effective* saturation: the smaller of the full well and the
ADC's top (2^N - 1 - black level DN) in electrons, so a sensor whose ADC clips first still gets its
unsaturated steps, and the plateau is compared against whichever limits. `check` refuses, before any
frame is simulated, what cannot be measured; `caveats` names the results that are biased (dark noise
below 0.5 DN: quantization dominates; a black level that clips the dark frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.errors import SuiteError
from hwsim.sensor import adc, pixel
from hwsim.sensor.config import SensorConfig

LINEAR_RANGE = 0.7  # fit K and the quantum efficiency below this fraction of saturation (EMVA 1288)
QUANTIZATION_VAR_DN2 = 1 / 12
# EMVA 1288 R4.0: below this temporal dark noise the ADC's quantization hides the dark noise.
MIN_DARK_NOISE_DN = 0.5
# What a measurement needs: frame side and number of exposure steps (arguments), a saturation of at least
# MIN_SIGNAL_DN above black, and MIN_FIT_POINTS steps in the linear range for the fits.
MIN_SIDE, MAX_SIDE = 16, 2048
MIN_STEPS, MAX_STEPS = 8, 2000
MIN_SIGNAL_DN = 16
MIN_FIT_POINTS = 3
# The temporal noise at the top of the linear range must reach this many DN, or the ADC's steps hide the
# photon transfer: at 1.5 DN the gain is about 5 % off (8-bit mono-3um, 1.78 DN: +3.4 %; 6-bit, 0.45 DN: +64 %).
MIN_LINEAR_NOISE_DN = 1.5
# A dark frame whose pixels sit at code 0 in more than this fraction is clipped by a too low black level.
MAX_DARK_CLIPPED = 0.01


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
    dark_clipped_fraction: float = 0.0  # of dark-frame pixels at code 0, the largest over the series
    fit_points: int = 0  # steps in the linear range (the K and QE fits)

    def to_dict(self) -> dict:
        return asdict(self)


def adc_top_e(cfg: SensorConfig) -> float:
    """The signal, in electrons above black, at which the ADC reaches its top code 2^N - 1."""
    return (cfg.dn_max - cfg.black_level_dn) / cfg.system_gain


def saturation(cfg: SensorConfig) -> tuple[float, str]:
    """The effective saturation in electrons and what sets it: "full well" or "ADC" (whichever is smaller)."""
    top = adc_top_e(cfg)
    return (cfg.full_well_e, "full well") if cfg.full_well_e <= top else (top, "ADC")


def expected(cfg: SensorConfig, exposure_s: float) -> dict[str, float]:
    """What the configuration says the measurement should find (dark noise at `exposure_s`; the plateau at
    the effective saturation, the ADC's top when it clips before the full well)."""
    return {"system_gain": cfg.system_gain, "quantum_efficiency": cfg.quantum_efficiency,
            "dark_noise_e": float(np.sqrt(cfg.read_noise_e**2 + cfg.dark_current_e_per_s * exposure_s)),
            "dark_current_e_per_s": cfg.dark_current_e_per_s, "full_well_e": saturation(cfg)[0]}


def check(cfg: SensorConfig, shape: tuple[int, int], steps: int) -> None:
    """Raise SuiteError, naming the input and the fix, for a measurement that cannot succeed: checked
    before any frame is simulated."""
    side = min(shape)
    if not MIN_SIDE <= side <= MAX_SIDE or not MIN_SIDE <= max(shape) <= MAX_SIDE:
        raise SuiteError(f"--size {side if side < MIN_SIDE else max(shape)}: the frame side must be "
                         f"{MIN_SIDE}..{MAX_SIDE} pixels (the variances need many pixels; 256 is the default)")
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise SuiteError(f"--steps {steps}: the exposure series needs {MIN_STEPS}..{MAX_STEPS} steps (the fits "
                         f"need at least {MIN_FIT_POINTS} below 70 % of saturation; 80 is the default)")
    sat_e, limit = saturation(cfg)
    sat_dn = sat_e * cfg.system_gain
    if sat_dn < MIN_SIGNAL_DN:
        if limit == "ADC":
            why = (f"the {cfg.adc_bits}-bit ADC spans only {cfg.dn_max - cfg.black_level_dn} DN above its black "
                   f"level; raise --adc-bits")
        else:
            why = (f"its full well of {cfg.full_well_e:g} e- is {sat_dn:.3g} DN at a system gain of "
                   f"{cfg.system_gain:.4g} DN/e-; raise full_well_e, --analog-gain (or the conversion gain) "
                   "or --adc-bits")
        raise SuiteError(f"sensor {cfg.name!r} saturates {sat_dn:.3g} DN above black, too few for a photon-transfer "
                         f"measurement (needs >= {MIN_SIGNAL_DN} DN): {why}")
    noise_dn = cfg.system_gain * float(np.sqrt(LINEAR_RANGE * sat_e + cfg.read_noise_e**2))
    if noise_dn < MIN_LINEAR_NOISE_DN:
        raise SuiteError(f"sensor {cfg.name!r}: its temporal noise is only {noise_dn:.2f} DN at {LINEAR_RANGE:.0%} of "
                         f"saturation (system gain {cfg.system_gain:.4g} DN/e-), below the {MIN_LINEAR_NOISE_DN} DN "
                         "a photon-transfer fit needs: the ADC's steps hide it and the gain would come out more "
                         "than 5 % off; raise --analog-gain or --adc-bits")


def _frame_pair(mu_p: float, t: float, cfg: SensorConfig, fpn: pixel.FixedPattern, rng: np.random.Generator
                ) -> tuple[float, float, float]:
    """Mean, temporal variance and the fraction of pixels at code 0 of two frames."""
    a, b = (adc.digitize(pixel.expose(np.full(fpn.gain.shape, mu_p), t, cfg, fpn, rng), cfg).astype(np.float64)
            for _ in range(2))
    return float((a + b).mean() / 2), float((a - b).var() / 2), float(((a == 0).mean() + (b == 0).mean()) / 2)


def photon_transfer(cfg: SensorConfig, shape: tuple[int, int] = (256, 256), steps: int = 80,
                    overexpose: float = 1.3, seed: int = 0) -> PhotonTransfer:
    """Measure the sensor at `steps` exposure times, from a short one to `overexpose` x its effective
    saturation (the full well or the ADC's top, whichever is smaller). Raises SuiteError for what cannot
    be measured (`check`) and for a series whose fits come out empty or not finite: never a NaN."""
    check(cfg, shape, steps)
    fpn = pixel.FixedPattern.draw(cfg, shape, seed)
    rng = np.random.default_rng([seed, pixel.TEMPORAL_STREAM])
    t_max = cfg.max_exposure_s
    sat_e = saturation(cfg)[0]
    rate = overexpose * sat_e / (cfg.quantum_efficiency * t_max)  # photons per second
    times = np.linspace(t_max / steps, t_max, steps)
    rows = []
    for t in times:
        mu_y, var_y, _ = _frame_pair(rate * t, t, cfg, fpn, rng)
        mu_d, var_d, clipped = _frame_pair(0.0, t, cfg, fpn, rng)
        rows.append((rate * t, mu_y, mu_d, var_y, var_d, clipped))
    mu_p, mu_y, mu_d, var_y, var_d, clipped = (np.array(c) for c in zip(*rows, strict=True))
    sat = int(np.argmax(var_y))
    signal, noise = mu_y - mu_d, var_y - var_d
    lin = (signal > 0) & (signal <= LINEAR_RANGE * signal[sat])
    if lin.sum() < MIN_FIT_POINTS:
        raise SuiteError(f"sensor {cfg.name!r}: only {int(lin.sum())} of the {steps} exposure steps lie below "
                         f"{LINEAR_RANGE:.0%} of saturation ({MIN_FIT_POINTS} needed for the fits); raise --steps")
    k = float(np.dot(signal[lin], noise[lin]) / np.dot(signal[lin], signal[lin]))  # line through the origin
    if not (np.isfinite(k) and k > 0):
        raise SuiteError(f"sensor {cfg.name!r}: the photon-transfer fit found no temporal noise (K = {k:.3g}); "
                         "the ADC's steps are too coarse for it: raise --analog-gain or --adc-bits")
    eta = float(np.dot(mu_p[lin], signal[lin]) / np.dot(mu_p[lin], mu_p[lin])) / k
    dark_e2 = (var_d[0] - QUANTIZATION_VAR_DN2) / k**2
    ptc = PhotonTransfer(exposure_s=times.tolist(), mu_p=mu_p.tolist(), mu_y=mu_y.tolist(), mu_y_dark=mu_d.tolist(),
                         var_y=var_y.tolist(), var_y_dark=var_d.tolist(), system_gain=k, quantum_efficiency=eta,
                         dark_noise_e=float(np.sqrt(max(dark_e2, 0.0))),
                         dark_current_e_per_s=float(np.polyfit(times, mu_d, 1)[0]) / k,
                         saturation_e=float(signal[sat] / k), full_well_e=float(signal.max() / k),
                         dark_clipped_fraction=float(clipped.max()), fit_points=int(lin.sum()))
    bad = [k for k, v in ptc.to_dict().items() if not np.all(np.isfinite(v))]
    if bad:
        raise SuiteError(f"sensor {cfg.name!r}: the measurement of {', '.join(bad)} is not finite; check the "
                         "sensor's fields (gain, full well, ADC bits) against docs/sensor.md")
    return ptc


def caveats(cfg: SensorConfig, ptc: PhotonTransfer) -> dict[str, str]:
    """The measured characteristics that this sensor biases, each with the reason and the fix (empty: none)."""
    out: dict[str, str] = {}
    dark_dn = float(np.sqrt(ptc.var_y_dark[0]))
    if dark_dn < MIN_DARK_NOISE_DN:
        why = (f"the dark noise is {dark_dn:.2f} DN, below the {MIN_DARK_NOISE_DN} DN EMVA 1288 needs: quantization "
               "noise dominates")
        fix = "raise --analog-gain or --adc-bits"
        for key in ("dark_noise_e", "dark_current_e_per_s"):
            out[key] = f"not measurable: {why}; {fix}"
        for key in ("system_gain", "quantum_efficiency", "full_well_e"):
            out[key] = f"may be biased (up to about 5 %): {why}; {fix}"
    if ptc.dark_clipped_fraction > MAX_DARK_CLIPPED:
        sigma_dn = cfg.system_gain * float(np.sqrt(cfg.read_noise_e**2 + cfg.dsnu_e**2
                                                   + cfg.dark_current_e_per_s * cfg.max_exposure_s))
        need = min(0.49, max(4 * sigma_dn + 1, 1) / (1 << cfg.adc_bits))
        why = (f"the black level ({cfg.black_level_dn} DN) is below the dark signal's spread ({sigma_dn:.2f} DN "
               f"rms): {100 * ptc.dark_clipped_fraction:.1f} % of dark pixels clip at code 0")
        fix = f"raise black_level_fraction to at least {need:.3g} (4 sigma of the dark signal)"
        for key in ("dark_noise_e", "dark_current_e_per_s", "system_gain", "quantum_efficiency", "full_well_e"):
            out[key] = "; ".join(x for x in (out.get(key), f"biased: {why}; {fix}") if x)
    return out
