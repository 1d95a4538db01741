"""The suite's cache folder for what the TVM backends build once and reuse: the stub libcuda
(tvm_backends/cuda/runtime.py) and the emulated Pi (tvm_backends/emulate.py).

A module of its own so that both reach it without importing the build.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The suite's cache ($PFCR_CACHE, else ~/.cache/pfcr): stub libraries, the emulated Pi."""
    return Path(os.environ.get("PFCR_CACHE") or Path.home() / ".cache" / "pfcr")
