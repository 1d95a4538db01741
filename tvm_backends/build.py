"""Integer program -> deployable artifact: a TVM shared library plus the metadata a runner needs.

An artifact is a folder: `model.so` (the Relax VM executable, cross-linked for the board) and
`artifact.json` (target, program sha256, input/output quantization, batch, versions). CUDA kernels
are compiled ahead of time into the library as cubins, by CUDA 12's NVRTC from PyPI
(tvm_backends/nvrtc.py), on machines without a GPU or a CUDA toolkit: without a loadable libcuda
TVM silently embeds CUDA *source* instead (compiled on the board at load time), so a stub libcuda
that only satisfies the linker is loaded first (../shared/notes/tvm-0.27.md).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import SuiteError
from core.files import atomic_path, atomic_write, sha256_file
from tvm_backends.targets import Preset, check_toolchain, get, resolve

FORMAT = "pfcr-tvm-artifact"
VERSION = 1
LIBRARY = "model.so"
FP32_LIBRARY = "fp32.so"
METADATA = "artifact.json"
EM_CUDA = 190  # ELF machine of a cubin


class ArtifactError(SuiteError):
    """A missing or malformed artifact, or one built from another program than the one given."""


class BuildError(SuiteError):
    """A build that did not produce what the target needs (e.g. CUDA source instead of a cubin)."""


def cache_dir() -> Path:
    """The suite's cache ($PFCR_CACHE, else ~/.cache/pfcr): stub libraries, the emulated Pi."""
    return Path(os.environ.get("PFCR_CACHE") or Path.home() / ".cache" / "pfcr")


def _stub_libcuda() -> Path:
    """A libcuda.so.1 whose every driver entry point that TVM's CUDA runtime links returns
    CUDA_ERROR_NO_DEVICE; built once per TVM version into the cache."""
    import tvm
    from tvm.base import _LOADED_LIBS

    runtime = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent / "libtvm_runtime_cuda.so"
    out = cache_dir() / f"stub-libcuda-tvm{tvm.__version__}" / "libcuda.so.1"
    if out.exists():
        return out
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(runtime)], capture_output=True, text=True, check=True)
    symbols = sorted({line.split()[-1] for line in nm.stdout.splitlines()
                      if line.split() and line.split()[-1].startswith("cu") and "@" not in line.split()[-1]})
    source = "".join(f"int {s}(void) {{ return 100; }}\n" for s in symbols)
    c_file = out.with_suffix(".c")
    atomic_write(c_file, source)
    with atomic_path(out) as tmp:
        subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(c_file)],
                       check=True, capture_output=True)
    return out


def load_cuda_runtime(allow_stub: bool = True) -> None:
    """Load TVM's CUDA runtime (needed to build CUDA libraries and to load them), after the driver's
    libcuda, or, where there is none and `allow_stub`, after the stub that only satisfies the linker."""
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        if not allow_stub:
            raise BuildError("the NVIDIA driver's libcuda.so.1 cannot be loaded on this machine") from None
        ctypes.CDLL(str(_stub_libcuda()), mode=ctypes.RTLD_GLOBAL)  # its soname satisfies TVM's runtime
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                       extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")


def enable_cuda_codegen() -> None:
    """Make TVM compile CUDA kernels to cubins with NVRTC (tvm_backends/nvrtc.py), on a machine with
    or without a GPU; the architecture comes from the target the build runs under."""
    import tvm
    import tvm.support.nvcc  # registers TVM's callback first, which ours then replaces
    import tvm_ffi

    from tvm_backends import nvrtc

    load_cuda_runtime()

    def compile_cuda(code: str) -> bytes:
        return nvrtc.compile_cuda(code, str(tvm.target.Target.current().attrs["arch"]))

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)


