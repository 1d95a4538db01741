"""Studies of the accelerator model (hwsim/accelerator), each writing `simulate` records.

    python benchmarks/accel_study.py accuracy   # top-1 vs accumulator width, W3A3/W4A4/W8A8, AP_SAT/AP_WRAP
    python benchmarks/accel_study.py speed      # whole test set bit-exact run + a ViT-B-shaped program
    python benchmarks/accel_study.py scalesim   # cycle counts beside SCALE-Sim's (runs `tox -e scalesim`)

Programs: W4A4 and W3A3 are the main job's PFCR programs (benchmarks/results/main/quantized/, made
by `pfcr main`); W8A8 is built as the tests' `zoo_program` fixture builds it (rtn calibration on
128 seeded training images, then export), since the main job makes no W8A8 program. A run whose
record exists is skipped, so an interrupted study resumes. `scalesim-run` is the part that runs
inside the SCALE-Sim environment (stdlib + scalesim only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks/results/accelerator"
MAIN_PROGRAMS = ROOT / "benchmarks/results/main/quantized"
WIDTHS = (12, 14, 16, 18, 20, 24, 32)
# GEMM shapes (M, K, N) of the zoo ViT, ViT-B's attention logits of one head, and odd sizes, on three
# arrays in both dataflows (SCALE-Sim builds every cycle's address trace: ViT-B's MLP GEMMs take it GBs)
GEMMS = {"zoo-qkv": (17, 96, 288), "zoo-fc2": (17, 384, 96), "zoo-qk": (17, 32, 17), "vitb-qk": (197, 64, 197),
         "odd": (50, 70, 30), "square": (64, 64, 64)}
ARRAYS = ((32, 32), (8, 8), (16, 4))


def program_path(bits: str) -> Path:
    """The study's program for W4A4/W3A3 (main job) or W8A8 (built here, beside the others, git-ignored)."""
    if bits != "W8A8":
        path = MAIN_PROGRAMS / f"vit_fmnist_pfcr_{bits.lower()}.intprog.safetensors"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `pfcr main --results benchmarks/results/main` first")
        return path
    path = RESULTS / "quantized" / "vit_fmnist_rtn_w8a8.intprog.safetensors"
    if not path.exists():
        import torch

        from core import data, models
        from pfcr.export import export_program
        from pfcr.quant.model import QuantConfig
        from pfcr.quantize import QuantizeConfig, quantize

        torch.manual_seed(0)
        fp = models.load_model("vit_fmnist").module.eval()
        calib, _ = data.fmnist_calibration(128, seed=0)
        x = calib.tensors[0]
        qm, _ = quantize(fp, x, QuantizeConfig(method="rtn", quant=QuantConfig(8, 8), init_size=128))
        program = export_program(qm, x)
        program.meta.update({"model": "vit_fmnist", "w_bits": 8, "a_bits": 8, "method": "rtn"})
        program.save(path)
    return path


def _batches(program, limit: int | None, batch: int = 500):
    from core import data

    test = data.fmnist("test", limit=limit)
    images, labels = test.tensors[0], test.tensors[1].numpy()
    for s in range(0, len(labels), batch):
        yield program.input_codes(images[s:s + batch]), labels[s:s + batch]


def _record(path: Path, program, cfg, metrics, rows, n: int, tag: str) -> Path:
    from core.records import write_record
    from hwsim.accelerator.simulate import make_simulate_record

    rec = make_simulate_record(path.relative_to(ROOT), program, cfg, metrics, rows,
                               {"name": "fashion-mnist", "split": "test", "size": n}, 0, tag)
    return write_record(rec, RESULTS)


def _done(tag: str, bits: str, cfg_name: str) -> bool:
    from core.records import record_name

    w, a = bits[1:].split("A")
    fake = {"kind": "simulate", "model": {"name": "vit_fmnist"}, "data": {"name": "fashion-mnist", "split": "test"},
            "config": {"method": f"accel-{cfg_name}", "w_bits": int(w), "a_bits": int(a), "tag": tag}, "seed": 0}
    return (RESULTS / record_name(fake)).exists()


