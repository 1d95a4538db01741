"""The accelerator's configuration: one TOML file (or a preset name), validated on load.

Every field is checked (schema, then the relations between fields) so that a wrong file fails
at once with a message naming the file, the field and the fix, never deep inside a simulation.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from core.errors import SuiteError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
DATAFLOWS = ("weight_stationary", "output_stationary")
OVERFLOW_MODES = ("AP_SAT", "AP_WRAP")  # ap_fixed's names: saturate to the range, or wrap around
ROUNDING_MODES = ("AP_RND", "AP_RND_ZERO", "AP_RND_MIN_INF", "AP_RND_INF", "AP_RND_CONV", "AP_TRN", "AP_TRN_ZERO")
UNITS = ("lut", "layernorm", "softmax", "shift_av", "vector")
MAX_ACC_BITS = 48  # int64 simulation with headroom for a K-tile's sum


class ConfigError(SuiteError):
    """An accelerator configuration that cannot be simulated; the message names file and field."""


def _int(lo: int, hi: int | None = None) -> dict:
    return {"type": "integer", "minimum": lo, **({"maximum": hi} if hi is not None else {})}


_POS = {"type": "number", "exclusiveMinimum": 0}
_NONNEG = {"type": "number", "minimum": 0}


def _section(props: dict) -> dict:
    return {"type": "object", "required": list(props), "additionalProperties": False, "properties": props}


_UNIT = _section({"lanes": _int(1), "latency": _int(0), "pj_per_element": _NONNEG})
SCHEMA: dict[str, Any] = _section({
    "name": {"type": "string", "minLength": 1},
    "description": {"type": "string"},
    "clock_mhz": _POS,
    "array": _section({"rows": _int(1, 4096), "cols": _int(1, 4096), "dataflow": {"enum": list(DATAFLOWS)}}),
    "operands": _section({"weight_bits": _int(2, 16), "activation_bits": _int(2, 16)}),
    "accumulator": _section({"bits": _int(8, MAX_ACC_BITS), "overflow": {"enum": list(OVERFLOW_MODES)}}),
    "requant": _section({"rounding": {"enum": list(ROUNDING_MODES)}}),
    "memory": _section({"ifmap_sram_kib": _POS, "filter_sram_kib": _POS, "ofmap_sram_kib": _POS,
                        "dram_bytes_per_cycle": _POS}),
    "energy": _section({"sram_pj_per_byte": _NONNEG, "dram_pj_per_byte": _NONNEG,
                        "mac_pj": {"type": "object", "minProperties": 1,
                                   "propertyNames": {"pattern": "^[0-9]+$"},
                                   "additionalProperties": _NONNEG}}),
    "units": _section({u: _UNIT for u in UNITS}),
})


@dataclass(frozen=True)
class Unit:
    """A nonlinear or vector unit: `lanes` elements per cycle after `latency` cycles per call."""

    lanes: int
    latency: int
    pj_per_element: float


@dataclass(frozen=True)
class AccelConfig:
    name: str
    description: str
    clock_mhz: float
    rows: int
    cols: int
    dataflow: str
    weight_bits: int
    activation_bits: int
    acc_bits: int
    overflow: str
    rounding: str
    ifmap_sram_bytes: int
    filter_sram_bytes: int
    ofmap_sram_bytes: int
    dram_bytes_per_cycle: float
    sram_pj_per_byte: float
    dram_pj_per_byte: float
    mac_pj: dict[int, float]  # operand width -> pJ per MAC (the smallest entry >= the layer's width is used)
    units: dict[str, Unit]
    source: str = ""

    def mac_energy(self, width: int) -> float:
        """pJ of one MAC whose operands need `width` bits: the multiplier's smallest mode that holds them."""
        return self.mac_pj[min(w for w in self.mac_pj if w >= width)]

    def replace(self, **changes: Any) -> AccelConfig:
        """A copy with fields changed (e.g. acc_bits for a study), checked like a file."""
        new = dataclasses.replace(self, **changes)
        _check_relations(new, f"{self.source} with {changes}")
        return new

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mac_pj"] = {str(k): v for k, v in self.mac_pj.items()}
        return d


def _check_relations(cfg: AccelConfig, where: str) -> None:
    if not MAX_ACC_BITS >= cfg.acc_bits >= 8:
        raise ConfigError(f"{where}: accumulator.bits = {cfg.acc_bits} is outside 8..{MAX_ACC_BITS}")
    if cfg.overflow not in OVERFLOW_MODES:
        raise ConfigError(f"{where}: accumulator.overflow = {cfg.overflow!r}; use one of {', '.join(OVERFLOW_MODES)}")
    if cfg.rounding not in ROUNDING_MODES:
        raise ConfigError(f"{where}: requant.rounding = {cfg.rounding!r}; use one of {', '.join(ROUNDING_MODES)}")
    widest = max(cfg.weight_bits, cfg.activation_bits)
    if max(cfg.mac_pj) < widest:
        raise ConfigError(f"{where}: energy.mac_pj has no entry for {widest}-bit operands (largest: "
                          f"{max(cfg.mac_pj)}); add a key >= {widest}")


def from_dict(data: dict[str, Any], where: str) -> AccelConfig:
    """Validate a parsed configuration and build it; ConfigError names the first bad field."""
    try:
        jsonschema.validate(data, SCHEMA)
    except jsonschema.ValidationError as err:
        field = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"{where}: field {field}: {err.message} (see hwsim/accelerator/presets/*.toml "
                          "for complete examples)") from None
    a, mem, en = data["array"], data["memory"], data["energy"]
    cfg = AccelConfig(
        name=data["name"], description=data.get("description", ""), clock_mhz=float(data["clock_mhz"]),
        rows=a["rows"], cols=a["cols"], dataflow=a["dataflow"],
        weight_bits=data["operands"]["weight_bits"], activation_bits=data["operands"]["activation_bits"],
        acc_bits=data["accumulator"]["bits"], overflow=data["accumulator"]["overflow"],
        rounding=data["requant"]["rounding"],
        ifmap_sram_bytes=int(mem["ifmap_sram_kib"] * 1024), filter_sram_bytes=int(mem["filter_sram_kib"] * 1024),
        ofmap_sram_bytes=int(mem["ofmap_sram_kib"] * 1024), dram_bytes_per_cycle=float(mem["dram_bytes_per_cycle"]),
        sram_pj_per_byte=float(en["sram_pj_per_byte"]), dram_pj_per_byte=float(en["dram_pj_per_byte"]),
        mac_pj={int(k): float(v) for k, v in sorted(en["mac_pj"].items(), key=lambda kv: int(kv[0]))},
        units={u: Unit(**data["units"][u]) for u in UNITS}, source=where)
    _check_relations(cfg, where)
    return cfg


def presets() -> list[str]:
    return sorted(p.stem.replace("_", "-") for p in PRESETS_DIR.glob("*.toml"))


def load_config(name_or_path: str | os.PathLike) -> AccelConfig:
    """A preset by name (`edge-npu`, `mcu`) or a TOML file of one's own."""
    path = Path(name_or_path)
    if not path.is_file():
        preset = PRESETS_DIR / f"{str(name_or_path).replace('-', '_')}.toml"
        if not preset.is_file():
            raise ConfigError(f"accelerator configuration {str(name_or_path)!r} is neither a file nor a preset; "
                              f"presets: {', '.join(presets())}")
        path = preset
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return from_dict(data, str(path))
