"""One simulation: values over a batch stream, then time/memory/energy, as a `simulate` result record.

Shared by `pfcr simulate` and the benchmark studies so that every record has the same fields.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hwsim.accelerator.config import AccelConfig
from hwsim.accelerator.execute import Accelerator
from hwsim.accelerator.fixed import AP_TO_PROGRAM
from hwsim.accelerator.timing import costs
from intprog import reference
from intprog.program import Program


def simulate(program: Program, batches: Iterable[tuple[np.ndarray, np.ndarray]], cfg: AccelConfig,
             compare: bool = True) -> tuple[dict, list[dict]]:
    """Run `program` on the accelerator over (codes, labels) batches; (metrics, per-layer rows).

    With `compare`, each batch also runs the reference executor and the outputs are compared bit for bit.
    """
    acc = Accelerator(program, cfg)
    correct = mismatched = images = out_elements = 0
    sim_seconds = sim_cpu_seconds = ref_seconds = 0.0
    for codes, labels in batches:
        t0, c0 = time.perf_counter(), time.process_time()
        out = acc.run(codes)
        sim_seconds += time.perf_counter() - t0
        sim_cpu_seconds += time.process_time() - c0
        correct += int((out.argmax(-1) == labels).sum())
        out_elements = int(np.prod(out.shape[1:]))
        images += len(codes)
        if compare:
            t0 = time.perf_counter()
            ref = reference.run(program, codes)
            ref_seconds += time.perf_counter() - t0
            mismatched += int((out != ref).any(axis=-1).sum())
    # the image (8-bit codes) comes from DRAM, the int32 output goes back
    per, totals = costs(acc.trace.layers, cfg, int(np.prod(program.input["shape"])), 4 * out_elements)
    rows = []
    for layer, cost in zip(acc.trace.layers, per, strict=True):
        ov, up = acc.trace.overflows.get(layer.name, 0), acc.trace.updates.get(layer.name, 0)
        rows.append({**cost.to_dict(), "op": layer.op, "m": layer.m, "k": layer.k, "n": layer.n,
                     "count": layer.count, "w_width": layer.w_width, "a_width": layer.a_width,
                     "overflows": ov, "accumulations": up})
    rounding = {op["attrs"]["rounding"] for op in program.ops if "rounding" in op["attrs"]}
    metrics = {
        "top1": correct / max(images, 1), "images": images,
        "overflows": sum(acc.trace.overflows.values()), "accumulations": sum(acc.trace.updates.values()),
        "layers_with_overflow": sum(1 for v in acc.trace.overflows.values() if v),
        "sim_seconds": round(sim_seconds, 3),  # wall time: inflated on a shared machine
        "sim_cpu_seconds": round(sim_cpu_seconds, 3),
        "sim_macs_per_second": totals["macs"] * images / sim_seconds if sim_seconds else None,
        "rounding_matches_program": rounding <= {str(AP_TO_PROGRAM[cfg.rounding])},
        **{k: v for k, v in totals.items()},
    }
    if compare:
        metrics.update({"bit_exact": mismatched == 0, "mismatched_images": mismatched,
                        "reference_seconds": round(ref_seconds, 3)})
    return metrics, rows


def make_simulate_record(program_path: str | Path, program: Program, cfg: AccelConfig, metrics: dict,
                         rows: list[dict], data: dict, seed: int, tag: str | None) -> dict:
    """A `simulate` record: the accelerator's configuration and per-layer table beside the metrics."""
    from core.models import ZOO, sha256_file
    from core.records import make_record

    name = program.meta.get("model", "unknown")
    ckpt = ZOO[name].checkpoint if name in ZOO else None
    model = {"name": name, "checkpoint_sha256": sha256_file(ckpt) if ckpt and ckpt.exists() else None}
    config = {"method": f"accel-{cfg.name}", "w_bits": program.meta.get("w_bits"),
              "a_bits": program.meta.get("a_bits"), "tag": tag, "accelerator": cfg.to_dict()}
    return make_record("simulate", model=model, data=data, config=config, metrics=metrics, seed=seed,
                       extra={"artifact": str(program_path), "artifact_sha256": sha256_file(program_path),
                              "layers": rows})