def cubin_archs(data: bytes) -> list[str]:
    """The architectures of the cubins (CUDA ELF images) embedded in `data`: the SM number sits in
    e_flags, bits 0-7 up to ELF ABI version 7 (CUDA 12) and bits 8-15 from version 8 (CUDA 13)."""
    archs, i = [], data.find(b"\x7fELF")
    while i >= 0:
        if len(data) >= i + 52 and int.from_bytes(data[i + 18:i + 20], "little") == EM_CUDA:
            flags = int.from_bytes(data[i + 48:i + 52], "little")
            archs.append(f"sm_{flags & 0xFF if data[i + 8] < 8 else (flags >> 8) & 0xFF}")
        i = data.find(b"\x7fELF", i + 1)
    return archs


def check_cuda_library(path: str | os.PathLike, arch: str) -> dict[str, Any]:
    """Prove that a library carries compiled kernels for `arch` and no CUDA source; BuildError if not."""
    data = Path(path).read_bytes()
    if b"__global__" in data:
        raise BuildError(f"{path} embeds CUDA source, which the board would have to compile at load time; "
                         "the build did not compile its kernels (see tvm_backends/build.py: enable_cuda_codegen)")
    archs = cubin_archs(data)
    if not archs:
        raise BuildError(f"{path} holds no CUDA cubin")
    if set(archs) != {arch}:
        raise BuildError(f"{path} holds cubins for {', '.join(sorted(set(archs)))}, not for {arch} only")
    return {"cubin": True, "cuda_source": False, "cuda_arch": arch, "cubin_count": len(archs)}


