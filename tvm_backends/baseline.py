"""The FP32 baselines an integer artifact is measured against on the same device: torch eager on
this CPU, or the FP32 model built by TVM for the artifact's target (for a board).

Apart from the integer build (tvm_backends/build.py) because it imports the float model through
torch, which the integer build never needs.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.files import atomic_write, sha256_file
from tvm_backends.artifact import Artifact, ArtifactError, check_library, dist_version, expected_machine
from tvm_backends.bench import Timer, call_timer
from tvm_backends.build import compile_module

FP32_LIBRARY = "fp32.so"
FP32_STAMP = "fp32.json"  # what the cached FP32 library was built from, and its build facts


def torch_timer(model, x) -> Timer:
    """Per-run wall times of a torch module on the CPU (the FP32 eager baseline)."""
    import torch

    timed = call_timer(lambda: model(x))

    def timer(k: int) -> list[float]:
        with torch.inference_mode():
            return timed(k)

    return timer


def _cached(lib: Path, stamp_path: Path, stamp: dict, target: dict) -> bool:
    """True when the cached FP32 library was built from `stamp` and is whole (size, ELF, sha256 as
    built): a truncated or damaged one is rebuilt, never loaded (it would crash the loader)."""
    if not (lib.is_file() and stamp_path.is_file()):
        return False
    try:
        saved = json.loads(stamp_path.read_text())
        build = saved["build"]
        if saved.get("stamp") != stamp:
            return False
        check_library(lib, size=build["library_bytes"], machine=expected_machine(target), described_by=str(stamp_path))
        return sha256_file(lib) == build["library_sha256"]
    except (ValueError, KeyError, TypeError, ArtifactError):
        return False


def compile_fp32(art: Artifact) -> Path:
    """The FP32 model behind an artifact, built by TVM for the same target: the baseline measured on
    the same board. Imported with TVM's torch frontend (from_exported_program, which imports float
    ViTs correctly) and compiled with TVM's default pipeline; cached in the artifact folder."""
    model = art.meta["model"]
    stamp = {"model": model, "target": art.meta["target"]["tvm"], "batch": art.meta["batch"],
             "tvm": dist_version("apache-tvm")}
    lib, stamp_path = art.path / FP32_LIBRARY, art.path / FP32_STAMP
    if _cached(lib, stamp_path, stamp, art.meta["target"]["tvm"]):
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
