"""PFCR on a CUDA device: `pfcr quantize --device cuda` of the zoo ViT (W4A4, the main job's short
schedule) on a GPU machine that has torch and timm but neither the suite's other dependencies nor
the Fashion-MNIST package, and only 64 MiB of files travelling with the repository.

    python benchmarks/gpu_quantize_check.py prepare   # here: build/gpu_quantize (about 2 MB)
    python3 benchmarks/gpu_quantize_check.py run      # there: a `quantize` record in $OUT/gpu

`prepare` writes Fashion-MNIST IDX files in which every image the run does not read (all but the
seeded calibration draw and the first --limit test images) is zero, so they compress to almost
nothing, and downloads the wheels of the pure-Python dependencies the GPU image lacks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "build" / "gpu_quantize"
CALIB, ITERS, LIMIT, SEED = 256, 20, 2000, 0
WHEELS = ["jsonschema", "referencing", "jsonschema-specifications", "rpds-py", "attrs", "safetensors", "tqdm"]


def prepare(python: str) -> int:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from core.data import FMNIST_FILES, calibration_manifest, load_fmnist_arrays, write_idx

    data = BUNDLE / "fmnist"
    data.mkdir(parents=True, exist_ok=True)
    for split, keep in (("train", None), ("test", np.arange(LIMIT))):
        images, labels = load_fmnist_arrays(split)
        if keep is None:
            keep = np.asarray(calibration_manifest(CALIB, SEED, len(images)).indices)
        sparse = np.zeros_like(images)
        sparse[keep] = images[keep]
        img, lab = FMNIST_FILES[split]
        write_idx(data / img, sparse)
        write_idx(data / lab, labels)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "--python-version", python, "-d", str(BUNDLE / "wheels"), *WHEELS], check=True)
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file())
    print(f"{BUNDLE}: {size / 2**20:.1f} MiB (carry build/gpu_quantize)")
    return 0


def run() -> int:
    site = BUNDLE / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                    str(site), *map(str, (BUNDLE / "wheels").glob("*.whl"))], check=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{site}", "PFCR_FMNIST_DIR": str(BUNDLE / "fmnist")}
    out = Path(os.environ.get("OUT", ROOT / "benchmarks/results")) / "gpu"
    argv = ["quantize", "vit_fmnist", "--bits", "W4A4", "--method", "pfcr", "--calib-size", str(CALIB),
            "--iters", str(ITERS), "--seed", str(SEED), "--limit", str(LIMIT), "--device", "cuda", "--tag", "gpu",
            "--results", str(out), "--out", str(BUNDLE / "q.safetensors")]
    return subprocess.run([sys.executable, "-m", "cli.main", *argv], env=env, cwd=ROOT).returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "run"])
    ap.add_argument("--python", default="3.12", help="the GPU image's Python version (prepare)")
    args = ap.parse_args()
    return prepare(args.python) if args.step == "prepare" else run()


if __name__ == "__main__":
    sys.exit(main())
