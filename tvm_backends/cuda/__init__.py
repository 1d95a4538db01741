"""CUDA specifics of the TVM backends, apart from the generic build (tvm_backends/build.py), the
CPU schedules and the artifact format, so that a CPU target never goes near them:

- runtime: TVM's CUDA runtime, loaded after the driver's libcuda or a stub one (a machine
  without a GPU builds CUDA libraries too);
- nvrtc: CUDA 12's NVRTC from PyPI, and the hook that makes TVM compile kernels with it;
- cubin: reading the cubins a library embeds, and the check that a build holds no CUDA source;
- schedules: the GPU schedule (dlight's Matmul for GEMMs, a blocks-x-threads binding elsewhere).

Light to import: tvm loads inside the functions.
"""

from __future__ import annotations

from core.errors import SuiteError


class BuildError(SuiteError):
    """A build that did not produce what the target needs (e.g. CUDA source instead of a cubin)."""