def accuracy(args: argparse.Namespace) -> None:
    """Top-1 vs accumulator width on the edge NPU (its array and tiling), both overflow modes."""
    from hwsim.accelerator.config import load_config
    from hwsim.accelerator.simulate import simulate
    from intprog.program import load

    base = load_config("edge-npu")
    for mode, bits in itertools.product(args.modes, args.bits):
        path = program_path(bits)
        program = load(path)
        program.meta.setdefault("w_bits", int(bits[1:].split("A")[0]))
        program.meta.setdefault("a_bits", int(bits.split("A")[1]))
        for width in args.widths:
            tag = f"accwidth-{mode.lower()}-{width}"
            if _done(tag, bits, base.name):
                print(f"{bits} {tag}: done before, skipped", flush=True)
                continue
            cfg = base.replace(acc_bits=width, overflow=mode)
            t0 = time.perf_counter()
            metrics, rows = simulate(program, _batches(program, args.limit), cfg, compare=False)
            out = _record(path, program, cfg, metrics, rows, metrics["images"], tag)
            print(f"{bits} {mode} {width:2d} bits: top-1 {100 * metrics['top1']:.2f}%, "
                  f"{metrics['overflows']} overflows in {metrics['layers_with_overflow']} layers "
                  f"({time.perf_counter() - t0:.0f} s) -> {out.name}", flush=True)