def _bind_threads(func, max_threads: int = 256):
    """Every block's spatial loops fused and bound to CUDA blocks x threads, reductions serial per thread.

    dlight's Fallback does the same after `normalize_prim_func`, which takes ~25 s on the integer
    LayerNorm and softmax (their isqrt/log2 are long let-chains); this reads the loop kinds straight
    from the block's iteration variables instead.
    """
    import tvm

    sch = tvm.s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        if any(sch.get(loop).thread_binding is not None for loop in loops):
            continue  # shares a loop nest with a block bound before
        iters = sch.get(block).iter_vars
        if len(loops) != len(iters):
            return None  # not a plain loop nest: leave it to dlight
        spatial = [lp for lp, it in zip(loops, iters, strict=True) if it.iter_type == 0]
        reduce = [lp for lp, it in zip(loops, iters, strict=True) if it.iter_type != 0]
        if not spatial:
            spatial = [sch.add_unit_loop(block)]
        sch.reorder(*spatial, *reduce)
        bx, tx = sch.split(sch.fuse(*spatial), factors=[None, max_threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _cuda_schedule(mod, target):
    """GEMMs by dlight's Matmul rule, marked `dlight.do_not_tensorize` (its int8 tensor-core path is
    broken in TVM 0.27; the SIMT kernel uses dp4a); every other function by `_bind_threads`."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    mod = relax.get_pipeline("zero")(mod)
    funcs = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            func = func.with_attr("dlight.do_not_tensorize", True)
            scheduled = dl.ApplyDefaultSchedule(dl.gpu.Matmul())(tvm.IRModule({gv: func}))[gv.name_hint]
            if "tirx.is_scheduled" not in (scheduled.attrs or {}):
                scheduled = _bind_threads(func)
            if scheduled is None:
                scheduled = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(tvm.IRModule({gv: func}))[gv.name_hint]
            func = scheduled
        funcs[gv] = func
    return tvm.IRModule(funcs, attrs=mod.attrs)


def compile_module(mod, preset: Preset, library: Path, cpu_schedule=None) -> dict[str, Any]:
    """Schedule, compile and export a Relax module for `preset` to `library`; returns the build facts.

    `cpu_schedule(mod, target)` schedules llvm targets (the integer schedules); None leaves TVM's
    default pipeline (the FP32 baseline build).
    """
    import tvm

    check_toolchain(preset)
    if preset.device == "cuda":
        enable_cuda_codegen()
    target = tvm.target.Target(resolve(preset))
    t0 = time.perf_counter()
    with target:
        if preset.device == "cuda":
            mod = _cuda_schedule(mod, target)
        elif cpu_schedule is not None:
            mod = cpu_schedule(mod, target)
        executable = tvm.compile(mod, target=target)
    compile_s = time.perf_counter() - t0
    partial = library.with_name(f".{library.stem}.partial.so")  # TVM picks the linker by the suffix
    try:
        executable.export_library(str(partial), **({"cc": preset.cc} if preset.cc else {}))
        os.replace(partial, library)
    finally:
        partial.unlink(missing_ok=True)
    facts = {"compile_seconds": round(compile_s, 3), "library_bytes": library.stat().st_size,
             "library_sha256": sha256_file(library)}
    if preset.device == "cuda":
        from tvm_backends import nvrtc

        facts.update(check_cuda_library(library, preset.cuda_arch), nvrtc=nvrtc.library().version)
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
    from tvm_backends.schedules import schedule

    preset = get(target)
    check_toolchain(preset)  # before the slow part
    program = load(program_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    signed = preset.device == "cpu" and "+dotprod" in resolve(preset).get("mattr", [])  # sdot: s8 x s8
    lowered = lower(program, batch=batch, signed_activations=signed)
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
        "versions": {**versions(), "tvm_ffi": _version("apache-tvm-ffi")},
    }
    atomic_write(out_dir / METADATA, json.dumps(meta, indent=1) + "\n")
    return Artifact(out_dir, meta)


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Artifact:
    path: Path
    meta: dict[str, Any]

    @property
    def library(self) -> Path:
        return self.path / self.meta["library"]

    @property
    def preset(self) -> Preset:
        return get(self.meta["target"]["preset"])

    @classmethod
    def load(cls, path: str | os.PathLike) -> Artifact:
        """Read an artifact folder written by `pfcr compile`; ArtifactError says what is missing."""
        path = Path(path)
        meta_path = path / METADATA
        if not meta_path.is_file():
            raise ArtifactError(f"{path} is not a compiled artifact (no {METADATA}); make one with "
                                f"`pfcr compile PROGRAM --target NAME --out {path}`")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{meta_path} is not valid JSON ({err}); recompile with `pfcr compile`") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ArtifactError(f"{meta_path} is not a version {VERSION} {FORMAT} file; recompile with `pfcr compile`")
        art = cls(path, meta)
        if not art.library.is_file():
            raise ArtifactError(f"{art.library} is missing; recompile with `pfcr compile`")
        if sha256_file(art.library) != meta["build"]["library_sha256"]:
            raise ArtifactError(f"{art.library} is not the library {meta_path} describes (sha256 differs); "
                                "recompile with `pfcr compile`")
        return art

    def check_program(self, program_path: str | os.PathLike) -> None:
        """ArtifactError unless the artifact was compiled from exactly this program file."""
        digest = sha256_file(program_path)
        if digest != self.meta["program"]["sha256"]:
            raise ArtifactError(f"artifact {self.path} was compiled from {self.meta['program']['path']} (sha256 "
                                f"{self.meta['program']['sha256'][:12]}...), not from {program_path} (sha256 "
                                f"{digest[:12]}...); recompile it: pfcr compile {program_path} "
                                f"--target {self.meta['target']['preset']} --out {self.path}")


def compile_fp32(art: Artifact) -> Path:
    """The FP32 model behind an artifact, built by TVM for the same target: the baseline measured on
    the same board. Imported with TVM's torch frontend (from_exported_program, which imports float
    ViTs correctly) and compiled with TVM's default pipeline; cached in the artifact folder."""
    model = art.meta["model"]
    stamp = {"model": model, "target": art.meta["target"]["tvm"], "batch": art.meta["batch"],
             "tvm": _version("apache-tvm")}
    lib, stamp_path = art.path / FP32_LIBRARY, art.path / "fp32.json"
    if lib.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()).get("stamp") == stamp:
        return lib
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    from core.models import load_program_model

    loaded = load_program_model(model)
    x = torch.zeros(art.meta["batch"], *art.meta["input"]["shape"][1:])
    with torch.no_grad():
        exported = torch.export.export(loaded.module.eval(), (x,))
        mod = from_exported_program(exported, keep_params_as_input=False)
    facts = compile_module(mod, art.preset, lib)
    atomic_write(stamp_path, json.dumps({"stamp": stamp, "build": facts}, indent=1) + "\n")
    return lib
