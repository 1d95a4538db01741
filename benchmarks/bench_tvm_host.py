"""TVM on this x86 host: the integer zoo ViT (W4A4, W3A3) scheduled vs PyTorch FP32 eager, batch 1.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_tvm_host.py [--threads 1] [--rounds 3]

Each program is lowered (tvm_backends.lower), scheduled (tvm_backends.schedules) and compiled for
the host CPU, checked bit for bit against the reference executor on the first 64 Fashion-MNIST test
images, then timed with the suite's single-stream protocol (tvm_backends.bench.measure: warm-up,
then at least N runs and S seconds, every run kept). The FP32 model is timed with the same
protocol, same thread count, in the same process; the measurements are interleaved in rounds so
that load from other processes on a shared machine hits all of them alike. The unscheduled TVM
build (default fused pipeline) of W4A4 is timed beside them, to show what the schedules buy.
Writes one `bench` record per TVM build to benchmarks/results/tvm/.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROGRAMS = ROOT / "benchmarks/results/main/quantized"
RESULTS = ROOT / "benchmarks/results/tvm"
SEED = 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch and TVM threads (equal)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    ap.add_argument("--min-runs", type=int, default=100)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts

    import torch
    import tvm
    from tvm import relax

    from intprog.program import load
    from pfcr import data, models
    from pfcr.export import quantize_images
    from pfcr.records import make_record, write_record
    from tvm_backends.bench import Protocol, check_outputs, measure, torch_timer
    from tvm_backends.lower import lower
    from tvm_backends.schedules import schedule

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    fp = models.load_model("vit_fmnist")
    model = fp.module.eval()
    test = data.fmnist("test", limit=64)
    x_fp = test.tensors[0][:1]

    builds = {}
    for bits in ("W4A4", "W3A3"):
        path = PROGRAMS / f"vit_fmnist_pfcr_{bits.lower()}.intprog.safetensors"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `pfcr main --results benchmarks/results/main` first")
        program = load(path)
        variants = {"tvm-llvm-host": True, "tvm-llvm-host-default": False} if bits == "W4A4" else \
            {"tvm-llvm-host": True}
        for method, scheduled in variants.items():
            lowered = lower(program, batch=1)
            t0 = time.perf_counter()
            if scheduled:
                executable = tvm.compile(schedule(lowered.mod, target), target)
            else:
                executable = tvm.compile(lowered.mod, target, relax_pipeline=relax.get_default_pipeline(target))
            compile_s = time.perf_counter() - t0
            vm = relax.VirtualMachine(executable, tvm.cpu())
            codes = quantize_images(program, test.tensors[0])
            check = check_outputs(lambda a, vm=vm: vm["main"](tvm.runtime.tensor(a)).numpy(), program, codes, 1,
                                  lowered.input_dtype)
            check.pop("outputs")
            x = tvm.runtime.tensor(codes[:1].astype(lowered.input_dtype))
            builds[(bits, method)] = {"vm": vm, "x": x, "compile_seconds": round(compile_s, 3), "check": check,
                                      "path": path, "runs": []}
            print(f"{bits} {method}: compiled in {compile_s:.1f} s, bit-exact {check['bit_exact']}", flush=True)

    def tvm_timer(vm, x):
        def timer(k: int) -> list[float]:
            out = []
            for _ in range(k):
                t = time.perf_counter()
                vm["main"](x)
                out.append(time.perf_counter() - t)
            return out
        return timer

    protocol = Protocol(warmup=20, min_runs=args.min_runs, min_seconds=args.min_seconds)
    fp32_runs: list[float] = []
    for r in range(args.rounds):
        fp32_runs += measure(torch_timer(model, x_fp), protocol, what="fp32").runs_s
        for key, b in builds.items():
            b["runs"] += measure(tvm_timer(b["vm"], b["x"]), protocol, what=" ".join(key)).runs_s
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    from tvm_backends.bench import Measurement

    fp32 = Measurement(runs_s=fp32_runs, complete=True).stats()
    threads = {"threads": args.threads, "torch_threads": torch.get_num_threads(),
               "tvm_num_threads": os.environ["TVM_NUM_THREADS"], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    for (bits, method), b in builds.items():
        tvm_stats = Measurement(runs_s=b["runs"], complete=True).stats()
        metrics = {**{f"tvm_{k}": v for k, v in tvm_stats.items()}, **{f"fp32_{k}": v for k, v in fp32.items()},
                   "speedup_vs_fp32_p50": round(fp32["p50_ms"] / tvm_stats["p50_ms"], 3),
                   "speedup_vs_fp32_mean": round(fp32["mean_ms"] / tvm_stats["mean_ms"], 3),
                   "bit_exact": b["check"]["bit_exact"], "compile_seconds": b["compile_seconds"]}
        record = make_record(
            "bench", model={"name": "vit_fmnist", "checkpoint_sha256": fp.checkpoint_sha256},
            data={"name": "fmnist", "split": "test", "size": 64},
            config={"method": method, "w_bits": int(bits[1]), "a_bits": int(bits[3]), "tag": f"batch1-t{args.threads}",
                    "target": str(target.export() if hasattr(target, "export") else target), "batch": 1,
                    "baseline": "torch-fp32-eager", "protocol": protocol.describe(), "rounds": args.rounds, **threads},
            metrics=metrics, seed=SEED,
            extra={"program": str(b["path"].relative_to(ROOT)), "check": b["check"],
                   "runs_ms": [round(t * 1e3, 4) for t in b["runs"]],
                   "fp32_runs_ms": [round(t * 1e3, 4) for t in fp32_runs]})
        out = write_record(record, args.results)
        print(f"{bits} {method}: p50 {tvm_stats['p50_ms']:.3f} ms vs FP32 {fp32['p50_ms']:.3f} ms "
              f"(x{metrics['speedup_vs_fp32_p50']}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