def vit_b_program(seed: int = 0):
    """A ViT-B/16-shaped integer program (224x224x3, 12 blocks, dim 768, 12 heads, MLP 3072) with
    seeded random W4A4 constants: the scale test of the simulator (values are not a trained model's)."""
    import numpy as np

    from intprog.arith import quantize_multiplier
    from intprog.nonlinear import IntLayerNorm, IntSoftmaxLog2
    from intprog.program import Program

    rng = np.random.default_rng(seed)
    dim, heads, mlp, depth, tokens = 768, 12, 3072, 12, 197
    p = Program(input={"name": "image", "shape": [3, 224, 224], "scale": 1 / 64, "zero_point": 0,
                       "qmin": -128, "qmax": 127}, output={"name": "logits", "scale": 1.0},
                meta={"model": "vit-b-shaped", "w_bits": 4, "a_bits": 4})

    def linear(name, x, k, n, in_zp, out_range, real):
        m, s = quantize_multiplier(np.full(n, real))
        lo, hi = out_range
        return p.add("linear", [x], name, {"in_zp": in_zp, "rounding": "half_up", "weight_bits": 4},
                     {"weight": rng.integers(-8, 8, (n, k)).astype(np.int8), "weight_zp": np.zeros(n, np.int64),
                      "bias": rng.integers(-500, 500, n), "multiplier": m, "shift": s,
                      "out_zp": np.full(n, 0 if lo < 0 else 8), "qmin": np.full(n, lo), "qmax": np.full(n, hi)})

    def layernorm(name, x):
        ln = IntLayerNorm.build(np.ones(dim), np.zeros(dim), 1e-6, 2.0**-12, 0.25, 8, 0, 15)
        return p.add("layernorm", [x], name, {"sqrt_c": ln.sqrt_c, "eps_term": ln.eps_term, "out_zp": 8,
                                              "qmin": 0, "qmax": 15},
                     {"multiplier": ln.multiplier, "shift": ln.shift, "sign": ln.sign, "beta_fixed": ln.beta_fixed})

    i32 = (-(1 << 31), (1 << 31) - 1)
    x = p.add("patchify", ["image"], "patches", {"patch": 16})
    x = linear("embed", x, 768, dim, 0, i32, 1.0)
    x = p.add("prepend", [x], "tokens", consts={"token": rng.integers(-4096, 4096, dim)})
    x = p.add("add_const", [x], "stream0", consts={"value": rng.integers(-4096, 4096, (tokens, dim))})
    sm = IntSoftmaxLog2.build(0.05, 4)
    for b in range(depth):
        t = f"b{b}."
        h = layernorm(t + "ln1", x)
        qkv = linear(t + "qkv", h, dim, 3 * dim, 8, (0, 15), 2.0**-7)
        qkv_heads = [p.add("split_heads", [qkv], t + n, {"start": j * dim, "dim": dim, "heads": heads})
                     for j, n in enumerate("qkv")]
        a = p.add("attention", qkv_heads, t + "attn", {"q_zp": 8, "k_zp": 8, "v_zp": 8, "sm_multiplier": sm.multiplier,
                                                       "sm_shift": sm.shift, "bits": 4, "max_code": 15})
        a = p.add("merge_heads", [a], t + "attn_merged")
        m, s = quantize_multiplier(np.array([2.0**-17]))
        a = p.add("requantize", [a], t + "proj_in", {"rounding": "half_up"},
                  {"multiplier": m, "shift": s, "out_zp": np.array([8]), "qmin": np.array([0]), "qmax": np.array([15])})
        a = linear(t + "proj", a, dim, dim, 8, i32, 1.0)
        x = p.add("add", [x, a], t + "stream_attn")
        h = layernorm(t + "ln2", x)
        h = linear(t + "fc1", h, dim, mlp, 8, (-127, 127), 2.0**-6)
        h = p.add("lut", [h], t + "gelu", {"in_bits": 8},
                  {"table": np.clip(np.arange(-128, 128) // 16 + 8, 0, 15).astype(np.int64)})
        h = linear(t + "fc2", h, mlp, dim, 8, i32, 1.0)
        x = p.add("add", [x, h], t + "stream")
    x = p.add("take_token", [x], "cls", {"index": 0})
    x = layernorm("norm", x)
    linear("logits", x, dim, 1000, 8, i32, 1.0)
    return p


def speed(args: argparse.Namespace) -> None:
    """Bit-exact W4A4 run over the whole test set on the edge NPU, and one image of a ViT-B-shaped program."""
    import numpy as np

    from hwsim.accelerator.config import load_config
    from hwsim.accelerator.simulate import simulate
    from intprog.program import load

    cfg = load_config("edge-npu")
    path = program_path("W4A4")
    program = load(path)
    if not _done("speed-full-test", "W4A4", cfg.name):
        metrics, rows = simulate(program, _batches(program, args.limit), cfg, compare=True)
        out = _record(path, program, cfg, metrics, rows, metrics["images"], "speed-full-test")
        print(f"W4A4 whole test set: {metrics['sim_seconds']:.0f} s simulated ({metrics['reference_seconds']:.0f} s "
              f"reference), bit-exact {metrics['bit_exact']}, {metrics['sim_macs_per_second'] / 1e9:.2f} GMAC/s "
              f"-> {out.name}", flush=True)
    vitb = vit_b_program()
    vitb_path = RESULTS / "quantized" / "vit_b_shaped_w4a4.intprog.safetensors"
    if not vitb_path.exists():
        vitb.save(vitb_path)
    rng = np.random.default_rng(0)
    codes = rng.integers(-128, 128, (1, 3, 224, 224))
    for name in ("edge-npu", "mcu"):
        cfg = load_config(name)
        t0 = time.perf_counter()
        metrics, rows = simulate(vitb, [(codes, np.zeros(1, np.int64))], cfg, compare=True)
        metrics["wall_seconds"] = round(time.perf_counter() - t0, 2)
        del metrics["top1"]  # generated images have no labels
        from core.records import write_record
        from hwsim.accelerator.simulate import make_simulate_record

        rec = make_simulate_record(vitb_path.relative_to(ROOT), vitb, cfg, metrics, rows,
                                   {"name": "random-224x224x3", "split": "generated", "size": 1}, 0, "speed-vit-b")
        out = write_record(rec, RESULTS)
        print(f"ViT-B-shaped, one image on {name}: {metrics['macs'] / 1e9:.2f} GMAC simulated in "
              f"{metrics['sim_seconds']:.1f} s ({metrics['sim_macs_per_second'] / 1e9:.2f} GMAC/s), bit-exact "
              f"{metrics['bit_exact']}, {metrics['latency_ms']:.1f} ms at {cfg.clock_mhz:g} MHz -> {out.name}",
              flush=True)


def scalesim_jobs() -> list[dict]:
    return [{"name": f"{g}-{r}x{c}-{df}", "gemm": g, "m": m, "k": k, "n": n, "rows": r, "cols": c, "dataflow": df}
            for g, (m, k, n) in GEMMS.items() for r, c in ARRAYS for df in ("ws", "os")]


def scalesim(args: argparse.Namespace) -> None:
    """SCALE-Sim's cycles and ours on the same GEMMs and arrays, one `bench`-style record per job set."""
    from core.records import make_record, write_record
    from hwsim.accelerator.config import load_config
    from hwsim.accelerator.timing import gemm_cycles, gemm_folds

    jobs = scalesim_jobs()
    # SCALE-Sim's raw counts, kept beside the records (dot files: the records reader skips them)
    jobs_file, out = RESULTS / ".scalesim_jobs.json", RESULTS / ".scalesim_cycles.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    jobs_file.write_text(json.dumps(jobs, indent=1))
    if not out.exists():
        subprocess.run([sys.executable, "-m", "tox", "-e", "scalesim", "--", "--jobs", str(jobs_file),
                        "--out", str(out)], check=True, cwd=ROOT)
    theirs = json.loads(out.read_text())
    base = load_config("edge-npu")
    rows = []
    for job in jobs:
        cfg = base.replace(rows=job["rows"], cols=job["cols"],
                           dataflow={"ws": "weight_stationary", "os": "output_stationary"}[job["dataflow"]])
        ours = gemm_cycles(job["m"], job["k"], job["n"], cfg)
        folds = gemm_folds(job["m"], job["k"], job["n"], cfg)
        ss = theirs[job["name"]]
        # SCALE-Sim reports the last cycle's index (count - 1) and, for OS, no output drain (R per fold)
        explained = ours - 1 - (folds * job["rows"] if job["dataflow"] == "os" else 0)
        rows.append({**job, "ours": ours, "folds": folds, "scalesim": ss["total_cycles"],
                     "scalesim_with_prefetch": ss["total_cycles_incl_prefetch"],
                     "difference": ours - ss["total_cycles"], "explained": explained == ss["total_cycles"]})
        print(f"{job['name']:<24} ours {ours:>9} SCALE-Sim {ss['total_cycles']:>9} diff {ours - ss['total_cycles']:>6} "
              f"explained {explained == ss['total_cycles']}", flush=True)
    rec = make_record("bench", model={"name": "gemm-shapes", "checkpoint_sha256": None},
                      data={"name": "gemm-shapes", "split": "generated", "size": len(rows)},
                      config={"method": "accel-vs-scalesim", "tag": "scalesim"},
                      metrics={"jobs": len(rows), "explained": sum(r["explained"] for r in rows),
                               "scalesim_version": theirs.get("_version")},
                      seed=0, extra={"comparison": rows})
    print(f"-> {write_record(rec, RESULTS)}")


def scalesim_run(args: argparse.Namespace) -> None:
    """Inside the SCALE-Sim environment: run each job, write {name: cycles} (stdlib + scalesim only)."""
    import csv
    import tempfile
    from importlib import metadata

    from scalesim.scale_sim import scalesim as ScaleSim

    jobs = json.loads(Path(args.jobs).read_text())
    out = {"_version": metadata.version("scalesim")}
    for job in jobs:
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            (t / "topo.csv").write_text(f"Layer, M, N, K,\n{job['gemm']}, {job['m']}, {job['n']}, {job['k']},\n")
            (t / "layout.csv").write_text("Layer,\n")
            (t / "run.cfg").write_text(SCALESIM_CFG.format(rows=job["rows"], cols=job["cols"], df=job["dataflow"]))
            sim = ScaleSim(save_disk_space=True, verbose=False, config=str(t / "run.cfg"),
                           topology=str(t / "topo.csv"), layout=str(t / "layout.csv"), input_type_gemm=True)
            sim.run_scale(top_path=str(t / "out"))
            with open(t / "out" / "run" / "COMPUTE_REPORT.csv") as f:
                row = [c.strip() for c in list(csv.reader(f))[1]]
            out[job["name"]] = {"total_cycles_incl_prefetch": int(row[1]), "total_cycles": int(row[2]),
                                "stall_cycles": int(row[3])}
            print(job["name"], out[job["name"]], flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


# CALC bandwidth mode (reads never stall), large SRAMs: compute cycles only
SCALESIM_CFG = """[general]
run_name = run

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
ifmapsramszkB = 1024
filtersramszkB = 1024
ofmapsramszkB = 1024
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Dataflow = {df}
ReadRequestBuffer = 32
WriteRequestBuffer = 32
Bandwidth = 10

[layout]
IfmapCustomLayout = False
FilterCustomLayout = False
IfmapSRAMBankBandwidth = 10
IfmapSRAMBankNum = 10
IfmapSRAMBankPort = 2
FilterSRAMBankBandwidth = 10
FilterSRAMBankNum = 10
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 8
RandomNumberGeneratorSeed = 40
"""


def main() -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="study", required=True)
    sp = sub.add_parser("accuracy")
    sp.add_argument("--bits", nargs="+", default=["W4A4", "W3A3", "W8A8"])
    sp.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
    sp.add_argument("--modes", nargs="+", default=["AP_SAT", "AP_WRAP"])
    sp.add_argument("--limit", type=int, default=500, help="test images (the first N)")
    sp.set_defaults(func=accuracy)
    sp = sub.add_parser("speed")
    sp.add_argument("--limit", type=int, default=None)
    sp.set_defaults(func=speed)
    sp = sub.add_parser("scalesim")
    sp.set_defaults(func=scalesim)
    sp = sub.add_parser("scalesim-run")
    sp.add_argument("--jobs", required=True)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=scalesim_run)
    args = ap.parse_args()
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
