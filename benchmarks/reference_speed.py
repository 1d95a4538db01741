"""The reference executor's speed (intprog.reference.run, numpy, one thread): images/s per program.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/reference_speed.py \
        [--program P.intprog.safetensors ...] [--deit 8 4] [--batch 1] [--rounds 5] \
        [--baseline DIR] [--results benchmarks/results/speed]

Programs: each --program file, and with --deit the DeiT-Tiny 224x224 programs of
benchmarks/real_speed.py at the given bits (random weights, round-to-nearest, cached in
$PFCR_CACHE/speed). Inputs are seeded uniform codes in the program's input range.

--baseline DIR names a folder with another version of intprog's arith.py, nonlinear.py and
reference.py (e.g. copied from an earlier commit); it is imported under another package name
and timed interleaved with the current one in this process (ratios of medians of the same run,
so load from other processes hits both alike), after checking that both give the same integers.

Writes one `bench` record per program to --results.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = ROOT / "benchmarks/results/speed"
SEED = 0


def load_baseline(folder: Path):
    """The reference module of `folder`'s arith/nonlinear/reference, as package `baseline_intprog`."""
    import importlib

    pkg = Path(tempfile.mkdtemp()) / "baseline_intprog"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("arith", "nonlinear", "reference"):
        src = (folder / f"{name}.py").read_text()
        for dep in ("arith", "nonlinear"):
            src = src.replace(f"from intprog.{dep} import", f"from baseline_intprog.{dep} import")
        (pkg / f"{name}.py").write_text(src)
    sys.path.insert(0, str(pkg.parent))
    return importlib.import_module("baseline_intprog.reference")


def deit_programs(bits: list[int]) -> list[tuple[str, object]]:
    """DeiT-Tiny 224 programs, as benchmarks/real_speed.py makes and caches them."""
    import hashlib
    import json

    import real_speed

    name = "deit_tiny_patch16_224"
    model, calib, mfield, dfield, _ = real_speed.float_model(name, 8)
    digest = real_speed._sources_digest()[:12]
    out = []
    for b in bits:
        key = hashlib.sha256(json.dumps([mfield, b, dfield, real_speed.SEED, digest]).encode()).hexdigest()[:16]
        program, _ = real_speed.rtn_program(model, calib, b, f"{name}_w{b}a{b}_{key}")
        out.append((f"{name}_w{b}a{b}", program))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--program", type=Path, action="append", default=[])
    ap.add_argument("--deit", nargs="*", type=int, default=[], help="DeiT-Tiny 224 programs at these bits")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="folder with another arith.py, nonlinear.py, reference.py")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import numpy as np

    from core.records import make_record, write_record
    from intprog import reference
    from intprog.program import load

    programs = [(p.name.split(".")[0], load(p)) for p in args.program] + deit_programs(args.deit)
    base = load_baseline(args.baseline) if args.baseline else None
    runners = {"current": reference, **({"baseline": base} if base else {})}
    for name, program in programs:
        spec = program.input
        x = np.random.default_rng(SEED).integers(spec["qmin"], spec["qmax"] + 1, size=(args.batch, *spec["shape"]))
        want = reference.run(program, x)
        bit_exact = None
        if base:
            bit_exact = bool(np.array_equal(base.run(program, x), want))
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.rounds):
            for key, mod in runners.items():
                t0 = time.perf_counter()
                mod.run(program, x)
                times[key].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        metrics = {"reference_images_per_s": round(args.batch / med["current"], 4),
                   "reference_seconds_per_batch": round(med["current"], 4)}
        if base:
            metrics.update({"baseline_images_per_s": round(args.batch / med["baseline"], 4),
                            "speedup_vs_baseline": round(med["baseline"] / med["current"], 3),
                            "bit_exact_vs_baseline": bit_exact})
        threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        record = make_record(
            "bench", model={"name": name, "checkpoint_sha256": None},
            data={"name": "uniform-codes", "split": "synthetic", "size": args.batch},
            config={"method": "reference-numpy", "tag": f"reference-batch{args.batch}", "batch": args.batch,
                    "rounds": args.rounds, "threads": threads, "baseline": str(args.baseline) if base else None},
            metrics=metrics, seed=SEED, extra={"times_s": {k: [round(t, 4) for t in v] for k, v in times.items()}})
        path = write_record(record, args.results)
        print(f"{name} batch {args.batch}: {metrics}", flush=True)
        print(f"  -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
