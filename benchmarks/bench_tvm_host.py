"""TVM on this x86 host: an integer zoo model (the main job's PFCR programs) scheduled vs PyTorch
FP32 eager, batch 1.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_tvm_host.py [--model vit_fmnist|swin_fmnist]
        [--threads 1] [--rounds 3]

Each program is lowered (tvm_backends.lower), scheduled (tvm_backends.schedules) and compiled for
the host CPU, checked bit for bit against the reference executor on the first 64 Fashion-MNIST test
images, then timed with the suite's single-stream protocol (tvm_backends.bench.measure: warm-up,
then at least N runs and S seconds, every run kept). Beside the PFCR programs, a W8A8 program made
here by round-to-nearest on the same 128 calibration images is timed too: the integer model that
matches onnxruntime's int8 one bit width for bit width. The FP32 model is timed with the same
protocol, same thread count, in the same process; the measurements are interleaved in rounds so
that load from other processes on a shared machine hits all of them alike. The unscheduled TVM
build (default fused pipeline) of W4A4 is timed beside them, to show what the schedules buy, and
so is what a user would pick instead: onnxruntime (CPU) on an int8 QDQ ONNX export of the FP32
model (static quantization, per-channel int8 weights, uint8 activations, calibrated on the same 128
seeded training images as the integer programs' rtn baseline).
Writes one `bench` record per TVM build to benchmarks/results/tvm/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROGRAMS = ROOT / "benchmarks/results/main/quantized"
RESULTS = ROOT / "benchmarks/results/tvm"
SEED = 0


def ort_int8_session(model, calib_images, threads: int, workdir: Path):
    """onnxruntime session of the FP32 model exported to ONNX and statically quantized to int8 QDQ."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre, qdq = (workdir / n for n in ("model.onnx", "model_pre.onnx", "model_qdq.onnx"))
    torch.onnx.export(model, (calib_images[:1],), str(fp32), input_names=["x"], output_names=["logits"],
                      dynamo=False, opset_version=17)
    # A symbolic shape inference that fails saves its partial model, weights as external data, to the
    # working folder before raising (sym_shape_infer_temp.onnx and a <uuid1>.data): here, the temporary one.
    with contextlib.chdir(workdir):
        quant_pre_process(str(fp32), str(pre), auto_merge=True)  # the Swin's padded shapes need merged symbols
    batches = iter([{"x": calib_images[i:i + 1].numpy()} for i in range(len(calib_images))])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    quantize_static(str(pre), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"])


def rtn_program(model, calib_images, bits: int):
    """The model quantized by round-to-nearest calibration at W{bits}A{bits} and exported."""
    from pfcr.export import export_program
    from pfcr.quant.model import QuantConfig
    from pfcr.quantize import QuantizeConfig, quantize

    qm, _ = quantize(model, calib_images, QuantizeConfig(method="rtn", quant=QuantConfig(bits, bits),
                                                         init_size=len(calib_images)))
    return export_program(qm, calib_images)


def _ort_version() -> str:
    from importlib import metadata

    return metadata.version("onnxruntime")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_fmnist", help="zoo model whose main-job programs are timed")
    ap.add_argument("--threads", type=int, default=1, help="torch and TVM threads (equal)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    ap.add_argument("--min-runs", type=int, default=100)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts

    import numpy as np
    import torch
    import tvm
    from tvm import relax

    from core import data, models
    from core.records import make_record, write_record
    from intprog.program import load
    from tvm_backends.baseline import torch_timer
    from tvm_backends.bench import Protocol, call_timer, check_outputs, measure
    from tvm_backends.lower import lower
    from tvm_backends.schedules import has_vnni, schedule

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    fp = models.load_model(args.model)
    model = fp.module.eval()
    test = data.fmnist("test", limit=64)
    x_fp = test.tensors[0][:1]
    import tempfile

    calib, _ = data.fmnist_calibration(128, seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        ort_session = ort_int8_session(model, calib.tensors[0], args.threads, Path(tmp))
    images, labels = test.tensors[0].numpy(), test.tensors[1].numpy()
    ort_top1 = float(np.mean([ort_session.run(None, {"x": images[i:i + 1]})[0].argmax() == labels[i]
                              for i in range(len(images))]))

    builds = {}
    paths = {bits: PROGRAMS / f"{args.model}_pfcr_{bits.lower()}.intprog.safetensors" for bits in ("W4A4", "W3A3")}
    paths = {bits: path for bits, path in paths.items() if path.exists()}
    if not paths:
        raise SystemExit(f"no {args.model} program in {PROGRAMS}: run `pfcr main --results benchmarks/results/main` "
                         "first")
    programs = {bits: (load(path), str(path.relative_to(ROOT))) for bits, path in paths.items()}
    programs["W8A8"] = (rtn_program(model, calib.tensors[0], 8), "W8A8 round-to-nearest, 128 calibration images")
    for bits, (program, source) in programs.items():
        variants = {"tvm-llvm-host": True, "tvm-llvm-host-default": False} if bits == "W4A4" else \
            {"tvm-llvm-host": True}
        for method, scheduled in variants.items():
            lowered = lower(program, batch=1, vnni=has_vnni(target))
            t0 = time.perf_counter()
            if scheduled:
                executable = tvm.compile(schedule(lowered.mod, target), target)
            else:
                executable = tvm.compile(lowered.mod, target, relax_pipeline=relax.get_default_pipeline(target))
            compile_s = time.perf_counter() - t0
            vm = relax.VirtualMachine(executable, tvm.cpu())
            codes = program.input_codes(test.tensors[0])
            check = check_outputs(lambda a, vm=vm: vm["main"](tvm.runtime.tensor(a)).numpy(), program, codes, 1,
                                  lowered.input_dtype)
            check["top1"] = float(np.mean(check.pop("outputs").argmax(axis=1) == test.tensors[1].numpy()))
            x = tvm.runtime.tensor(codes[:1].astype(lowered.input_dtype))
            builds[(bits, method)] = {"vm": vm, "x": x, "compile_seconds": round(compile_s, 3), "check": check,
                                      "source": source, "runs": []}
            print(f"{bits} {method}: compiled in {compile_s:.1f} s, bit-exact {check['bit_exact']}", flush=True)

    protocol = Protocol(warmup=20, min_runs=args.min_runs, min_seconds=args.min_seconds)
    feed = {"x": images[:1]}
    ort_timer = call_timer(lambda: ort_session.run(None, feed))

    fp32_runs: list[float] = []
    ort_runs: list[float] = []
    for r in range(args.rounds):
        fp32_runs += measure(torch_timer(model, x_fp), protocol, what="fp32").runs_s
        ort_runs += measure(ort_timer, protocol, what="ort int8").runs_s
        for key, b in builds.items():
            b["runs"] += measure(call_timer(lambda b=b: b["vm"]["main"](b["x"])), protocol,
                                 what=" ".join(key)).runs_s
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    from tvm_backends.bench import Measurement

    fp32 = Measurement(runs_s=fp32_runs, complete=True).stats()
    ort_stats = Measurement(runs_s=ort_runs, complete=True).stats()
    threads = {"threads": args.threads, "torch_threads": torch.get_num_threads(),
               "tvm_num_threads": os.environ["TVM_NUM_THREADS"], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    for (bits, method), b in builds.items():
        tvm_stats = Measurement(runs_s=b["runs"], complete=True).stats()
        metrics = {**{f"tvm_{k}": v for k, v in tvm_stats.items()}, **{f"fp32_{k}": v for k, v in fp32.items()},
                   "speedup_vs_fp32_p50": round(fp32["p50_ms"] / tvm_stats["p50_ms"], 3),
                   "speedup_vs_fp32_mean": round(fp32["mean_ms"] / tvm_stats["mean_ms"], 3),
                   **{f"ort_int8_{k}": v for k, v in ort_stats.items()},
                   "speedup_vs_ort_int8_p50": round(ort_stats["p50_ms"] / tvm_stats["p50_ms"], 3),
                   "top1_64": b["check"]["top1"], "ort_int8_top1_64": round(ort_top1, 4),
                   "bit_exact": b["check"]["bit_exact"], "compile_seconds": b["compile_seconds"]}
        record = make_record(
            "bench", model={"name": args.model, "checkpoint_sha256": fp.checkpoint_sha256},
            data={"name": "fmnist", "split": "test", "size": 64},
            config={"method": method, "w_bits": int(bits[1]), "a_bits": int(bits[3]), "tag": f"batch1-t{args.threads}",
                    "target": str(target.export() if hasattr(target, "export") else target), "batch": 1,
                    "baseline": "torch-fp32-eager", "protocol": protocol.describe(), "rounds": args.rounds, **threads},
            metrics=metrics, seed=SEED,
            extra={"program": b["source"], "check": b["check"],
                   "runs_ms": [round(t * 1e3, 4) for t in b["runs"]],
                   "fp32_runs_ms": [round(t * 1e3, 4) for t in fp32_runs],
                   "ort_int8_runs_ms": [round(t * 1e3, 4) for t in ort_runs],
                   "ort": {"version": _ort_version(), "format": "QDQ", "weights": "int8 per channel",
                           "activations": "uint8", "calibration": "128 fmnist training images, seed 0"}})
        out = write_record(record, args.results)
        print(f"{bits} {method}: p50 {tvm_stats['p50_ms']:.3f} ms vs FP32 {fp32['p50_ms']:.3f} ms "
              f"(x{metrics['speedup_vs_fp32_p50']}), onnxruntime int8 {ort_stats['p50_ms']:.3f} ms -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
