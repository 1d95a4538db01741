"""PTQ study on the zoo: FP vs rtn vs block vs pfcr over bit widths and calibration seeds, and the
PFCR ablation. Each run is one `pfcr quantize` process (so its wall time and peak memory are its
own), writing one `quantize` record; runs whose record exists are skipped, so an interrupted
study resumes where it stopped.

    python benchmarks/quant_study.py                       # main grid
    python benchmarks/quant_study.py --ablation            # PFCR ablation at W3A3
    python benchmarks/quant_study.py --ablation --names scale-lr-4e-5 scale-lr-1e-3 --seeds 0 1 2
    python benchmarks/quant_study.py --summary             # tables from the records only
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.records import record_name  # noqa: E402

# name -> extra `pfcr quantize` options; each is one reading of a PFCR design choice.
ABLATION = {
    "pfcr": [],
    "pos-none": ["--pos", "none"],
    "pos-levelwise": ["--pos", "levelwise"],
    "no-merging": ["--coarsest", "0"],
    "coarsest-1": ["--coarsest", "1"],
    "coarsest-2": ["--coarsest", "2"],
    "no-finest": ["--no-finest"],
    "round-lr-1e-3": ["--round-lr", "1e-3"],
    # the activation step sizes' learning rate: QDrop's 4e-5 (for 20 000 iterations) against 1e-3
    "scale-lr-4e-5": ["--scale-lr", "4e-5"],
    "scale-lr-1e-3": ["--scale-lr", "1e-3"],
    # Block reconstruction given about the reconstruction time PFCR takes (6x the iterations):
    # does PFCR win by its schedule or by its compute?
    "block-6x-iters": ["--method", "block", "--iters-scale", "6"],
}


def runs(args: argparse.Namespace) -> list[tuple[str, list[str], dict]]:
    """(label, argv, expected record fields) for every run of the study."""
    out = []
    common = ["--calib-size", str(args.calib_size), "--iters", str(args.iters), "--results", str(args.results)]
    if args.limit:
        common += ["--limit", str(args.limit)]
    if args.ablation:
        grid = itertools.product(args.models, ["W3A3"], [(n, ABLATION[n]) for n in args.names], args.seeds)
        for model, bits, (name, extra), seed in grid:
            tag = f"ablation-{name}"
            extra = list(extra)
            if "--iters-scale" in extra:
                i = extra.index("--iters-scale")
                extra[i:i + 2] = ["--iters", str(args.iters * int(extra[i + 1]))]
            method = extra[extra.index("--method") + 1] if "--method" in extra else "pfcr"
            argv = [model, "--bits", bits, "--method", "pfcr", "--seed", str(seed), "--tag", tag, *common, *extra]
            out.append((f"{model} {bits} {name} seed {seed}", argv, (model, method, bits, tag, seed)))
    else:
        for model, bits, method, seed in itertools.product(args.models, args.bits, args.methods, args.seeds):
            argv = [model, "--bits", bits, "--method", method, "--seed", str(seed), "--tag", "study"]
            out.append((f"{model} {bits} {method} seed {seed}", argv + common, (model, method, bits, "study", seed)))
    return out


def record_path(results: Path, model: str, method: str, bits: str, tag: str, seed: int) -> Path:
    w, a = bits[1:].split("A")
    fake = {"kind": "quantize", "model": {"name": model}, "data": {"name": "fashion-mnist", "split": "test"},
            "config": {"method": method, "w_bits": int(w), "a_bits": int(a), "tag": tag}, "seed": seed}
    return results / record_name(fake)


def run_one(label: str, argv: list[str], args: argparse.Namespace) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    out = Path(args.work) / (label.replace(" ", "_") + ".safetensors")
    cmd = [sys.executable, "-m", "cli.main", "quantize", *argv, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    status = "ok" if proc.returncode == 0 else f"FAILED ({proc.stderr.strip().splitlines()[-1:]})"
    out.unlink(missing_ok=True)  # the record keeps the numbers; the model is rebuilt by the command
    return f"{label}: {status} in {time.perf_counter() - t0:.0f} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_fmnist"])
    p.add_argument("--bits", nargs="+", default=["W8A8", "W4A4", "W3A3", "W3A2", "W2A3"])
    p.add_argument("--methods", nargs="+", default=["rtn", "block", "pfcr"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="test images (default: all 10000)")
    p.add_argument("--ablation", action="store_true")
    p.add_argument("--names", nargs="+", default=list(ABLATION), choices=list(ABLATION),
                   help="with --ablation: which of its runs")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "study")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "study")
    p.add_argument("--summary", action="store_true", help="only print the tables from existing records")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        todo = [r for r in runs(args) if not record_path(args.results, *r[2]).exists()]
        print(f"{len(todo)} runs to do ({len(runs(args)) - len(todo)} already recorded)", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda r: run_one(r[0], r[1], args), todo):
                print(line, flush=True)
    from reports.load import records_frame
    from reports.tables import markdown, quant_table

    print(markdown(quant_table(records_frame(args.results))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
