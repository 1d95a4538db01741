"""Sensor configuration: one dataclass, named presets, and JSON files of a user's own sensor."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import SuiteError

CFAS = ("mono", "rggb")


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
        bad = []
        if self.cfa not in CFAS:
            bad.append(f"cfa {self.cfa!r} (use one of {', '.join(CFAS)})")
        if not 1 <= self.adc_bits <= 16:
            bad.append(f"adc_bits {self.adc_bits} (use 1..16)")
        for name in ("pixel_pitch_um", "full_well_e", "conversion_gain_uv_per_e", "analog_gain", "adc_full_scale_uv",
                     "f_number", "lens_transmittance", "max_exposure_s", "wavelength_nm", "efficacy_lm_per_w"):
            if not getattr(self, name) > 0:
                bad.append(f"{name} {getattr(self, name)} (must be > 0)")
        if not 0 < self.quantum_efficiency <= 1:
            bad.append(f"quantum_efficiency {self.quantum_efficiency} (must be in (0, 1])")
        for name in ("read_noise_e", "dark_current_e_per_s", "dsnu_e", "prnu"):
            if getattr(self, name) < 0:
                bad.append(f"{name} {getattr(self, name)} (must be >= 0)")
        if not 0 <= self.black_level_fraction < 0.5:
            bad.append(f"black_level_fraction {self.black_level_fraction} (must be in [0, 0.5))")
        if len(self.channel_qe) != 3 or len(self.crosstalk) != 3 or any(len(r) != 3 for r in self.crosstalk):
            bad.append("channel_qe must have 3 entries and crosstalk 3 rows of 3")
        if bad:
            raise SuiteError(f"sensor {self.name!r}: bad " + "; ".join(bad))

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
    except json.JSONDecodeError as err:
        raise SuiteError(f"{path}: not JSON ({err})") from None
    known = {f.name for f in dataclasses.fields(SensorConfig)}
    if not isinstance(fields, dict) or set(fields) - known:
        extra = sorted(set(fields) - known) if isinstance(fields, dict) else "not an object"
        raise SuiteError(f"{path}: unknown sensor fields {extra}; known: {', '.join(sorted(known))}")
    for key in ("channel_qe", "crosstalk"):
        if key in fields:
            fields[key] = tuple(tuple(r) if isinstance(r, list) else r for r in fields[key])
    return SensorConfig(**{"name": path.stem, **fields})
