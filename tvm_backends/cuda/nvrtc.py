"""CUDA kernels compiled to cubins with NVRTC from NVIDIA's wheels on PyPI: no CUDA toolkit needed.

CUDA 12's NVRTC (`nvidia-cuda-nvrtc-cu12`) compiles for every preset, sm_53 (Jetson Nano) to
sm_90: CUDA 13 dropped sm_50..sm_72, and JetPack 6 (Orin) ships CUDA 12. TVM's CUDA source
includes <cuda/std/cstdint> and <cuda/std/type_traits> under NVRTC, from `nvidia-cuda-cccl-cu12`.
The library is called through ctypes: cuda-bindings (TVM's own NVRTC path) is tied to torch's CUDA 13.
`enable_cuda_codegen` makes TVM's CUDA builds call it.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

from core.errors import SuiteError
from tvm_backends.cuda.runtime import load_cuda_runtime

# (wheel, what it provides under site-packages/nvidia)
NVRTC = ("nvidia-cuda-nvrtc-cu12", "cuda_nvrtc/lib/libnvrtc.so.12")
CCCL = ("nvidia-cuda-cccl-cu12", "cuda_cccl/include")
_REINSTALL = "it is in the suite's dependencies: reinstall with `pip install -e .`"


class NvrtcError(SuiteError):
    """No NVRTC library for an architecture, or kernels that NVRTC rejected."""


def _nvidia_dirs() -> list[Path]:
    try:
        import nvidia
    except ImportError:
        return []
    return [Path(p) for p in nvidia.__path__]


class Nvrtc:
    """One libnvrtc, loaded by path: its version and the real architectures it compiles for."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor, n = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = f"{major.value}.{minor.value}"
        self._check(self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
        archs = (ctypes.c_int * n.value)()
        self._check(self.lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
        self.archs = [f"sm_{a}" for a in archs]

    def _check(self, result: int, call: str, log: str = "") -> None:
        if result:
            raise NvrtcError(f"{call} failed in {self.path.name}: {self.lib.nvrtcGetErrorString(result).decode()}"
                             + (f"\n{log}" if log else ""))

    def compile(self, code: str, arch: str, options: list[str]) -> bytes:
        """The cubin of `code` for the real architecture `arch` (e.g. "sm_53")."""
        prog = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"tvm_kernels.cu", 0, None, None),
                    "nvrtcCreateProgram")
        try:
            opts = [f"--gpu-architecture={arch}", "-default-device", *options]
            argv = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
            result = self.lib.nvrtcCompileProgram(prog, len(opts), argv)
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(prog, log)
            self._check(result, f"compiling the kernels for {arch}", log.value.decode(errors="replace"))
            self._check(self.lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            cubin = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
            return cubin.raw
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _installed(wheel: str, relative: str) -> Path:
    for root in _nvidia_dirs():
        if (root / relative).exists():
            return root / relative
    raise NvrtcError(f"CUDA builds need {relative.split('/')[-1]} from the wheel {wheel}, which is not installed; "
                     f"pip install {wheel} ({_REINSTALL})")


@functools.cache
def library() -> Nvrtc:
    """The CUDA 12 NVRTC; NvrtcError names the wheel to install."""
    return Nvrtc(_installed(*NVRTC))


@functools.cache
def include_dir() -> Path:
    """CCCL's include folder, checked by the header TVM's source needs; NvrtcError names the wheel."""
    return _installed(CCCL[0], f"{CCCL[1]}/cuda/std/cstdint").parents[2]


def check_arch(arch: str) -> Nvrtc:
    """The NVRTC, after checking that it compiles for `arch` and that the headers are there."""
    lib = library()
    include_dir()
    if arch not in lib.archs:
        raise NvrtcError(f"NVRTC {lib.version} does not compile CUDA kernels for {arch} (it lists "
                         f"{', '.join(lib.archs)})")
    return lib


def compile_cuda(code: str, arch: str) -> bytes:
    """TVM's CUDA source -> cubin for `arch` (e.g. "sm_53")."""
    return check_arch(arch).compile(code, arch, [f"-I{include_dir()}", "--device-int128"])


def enable_cuda_codegen() -> None:
    """Make TVM compile CUDA kernels to cubins with NVRTC, on a machine with or without a GPU (TVM's
    CUDA runtime loaded first, see tvm_backends/cuda/runtime.py); the architecture comes from the
    target the build runs under."""
    import tvm
    import tvm.support.nvcc  # registers TVM's callback first, which ours then replaces
    import tvm_ffi

    load_cuda_runtime()

    def compile_for_target(code: str) -> bytes:
        return compile_cuda(code, str(tvm.target.Target.current().attrs["arch"]))

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_for_target, override=True)
