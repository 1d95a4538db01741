"""Target presets: the boards the suite compiles for, by name, with their host CPU and toolchain.

A preset is plain data (no tvm import), so `pfcr compile --help` and error messages stay fast.
TVM 0.27 takes targets as dicts only. Jetson tags in TVM set some host
CPUs wrong (the Orin Nano tag says carmel, Xavier's core), so the presets spell every host out.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

from core.errors import SuiteError

AARCH64_CC = "aarch64-linux-gnu-gcc"
AARCH64_CC_PACKAGE = "gcc-aarch64-linux-gnu"


class TargetError(SuiteError):
    """An unknown target, or a toolchain the target needs is missing."""


def _aarch64(mcpu: str, *mattr: str) -> dict[str, Any]:
    return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": ["+neon", *mattr]}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    target: dict[str, Any]  # TVM target dict; for CUDA, "host" is the board's CPU
    cc: str | None = None  # cross compiler that links the library; None: the host's default
    aliases: tuple[str, ...] = field(default=())

    @property
    def device(self) -> str:
        """TVM device kind the library runs on: 'cpu' or 'cuda'."""
        return "cuda" if self.target["kind"] == "cuda" else "cpu"

    @property
    def cuda_arch(self) -> str | None:
        return self.target.get("arch") if self.device == "cuda" else None

    @property
    def cross(self) -> bool:
        return self.cc is not None


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("host", "this machine's CPU (llvm, its own micro-architecture)", {"kind": "llvm", "mcpu": "native"}),
    Preset("pi4", "Raspberry Pi 4: Cortex-A72, NEON, no dot product", _aarch64("cortex-a72"), AARCH64_CC,
           ("raspberry-pi-4",)),
    Preset("pi5", "Raspberry Pi 5: Cortex-A76, NEON + dot product (sdot)", _aarch64("cortex-a76", "+dotprod"),
           AARCH64_CC, ("raspberry-pi-5",)),
    Preset("jetson-nano", "Jetson Nano: Maxwell GPU sm_53, Cortex-A57 host",
           {"kind": "cuda", "arch": "sm_53", "host": _aarch64("cortex-a57")}, AARCH64_CC, ("nano",)),
    Preset("jetson-xavier", "Jetson AGX Xavier: Volta GPU sm_72, Carmel host",
           {"kind": "cuda", "arch": "sm_72", "host": _aarch64("carmel", "+dotprod")}, AARCH64_CC, ("xavier",)),
    Preset("jetson-orin", "Jetson AGX Orin: Ampere GPU sm_87, Cortex-A78AE host",
           {"kind": "cuda", "arch": "sm_87", "host": _aarch64("cortex-a78ae", "+dotprod")}, AARCH64_CC, ("orin",)),
    Preset("cuda-sm90", "an x86 server with a Hopper GPU (H100/H200, sm_90): the GPU check",
           {"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}}),  # generic x86-64: any server CPU
)}
_BY_ALIAS = {a: p for p in PRESETS.values() for a in (p.name, *p.aliases)}


def get(name: str) -> Preset:
    """The preset called `name` (or one of its aliases); a TargetError lists the known ones."""
    try:
        return _BY_ALIAS[name.lower()]
    except KeyError:
        known = "\n".join(f"  {p.name:<14} {p.description}" for p in PRESETS.values())
        raise TargetError(f"unknown target {name!r}; the known targets are:\n{known}") from None


def _native(target: dict[str, Any]) -> dict[str, Any]:
    """Resolve mcpu 'native' to LLVM's name for this CPU (recorded, so the artifact says what it needs)."""
    out = dict(target)
    if out.get("mcpu") == "native":
        import tvm

        out["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
    if "host" in out:
        out["host"] = _native(out["host"])
    return out


def resolve(preset: Preset) -> dict[str, Any]:
    """The preset's target dict with this machine's CPU filled in where it says 'native'."""
    return _native(preset.target)


def check_toolchain(preset: Preset) -> None:
    """Raise TargetError naming the Debian package or the wheel that a missing tool comes from."""
    if preset.cc and shutil.which(preset.cc) is None:
        raise TargetError(f"target {preset.name} links with the cross compiler {preset.cc}, which is not installed; "
                          f"install Debian's package {AARCH64_CC_PACKAGE} (apt-get install {AARCH64_CC_PACKAGE}, "
                          "or run scripts/system-deps.sh)")
    if preset.device != "cuda":
        return
    from tvm_backends.cuda import nvrtc

    try:
        nvrtc.check_arch(preset.cuda_arch)
    except nvrtc.NvrtcError as err:
        raise TargetError(f"target {preset.name} compiles its CUDA kernels with NVRTC: {err}") from None
