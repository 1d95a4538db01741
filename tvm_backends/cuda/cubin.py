"""The cubins a built library embeds, read from their ELF headers, and the check that every CUDA
build carries compiled kernels for its target's SM and no CUDA source (which TVM embeds, silently,
when its kernels were not compiled: see tvm_backends/cuda/runtime.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tvm_backends.cuda import BuildError

EM_CUDA = 190  # ELF machine of a cubin


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
                         "the build did not compile its kernels (see tvm_backends/cuda/nvrtc.py: "
                         "enable_cuda_codegen)")
    archs = cubin_archs(data)
    if not archs:
        raise BuildError(f"{path} holds no CUDA cubin")
    if set(archs) != {arch}:
        raise BuildError(f"{path} holds cubins for {', '.join(sorted(set(archs)))}, not for {arch} only")
    return {"cubin": True, "cuda_source": False, "cuda_arch": arch, "cubin_count": len(archs)}
