"""TVM's CUDA runtime, loaded on a machine with or without an NVIDIA driver.

TVM needs its CUDA runtime loaded to build CUDA libraries and to load them, and that runtime links
the driver's libcuda.so.1. Without a loadable libcuda TVM silently embeds CUDA *source* in the
library instead of cubins (for the board to compile at load time), so where there is none a stub
libcuda that only satisfies the linker is loaded first.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

from core.files import atomic_path, atomic_write
from tvm_backends.cache import cache_dir
from tvm_backends.cuda import BuildError


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
