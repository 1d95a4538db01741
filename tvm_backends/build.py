"""Integer program -> deployable artifact (tvm_backends/artifact.py): the generic build.

`compile_program` lowers the program (tvm_backends/lower.py), schedules it for the target's device
(the CPU schedules of tvm_backends/schedules.py for llvm targets, tvm_backends/cuda/schedules.py
for CUDA), compiles it with TVM, exports the library (cross-linked for the board) and writes the
artifact's metadata. For CUDA targets the kernels are compiled ahead of time into the library as
cubins, by CUDA 12's NVRTC from PyPI, on machines without a GPU or a CUDA toolkit
(tvm_backends/cuda/): without a loadable libcuda TVM silently embeds CUDA source instead of cubins,
so a stub libcuda that only satisfies the linker is loaded first; every CUDA library is checked to
hold cubins for its SM and no CUDA source.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from core.files import sha256_file
from tvm_backends.artifact import FORMAT, LIBRARY, VERSION, Artifact, dist_version, elf_facts
from tvm_backends.cuda import nvrtc
from tvm_backends.cuda import schedules as cuda_schedules
from tvm_backends.cuda.cubin import check_cuda_library
from tvm_backends.targets import Preset, check_toolchain, get, resolve


def compile_module(mod, preset: Preset, library: Path, cpu_schedule=None) -> dict[str, Any]:
    """Schedule, compile and export a Relax module for `preset` to `library`; returns the build facts.

    CUDA targets get the GPU schedule; `cpu_schedule(mod, target)` schedules llvm targets (the
    integer schedules); None leaves TVM's default pipeline (the FP32 baseline build).
    """
    import tvm

    check_toolchain(preset)
    if preset.device == "cuda":
        nvrtc.enable_cuda_codegen()
    target = tvm.target.Target(resolve(preset))
    t0 = time.perf_counter()
    launches = gemms = None
    with target:
        if preset.device == "cuda":
            mod = cuda_schedules.schedule(mod, target)
            launches = cuda_schedules.kernel_launches(mod)
        elif cpu_schedule is not None:
            from tvm_backends.schedules import gemm_kernels

            mod = cpu_schedule(mod, target)
            gemms = gemm_kernels(mod)
        executable = tvm.compile(mod, target=target)
    compile_s = time.perf_counter() - t0
    partial = library.with_name(f".{library.stem}.partial.so")  # TVM picks the linker by the suffix
    try:
        executable.export_library(str(partial), **({"cc": preset.cc} if preset.cc else {}))
        os.replace(partial, library)
    finally:
        partial.unlink(missing_ok=True)
    facts = {"compile_seconds": round(compile_s, 3), "library_bytes": library.stat().st_size,
             "library_sha256": sha256_file(library), "elf": elf_facts(library)}
    if preset.device == "cuda":
        facts.update(check_cuda_library(library, preset.cuda_arch), nvrtc=nvrtc.library().version,
                     kernel_launches=launches)
    if gemms is not None:
        facts["gemm_kernels"] = gemms  # GEMM calls by kernel: the dot-product kind, or generic
    return facts


def _quantization(program, lowered) -> tuple[dict, dict]:
    spec = program.input
    inp = {"name": spec["name"], "shape": list(lowered.input_shape), "dtype": lowered.input_dtype,
           "scale": spec["scale"], "zero_point": spec["zero_point"], "qmin": spec.get("qmin"), "qmax": spec.get("qmax")}
    out = {"name": program.output["name"], "shape": list(lowered.output_shape), "dtype": lowered.output_dtype,
           "scale": program.output["scale"], "zero_point": program.output.get("zero_point", 0)}
    return inp, out


def compile_program(program_path: str | os.PathLike, target: str, out_dir: str | os.PathLike,
                    batch: int = 1) -> Artifact:
    """Lower, schedule and compile an integer program file into an artifact folder."""
    from core.records import versions
    from intprog.program import load
    from tvm_backends.lower import lower
    from tvm_backends.schedules import has_vnni, schedule

    preset = get(target)
    check_toolchain(preset)  # before the slow part
    program = load(program_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    signed = preset.device == "cpu" and "+dotprod" in resolve(preset).get("mattr", [])  # sdot: s8 x s8
    vnni = preset.device == "cpu" and has_vnni(resolve(preset))
    lowered = lower(program, batch=batch, signed_activations=signed, vnni=vnni)
    lower_s = time.perf_counter() - t0
    facts = compile_module(lowered.mod, preset, out_dir / LIBRARY, cpu_schedule=schedule)
    facts["gemm_operands"] = "s8 x s8" if signed else "u8 x s8"
    inp, out = _quantization(program, lowered)
    meta = {
        "format": FORMAT, "version": VERSION,
        "target": {"preset": preset.name, "description": preset.description, "tvm": resolve(preset),
                   "device": preset.device, "cross_compiler": preset.cc},
        "program": {"path": str(program_path), "sha256": sha256_file(program_path)},
        "model": {k: program.meta.get(k) for k in ("model", "model_kwargs", "checkpoint", "w_bits", "a_bits")},
        "input": inp, "output": out, "batch": batch, "library": LIBRARY,
        "build": {"lower_seconds": round(lower_s, 3), **facts},
        "versions": {**versions(), "tvm_ffi": dist_version("apache-tvm-ffi")},
    }
    return Artifact.write(out_dir, meta)
