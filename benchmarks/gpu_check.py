"""GPU check of the TVM CUDA build: bit-exactness against the reference executor and latency, on a
machine with an NVIDIA GPU but without TVM's compiler.

Two halves, because the GPU machine has torch, timm and nvcc but not TVM, and only 64 MiB travel:

    python benchmarks/gpu_check.py prepare [--program P]   # here: build/gpu_check (about 45 MB)
    bash benchmarks/gpu_check.sh                           # there: one command, writes a `bench` record

`prepare` compiles the program for Hopper (sm_90, the H100/H200) ahead of time, saves the first
Fashion-MNIST test images as input codes with the reference executor's outputs (.npy: the GPU side
needs no torch for the check), and copies a runtime-only TVM (the `tvm` and `tvm_ffi` packages
without the 250 MB compiler library, with tvm_ffi's extension for Python 3.10 to 3.13). `run`
loads that runtime, checks the GPU is the bundle's architecture, compares outputs bit for bit,
times the artifact with the single-stream protocol and torch FP32 eager on the same GPU, and
writes the record. The record is validated by the schema when read back here (`pfcr report`);
the GPU image has no jsonschema.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUNDLE = ROOT / "build" / "gpu_check"
TARGET = "cuda-sm90"
PROGRAM = ROOT / "benchmarks/results/main/quantized/vit_fmnist_pfcr_w4a4.intprog.safetensors"
PYTHONS = ("3.10", "3.12", "3.13")  # tvm_ffi's compiled extension for the GPU image's Python (3.12.3)
LIMIT_BYTES = 60 << 20
# Runtime-only TVM: what `import tvm` with TVM_USE_RUNTIME_LIB=1 needs, without the compiler.
_DROP = ("lib/libtvm_compiler.so", "3rdparty", "src", "include", "web")


def _copy_runtime(dest: Path) -> None:
    import tvm
    import tvm_ffi

    for pkg, drop in ((Path(tvm.__file__).parent, _DROP), (Path(tvm_ffi.__file__).parent, ())):
        target = dest / pkg.name
        shutil.copytree(pkg, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for rel in drop:
            p = target / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for py in PYTHONS:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--platform", "manylinux_2_28_x86_64", "--python-version", py, "-d", tmp,
                            f"apache-tvm-ffi=={tvm_ffi.__version__}"], check=True)
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    if name.startswith("tvm_ffi/core.cpython-") and name.endswith(".so"):
                        (dest / name).write_bytes(z.read(name))
    cudart = sorted(glob.glob(str(Path(sys.prefix) / "lib/python3*/site-packages/nvidia/cu13/lib/libcudart.so.13")))
    (dest / "cudart").mkdir()
    for lib in cudart[:1]:
        shutil.copy(lib, dest / "cudart" / "libcudart.so.13")  # fallback if the GPU image has none


def prepare(args: argparse.Namespace) -> int:
    """Build the bundle the GPU side runs: artifact, inputs, reference outputs, runtime-only TVM."""
    import numpy as np

    from core import data
    from core.records import git_commit
    from intprog import reference
    from intprog.program import load
    from tvm_backends.build import compile_program

    out = Path(args.bundle)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    art = compile_program(args.program, TARGET, out / "artifact")
    program = load(args.program)
    test = data.fmnist("test", limit=args.images)
    codes = program.input_codes(test.tensors[0])
    np.save(out / "codes.npy", codes.astype(art.meta["input"]["dtype"]))
    np.save(out / "labels.npy", test.tensors[1].numpy())
    np.save(out / "reference.npy", reference.run(program, codes))
    _copy_runtime(out / "runtime")
    manifest = {"program": str(args.program), "program_sha256": art.meta["program"]["sha256"], "images": args.images,
                "git_commit": git_commit(), "target": TARGET, "prepared": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB (carry it: build/gpu_check); run there: bash benchmarks/gpu_check.sh")
    if size > LIMIT_BYTES:
        raise SystemExit(f"the bundle is {size / 2**20:.1f} MiB, over the {LIMIT_BYTES >> 20} MiB that may travel")
    return 0


def _load_runtime(bundle: Path) -> None:
    """Import the carried runtime-only TVM, with a libcudart that the GPU image provides or the bundle's."""
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    sys.path.insert(0, str(bundle / "runtime"))
    try:
        ctypes.CDLL("libcudart.so.13", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        found = glob.glob(os.path.join(sys.prefix, "lib/python3*/site-packages/nvidia/cu13/lib/libcudart.so.13"))
        ctypes.CDLL((found or [str(bundle / "runtime/cudart/libcudart.so.13")])[0], mode=ctypes.RTLD_GLOBAL)
    try:
        import jsonschema  # noqa: F401
    except ImportError:  # the GPU image lacks it: the record is validated when read back (pfcr report)
        import types

        stub = types.ModuleType("jsonschema")
        stub.ValidationError = type("ValidationError", (Exception,), {})
        stub.validate = lambda record, schema: None
        sys.modules["jsonschema"] = stub


def _torch_fp32(meta: dict, protocol):
    """torch FP32 eager of the same model on the same GPU, timed per run with a device sync."""
    import torch

    from core.models import load_model
    from tvm_backends.bench import measure

    m = meta["model"]
    ckpt = m.get("checkpoint") if m.get("checkpoint") and Path(m["checkpoint"]).exists() else None  # zoo default
    module = load_model(m["model"], ckpt, **(m.get("model_kwargs") or {})).module.eval().cuda()
    x = torch.zeros(meta["batch"], *meta["input"]["shape"][1:], device="cuda")

    def timer(k: int) -> list[float]:
        out = []
        with torch.inference_mode():
            for _ in range(k):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                module(x)
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1e3)
        return out

    return measure(timer, protocol, print, "fp32 torch cuda")


