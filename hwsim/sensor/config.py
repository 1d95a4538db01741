"""Sensor configuration: one dataclass, named presets, and JSON files of a user's own sensor."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from core.errors import SuiteError

CFAS = ("mono", "rggb")
# PRNU is a relative rms: real sensors stay below a few percent. Above this, the gain 1 + prnu N(0, 1) is
# negative in more than one pixel in 3 million: clipped to 0, the sensor's mean response is no longer its QE
# (prnu 3.0 measured a QE 65 % off).
MAX_PRNU = 0.2
MIN_FULL_WELL_E = 1.0
# Fields that must be numbers > 0 (and finite), >= 0, or in a range: (low, high, low inclusive, high inclusive).
POSITIVE = ("pixel_pitch_um", "conversion_gain_uv_per_e", "analog_gain", "adc_full_scale_uv", "f_number",
            "max_exposure_s", "wavelength_nm", "efficacy_lm_per_w")
NON_NEGATIVE = ("read_noise_e", "dark_current_e_per_s", "dsnu_e")
RANGES = {"quantum_efficiency": (0.0, 1.0, False, True), "lens_transmittance": (0.0, 1.0, False, True),
          "prnu": (0.0, MAX_PRNU, True, True), "black_level_fraction": (0.0, 0.5, True, False)}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_problem(name: str, v) -> str | None:
    """Why `v` is not a finite real number (None when it is)."""
    if isinstance(v, str):
        return f"{name} {v!r} (a string; write the number without quotes)"
    if not _is_number(v):
        return f"{name} {v!r} (must be a number)"
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        return f"{name} {v} (must be a finite number)"
    return None


def _range_text(lo: float, hi: float, lo_in: bool, hi_in: bool) -> str:
    return f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def _problems(cfg: SensorConfig) -> list[str]:
    """Every field of `cfg` that is of the wrong type, not finite or out of its range, as text naming it."""
    bad = []
    if not isinstance(cfg.name, str) or not cfg.name:
        bad.append(f"name {cfg.name!r} (must be a non-empty string)")
    if not isinstance(cfg.cfa, str) or cfg.cfa not in CFAS:
        bad.append(f"cfa {cfg.cfa!r} (use one of {', '.join(CFAS)})")
    bits = cfg.adc_bits
    if isinstance(bits, str) or not _is_number(bits) or _number_problem("", bits) or bits != int(bits):
        bad.append(f"adc_bits {bits!r} (must be an integer in 1..16"
                   + (", written without quotes)" if isinstance(bits, str) else ")"))
    elif not 1 <= bits <= 16:
        bad.append(f"adc_bits {bits} (use 1..16)")
    for name in (*POSITIVE, "full_well_e", *NON_NEGATIVE, *RANGES):
        v = getattr(cfg, name)
        problem = _number_problem(name, v)
        if problem:
            bad.append(problem)
        elif name in POSITIVE and not v > 0:
            bad.append(f"{name} {v} (must be > 0)")
        elif name == "full_well_e" and not v >= MIN_FULL_WELL_E:
            bad.append(f"full_well_e {v} (must be >= {MIN_FULL_WELL_E:g} e-)")
        elif name in NON_NEGATIVE and not v >= 0:
            bad.append(f"{name} {v} (must be >= 0)")
        elif name in RANGES:
            lo, hi, lo_in, hi_in = RANGES[name]
            if not ((lo <= v if lo_in else lo < v) and (v <= hi if hi_in else v < hi)):
                why = (f"; a relative rms, real sensors are below 0.05, and above {MAX_PRNU:g} pixel gains go "
                       "negative" if name == "prnu" else "")
                bad.append(f"{name} {v} (must be in {_range_text(lo, hi, lo_in, hi_in)}{why})")
    bad.extend(_filter_problems(cfg))
    return bad


def _filter_problems(cfg: SensorConfig) -> list[str]:
    """channel_qe: 3 numbers > 0; crosstalk: 3 rows of 3 numbers >= 0, an invertible matrix (the ISP's CCM)."""
    qe, xt = cfg.channel_qe, cfg.crosstalk
    if not isinstance(qe, (tuple, list)) or len(qe) != 3 or any(_number_problem("", v) or not v > 0 for v in qe):
        return [f"channel_qe {qe!r} (must be 3 finite numbers > 0, relative to green)"]
    if (not isinstance(xt, (tuple, list)) or len(xt) != 3
            or any(not isinstance(r, (tuple, list)) or len(r) != 3 for r in xt)
            or any(_number_problem("", v) or not v >= 0 for r in xt for v in r)):
        return [f"crosstalk {xt!r} (must be 3 rows of 3 finite numbers >= 0)"]
    (a, b, c), (d, e, f), (g, h, i) = xt
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    scale = max(abs(v) for r in xt for v in r) ** 3
    if abs(det) <= 1e-9 * scale:
        return [f"crosstalk {xt!r} (singular: the ISP's colour correction inverts it; make the rows independent)"]
    return []


@dataclass(frozen=True)
class SensorConfig:
    """A CMOS sensor, its lens and its exposure limits, in the units a datasheet uses."""

    name: str = "mono-3um"
    cfa: str = "mono"  # "mono" or Bayer "rggb"
    pixel_pitch_um: float = 3.0
    quantum_efficiency: float = 0.6  # of the green (or only) channel
    # Per-channel quantum efficiency relative to green and the colour filters' crosstalk: row c is
    # what the filter of channel c passes of the scene's linear (R, G, B). Used only with a CFA.
    channel_qe: tuple[float, float, float] = (0.8, 1.0, 0.7)
    crosstalk: tuple[tuple[float, ...], ...] = ((0.80, 0.15, 0.05), (0.10, 0.80, 0.10), (0.05, 0.20, 0.75))
    full_well_e: float = 10000.0
    conversion_gain_uv_per_e: float = 50.0
    read_noise_e: float = 2.5  # temporal, rms
    dark_current_e_per_s: float = 5.0
    dsnu_e: float = 1.0  # spatial rms of the dark signal (fixed pattern)
    prnu: float = 0.01  # spatial relative rms of the photo response (fixed pattern)
    analog_gain: float = 1.0
    adc_bits: int = 10
    adc_full_scale_uv: float = 600000.0
    black_level_fraction: float = 1 / 16  # black level as a fraction of the ADC range (64 DN at 10 bits)
    f_number: float = 2.0
    lens_transmittance: float = 0.9
    max_exposure_s: float = 1 / 30
    # Photometry -> photons: a lux at this equivalent wavelength and luminous efficacy (683 lm/W at
    # 555 nm is the monochromatic bound; broadband white light gives about 2 to 3x more photons per lux).
    wavelength_nm: float = 555.0
    efficacy_lm_per_w: float = 683.0

    def __post_init__(self) -> None:
        bad = _problems(self)
        if bad:
            raise SuiteError(f"sensor {self.name!r}: bad " + "; ".join(bad))
        if isinstance(self.adc_bits, float):  # 12.0 from a JSON writer: the integer it means
            object.__setattr__(self, "adc_bits", int(self.adc_bits))

    @property
    def system_gain(self) -> float:
        """K in DN per electron: conversion gain x analog gain / the ADC's LSB (EMVA 1288's K)."""
        return self.conversion_gain_uv_per_e * self.analog_gain * (1 << self.adc_bits) / self.adc_full_scale_uv

    @property
    def black_level_dn(self) -> int:
        return round(self.black_level_fraction * (1 << self.adc_bits))

    @property
    def dn_max(self) -> int:
        return (1 << self.adc_bits) - 1

    def replace(self, **changes) -> SensorConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, SensorConfig] = {
    # A 3 um monochrome global-shutter-like pixel: the study's sensor.
    "mono-3um": SensorConfig(),
    # A 1.4 um Bayer phone pixel: smaller well, lower read noise, more conversion gain.
    "rggb-1.4um": SensorConfig(name="rggb-1.4um", cfa="rggb", pixel_pitch_um=1.4, quantum_efficiency=0.7,
                               full_well_e=6000.0, conversion_gain_uv_per_e=80.0, read_noise_e=1.8,
                               dark_current_e_per_s=2.0, dsnu_e=0.5, prnu=0.006, adc_full_scale_uv=600000.0),
}


def load_sensor(spec: str) -> SensorConfig:
    """A preset name or a JSON file of SensorConfig fields (missing fields keep the defaults)."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise SuiteError(f"sensor {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        fields = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"{path}: cannot read the sensor file ({err}); give a UTF-8 JSON file") from None
    except json.JSONDecodeError as err:
        raise SuiteError(f"{path}: not JSON ({err}); write an object of SensorConfig fields") from None
    known = {f.name for f in dataclasses.fields(SensorConfig)}
    if not isinstance(fields, dict):
        raise SuiteError(f"{path}: a sensor file must hold a JSON object of SensorConfig fields, not "
                         f"{type(fields).__name__}; known fields: {', '.join(sorted(known))}")
    if set(fields) - known:
        raise SuiteError(f"{path}: unknown sensor fields {sorted(set(fields) - known)}; "
                         f"known: {', '.join(sorted(known))}")
    for key in ("channel_qe", "crosstalk"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(tuple(r) if isinstance(r, list) else r for r in fields[key])
    try:
        return SensorConfig(**{"name": path.stem, **fields})
    except SuiteError as err:
        raise SuiteError(f"{path}: {err}; fix the field in the file") from None
