"""Sensor study: the zoo ViT (FP32; PFCR W4A4 and W3A3 as fake-quant models and integer programs) seeing
Fashion-MNIST test images through the simulated mono-3um sensor and the fixed-point ISP, against scene
illuminance and ADC bits; plus the EMVA 1288 characterization and natural photos through the Bayer ISP.

Records go to benchmarks/results/sensor, the photos' scene, raw and ISP images (which the photo records
name) to its sensor/ folder; the study's figures, a quick look, to results/sensor_study/ (--figures, not
committed: the committed report is `pfcr report --results benchmarks/results --out docs/report`).
Resumable: every (model, illuminance, ADC bits) point is one `sensor` record, skipped when it exists with
the same fingerprint (sensor, images, model file).
The quantized models are taken from --quantized-dir (the main job's, by default); missing ones are
produced there with `pfcr quantize` and `pfcr export` at their defaults. The records name the files
they used (artifact + sha256).

    OMP_NUM_THREADS=1 python benchmarks/sensor_study.py                 # about 15 min on one core
    python benchmarks/sensor_study.py --limit 200 --lux 1 100           # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cli.main import main as pfcr  # noqa: E402

LUX = ["0.1", "0.3", "1", "3", "10", "100", "1000"]
ADC_BITS = ["6", "8", "10", "12"]


def run(argv: list[str]) -> None:
    print("$ pfcr " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    if pfcr(argv) != 0:
        raise SystemExit(f"pfcr {argv[0]} failed")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def quantized_models(folder: Path, results: Path) -> dict[str, tuple[Path, Path]]:
    """bits -> (fake-quant file, integer program file), produced at the commands' defaults if missing."""
    out = {}
    for bits in ("W4A4", "W3A3"):
        q = folder / f"vit_fmnist_pfcr_{bits.lower()}.safetensors"
        prog = q.with_suffix(".intprog.safetensors")
        if not q.exists():
            run(["quantize", "vit_fmnist", "--bits", bits, "--method", "pfcr", "--out", str(q), "--tag", "sensor-study",
                 "--results", str(results / "quantized")])
        if not prog.exists():
            run(["export", "vit_fmnist", "--quantized", str(q), "--out", str(prog), "--tag", "sensor-study",
                 "--results", str(results / "quantized")])
        out[bits] = (q, prog)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "sensor")
    p.add_argument("--quantized-dir", type=Path, default=ROOT / "benchmarks" / "results" / "main" / "quantized")
    p.add_argument("--limit", type=int, default=1000, help="first N Fashion-MNIST test images (default 1000)")
    p.add_argument("--lux", nargs="+", default=LUX)
    p.add_argument("--adc-bits", nargs="+", default=ADC_BITS)
    p.add_argument("--seed", default="0")
    p.add_argument("--figures", type=Path, default=ROOT / "results" / "sensor_study",
                   help="where the study's figures are drawn (default results/sensor_study, not among the records)")
    args = p.parse_args()
    r = ["--results", str(args.results), "--seed", args.seed]
    t0 = time.perf_counter()
    for bits in ("12", "10"):  # 10 bits: the dark noise falls below what EMVA 1288 can resolve (a warning)
        run(["sensor", "emva", "--adc-bits", bits, *r])
    for image, lux in (("astronaut", "100"), ("astronaut", "3"), ("coffee", "30")):
        run(["sensor", "photo", "--image", image, "--lux", lux, "--max-side", "256", *r])
    models = quantized_models(args.quantized_dir, args.results)
    run(["sensor", "sweep", "--fp", "vit_fmnist", "--quantized", *(str(q) for q, _ in models.values()),
         "--program", *(str(prog) for _, prog in models.values()), "--lux", *args.lux, "--adc-bits", *args.adc_bits,
         "--limit", str(args.limit), "--tag", "study", *r])

    from reports.load import records_frame
    from reports.sensor import sections

    for section in sections(records_frame(args.results), args.figures):
        for fig in section.figures:
            print(f"figure: {fig.path}")
    print(f"sensor study done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