def run(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle)
    _load_runtime(bundle)
    import numpy as np
    import tvm

    from core.records import write_record
    from tvm_backends.artifact import Artifact
    from tvm_backends.bench import Protocol, bench_record, measure
    from tvm_backends.cuda.runtime import load_cuda_runtime
    from tvm_backends.rpc import Runner

    load_cuda_runtime(allow_stub=False)  # a runtime-only TVM does not load its CUDA runtime by itself
    dev = tvm.cuda(0)
    if not dev.exist:
        raise SystemExit("no CUDA GPU is visible to TVM's runtime here")
    art = Artifact.load(bundle / "artifact")
    arch = "sm_" + dev.compute_version.replace(".", "")
    if arch != art.preset.cuda_arch:
        raise SystemExit(f"this GPU is {arch} ({dev.device_name}); the bundle was built for {art.preset.cuda_arch}: "
                         f"prepare it again with a preset for {arch}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    runner = Runner(art.library, "cuda")
    codes, labels, want = (np.load(bundle / f"{n}.npy") for n in ("codes", "labels", "reference"))
    batch = art.meta["batch"]
    got = np.concatenate([runner.run(codes[i:i + batch]) for i in range(0, len(codes), batch)]).astype(np.int64)
    differ = np.any(got.reshape(len(codes), -1) != want.reshape(len(codes), -1), axis=1)
    checks = {"bit_exact": bool(not differ.any()), "checked_images": len(codes), "mismatched_images": int(differ.sum()),
              "max_abs_diff": int(np.abs(got - want).max()), "top1": float((got.argmax(1) == labels).mean())}
    print(f"bit-exact on {dev.device_name} vs the reference executor on {len(codes)} images: {checks['bit_exact']} "
          f"({checks['mismatched_images']} differ)", flush=True)
    protocol = Protocol(args.warmup, args.min_runs, args.min_seconds)
    latency = measure(lambda k: runner.timer(codes[:batch], k), protocol, print, "latency")
    try:
        fp32, fp32_method = _torch_fp32(art.meta, protocol), "torch-eager-cuda"
    except Exception as err:  # the baseline is optional; its absence is recorded, not hidden
        print(f"FP32 torch baseline unavailable: {err}")
        fp32, fp32_method = None, "none"
    device = {"where": "local", "gpu": dev.device_name, "arch": arch,
              "multiprocessors": getattr(dev, "multi_processor_count", None), "bundle": manifest,
              "tvm_runtime": tvm.__version__}
    nvsmi = shutil.which("nvidia-smi")
    if nvsmi:
        device["nvidia_smi"] = subprocess.run([nvsmi, "--query-gpu=name,driver_version,clocks.max.sm",
                                               "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    record = bench_record(art, checks, latency, fp32_method, fp32, protocol,
                          data={"name": "fashion-mnist", "split": "test", "size": len(codes)}, device=device,
                          env={"python": sys.version.split()[0]}, seed=0, tag=f"{TARGET}-gpu-check")
    path = write_record(record, args.results)
    m = record["metrics"]
    ratio = f", torch FP32 p50 {m['fp32_p50_ms']:.3f} ms" if "fp32_p50_ms" in m else ""
    print(f"latency p50 {m.get('p50_ms', float('nan')):.3f} ms p99 {m.get('p99_ms', float('nan')):.3f} ms over "
          f"{m.get('runs', 0)} runs{ratio} -> {path}")
    return 0 if checks["bit_exact"] else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    sp = sub.add_parser("prepare", help="here: build the bundle the GPU machine runs")
    sp.add_argument("--program", default=str(PROGRAM), help="integer program (default: the main job's W4A4)")
    sp.add_argument("--images", type=int, default=256, help="test images for the bit-exact check")
    sp.add_argument("--bundle", default=str(BUNDLE))
    sp.set_defaults(func=prepare)
    sp = sub.add_parser("run", help="on the GPU machine: check and time the bundle, write a `bench` record")
    sp.add_argument("--bundle", default=str(BUNDLE))
    sp.add_argument("--results", default=str(ROOT / "benchmarks/results/gpu"))
    sp.add_argument("--warmup", type=int, default=50)
    sp.add_argument("--min-runs", type=int, default=1000)
    sp.add_argument("--min-seconds", type=float, default=10.0)
    sp.set_defaults(func=run)
    args = p.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
