"""Integer-only vs fake-quant accuracy of the zoo (ViT and Swin) on the whole Fashion-MNIST test set,
at W8A8, W4A4 and W3A3 (the integer-program issue's accuracy table).

Each width is `pfcr quantize` (PFCR, the main job's short schedule unless --calib-size/--iters say
otherwise) -> `pfcr export` -> `pfcr run --quantized` on all 10,000 test images, one process per
step. A step whose output exists is skipped, so an interrupted study resumes.

    python benchmarks/integer_accuracy.py [--models vit_fmnist swin_fmnist] [--bits W8A8 W4A4 W3A3]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit_fmnist", "swin_fmnist"])
    ap.add_argument("--bits", nargs="+", default=["W8A8", "W4A4", "W3A3"])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/integer")
    ap.add_argument("--calib-size", default="256")
    ap.add_argument("--iters", default="20")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--limit", default=None, help="integer accuracy on the first N test images only")
    args = ap.parse_args()
    common = ["--results", str(args.results), "--seed", args.seed, "--tag", "integer"]
    limit = ["--limit", args.limit] if args.limit else []
    for model, bits in itertools.product(args.models, args.bits):
        q = args.results / "quantized" / f"{model}_pfcr_{bits.lower()}.safetensors"
        prog = q.with_suffix(".intprog.safetensors")
        done = q.with_suffix(".run-done")  # beside the (git-ignored) quantized files
        steps = [
            (q, ["quantize", model, "--bits", bits, "--calib-size", args.calib_size, "--iters", args.iters,
                 "--out", str(q), "--limit", "1000", *common]),
            (prog, ["export", model, "--quantized", str(q), "--out", str(prog), *common]),
            (done, ["run", str(prog), "--quantized", str(q), *common, *limit]),
        ]
        for output, argv in steps:
            if output.exists():
                print(f"{model} {bits}: {argv[0]} done before, skipped", flush=True)
                continue
            print(f"{model} {bits}: pfcr {' '.join(argv)}", flush=True)
            subprocess.run([sys.executable, "-m", "cli.main", *argv], check=True, cwd=ROOT)
        done.touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
