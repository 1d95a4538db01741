"""`pfcr compile`, `pfcr bench` and `pfcr emulate-pi`: the TVM backends on the command line.

Light to import (tvm and torch load inside the commands).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from core import arguments
from core.errors import SuiteError
from core.files import ensure_writable
from core.registry import MainJob, Stage

EMULATED_TAG = "emulated"


def _tag(preset: str, batch: int, user: str | None, emulated: bool = False, threads: int | None = None) -> str:
    """The record's tag: the target, then what sets this run apart (batch, threads beyond 1, emulated)."""
    parts = [preset] + ([f"b{batch}"] if batch != 1 else []) + ([f"t{threads}"] if threads and threads > 1 else []) \
        + ([EMULATED_TAG] if emulated else []) + ([user] if user else [])
    return "-".join(parts)


def cmd_compile(args: argparse.Namespace) -> int:
    """Integer program -> artifact folder (library + artifact.json) and a `compile` record."""
    from core.records import make_record, results_dir, write_record
    from tvm_backends.bench import model_field
    from tvm_backends.build import compile_program

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SuiteError(f"--out {out} is a file; an artifact is a folder (model.so + artifact.json): "
                         "give a folder name")
    ensure_writable(results_dir(args.results))  # before the build, not after it
    t0 = time.perf_counter()
    art = compile_program(args.program, args.target, args.out, batch=args.batch)
    meta = art.meta
    metrics = {**meta["build"], "seconds": round(time.perf_counter() - t0, 3)}
    record = make_record(
        "compile", model=model_field(meta), data={"name": Path(args.program).name, "split": "program", "size": 0},
        config={"method": "tvm", "w_bits": meta["model"].get("w_bits"), "a_bits": meta["model"].get("a_bits"),
                "tag": _tag(meta["target"]["preset"], args.batch, args.tag), "batch": args.batch},
        metrics=metrics, seed=args.seed,
        extra={"artifact": str(art.path), "target": meta["target"], "program_sha256": meta["program"]["sha256"],
               "input": meta["input"], "output": meta["output"]})
    path = write_record(record, args.results)
    cuda = f", cubins for {meta['build']['cuda_arch']}, no CUDA source" if meta["build"].get("cubin") else ""
    print(f"{args.program} -> {art.library} ({meta['target']['preset']}, {meta['build']['library_bytes'] / 1e6:.1f} MB"
          f"{cuda}) in {metrics['seconds']:.0f} s -> {path}")
    return 0


def _check_codes(args: argparse.Namespace, program) -> tuple:
    """The first --check-images images of --data as the program's input codes, their labels and the
    record's `data` field: Fashion-MNIST test images, or a folder preprocessed as the program's model
    expects (core.data.program_set checks that they fit the program's input)."""
    from core import data

    images, record, _ = data.program_set(
        args.data, "test", args.check_images, program.meta, program.input.get("shape", []), args.program,
        skip="--check-images 0 to skip the bit-exact check on images (latency is still measured)")
    x, labels = next(data.batches(images, len(images)))
    return program.input_codes(x), labels, record


def _latency_input(meta: dict, codes, seed: int):
    import numpy as np

    batch, dtype = meta["batch"], meta["input"]["dtype"]
    if codes is not None and len(codes) >= batch:
        return codes[:batch].astype(dtype)
    rng = np.random.default_rng(seed)
    return rng.integers(meta["input"]["qmin"], meta["input"]["qmax"] + 1, meta["input"]["shape"]).astype(dtype)


# The latency loop's defaults (warm-up runs, timed runs, seconds, call timeout): on a board, and on
# the emulated Pi, whose timings are not latency and where one call of a 224x224 model takes minutes.
BENCH_DEFAULTS = {False: {"warmup": 10, "min_runs": 100, "min_seconds": 5.0, "timeout": 60.0},
                  True: {"warmup": 0, "min_runs": 1, "min_seconds": 0.0, "timeout": 600.0}}


def _protocol_defaults(args: argparse.Namespace, emulated: bool) -> None:
    """Fill the loop settings the user left out with the defaults for where the artifact runs."""
    for name, value in BENCH_DEFAULTS[emulated].items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _fp32_timer(args, art, remote, emulated: bool, log):
    """(method, timer) of the FP32 baseline on the same device, or ('none', None); set up before any
    timing so that its errors cost no measurement. An emulated device gets none by default."""
    import numpy as np

    from tvm_backends.baseline import compile_fp32, torch_timer
    from tvm_backends.rpc import Runner

    mode = args.fp32
    if mode == "auto":
        local_cpu = remote.session is None and art.preset.device == "cpu"
        mode = "none" if emulated else "torch" if local_cpu else "tvm"
    if mode == "none":
        return "none", None
    shape = [art.meta["batch"], *art.meta["input"]["shape"][1:]]
    if mode == "torch":
        if remote.session is not None or art.preset.device != "cpu":
            raise SuiteError("--fp32 torch measures torch on this machine's CPU; for a board use --fp32 tvm")
        import torch

        from core.models import load_program_model

        module = load_program_model(art.meta["model"]).module.eval()
        log("FP32 baseline: torch eager on this CPU")
        return "torch-eager", torch_timer(module, torch.zeros(shape))
    lib = compile_fp32(art)
    log(f"FP32 baseline: TVM build ({lib}) on the same device")
    runner = Runner(lib, art.preset.device, remote)
    x = np.zeros(shape, "float32")
    return "tvm-fp32", lambda k: runner.timer(x, k)


def cmd_bench(args: argparse.Namespace) -> int:
    """Bit-exact check and latency of an artifact, here or on a board; a `bench` record.

    Interrupted (Ctrl-C) or cut off by the board, it records what finished (marked incomplete; an
    earlier complete record of the same name is kept, the new one goes beside it as .partial.json)
    and nothing when nothing finished; exit 130 for an interrupt."""
    import sys

    try:
        return _bench(args)
    except KeyboardInterrupt:
        print("pfcr bench: interrupted before any measurement finished; nothing was recorded", file=sys.stderr)
        return 130


def _bench(args: argparse.Namespace) -> int:
    import contextlib

    from core.data import check_source
    from core.records import results_dir, write_record
    from intprog.program import load
    from tvm_backends.artifact import Artifact
    from tvm_backends.bench import Protocol, bench_record, check_outputs, local_threads, measure
    from tvm_backends.emulate import running
    from tvm_backends.rpc import RemoteError, Runner, connect

    if args.emulated_pi and (args.rpc or args.tracker):
        raise SuiteError("--emulated-pi starts its own RPC server; leave out --rpc/--tracker")
    if args.data != arguments.FMNIST and not (args.program and args.check_images):
        raise SuiteError(f"--data {args.data} feeds the bit-exact check, which needs --program (the program the "
                         "artifact was compiled from) and --check-images N >= 1; add them, or leave --data out")
    check_source(args.data)
    art = Artifact.load(args.artifact)
    meta = art.meta
    program = codes = labels = None
    data = {"name": "random-codes", "split": "latency", "size": 0}
    if args.program:
        art.check_program(args.program)
        program = load(args.program)
    ensure_writable(results_dir(args.results))  # before anything is measured
    if program is not None and args.check_images:
        codes, labels, data = _check_codes(args, program)
    emulated = bool(args.emulated_pi)
    _protocol_defaults(args, emulated)
    protocol = Protocol(args.warmup, args.min_runs, args.min_seconds)
    with contextlib.ExitStack() as stack:
        rpc = args.rpc
        if emulated:
            if art.preset.device != "cpu" or "aarch64" not in meta["target"]["tvm"].get("mtriple", ""):
                raise SuiteError(f"the emulated Pi runs aarch64 CPU artifacts; {args.artifact} is for "
                                 f"{meta['target']['preset']}")
            host, port = stack.enter_context(running(cache=args.cache))
            rpc = f"{host}:{port}"
        remote = connect(rpc, args.tracker, args.key, timeout=args.timeout)
        emulated = emulated or "emulated" in remote.info  # e.g. `pfcr emulate-pi` reached with --rpc
        runner = Runner(art.library, art.preset.device, remote)
        checks = {}
        if codes is not None:
            check = check_outputs(runner.run, program, codes, meta["batch"], meta["input"]["dtype"])
            pred = check.pop("outputs").reshape(len(codes), -1).argmax(1)
            checks = {**check, "top1": float((pred == labels).mean())}
            print(f"bit-exact vs the reference executor on {len(codes)} images of {data['name']}: "
                  f"{check['bit_exact']} ({check['mismatched_images']} differ)")
        fp32_method, fp32_timer = _fp32_timer(args, art, remote, emulated, print)
        x = _latency_input(meta, codes, args.seed)
        # --threads applies to this machine's CPU only (a board or the emulated Pi keeps its own)
        threads = args.threads if remote.session is None and art.preset.device == "cpu" else None
        with local_threads(threads):
            env = {"TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"), "threads_arg": args.threads}  # as measured
            latency = measure(lambda k: runner.timer(x, k), protocol, print, "latency")
            fp32 = measure(fp32_timer, protocol, print, "fp32") if fp32_timer and latency.complete else None
    stopped = latency.stopped or (fp32.stopped if fp32 is not None else "")
    complete = not stopped
    if not complete and not latency.runs_s and not checks:
        print(f"nothing finished ({stopped}): nothing recorded; any earlier record is kept")
        if stopped.startswith("remote failure"):
            raise RemoteError(f"the board went away before any run finished ({stopped})")
        return 130
    device = remote.describe()
    record = bench_record(art, checks, latency, fp32_method, fp32, protocol, data=data, device=device, env=env,
                          seed=args.seed, emulated=emulated, threads=threads,
                          tag=_tag(meta["target"]["preset"], meta["batch"], args.tag, emulated, threads))
    metrics, stats = record["metrics"], latency.stats()
    path = write_record(record, args.results, complete=complete)
    what = "emulated (not latency)" if emulated else "latency"
    line = f"{what}: p50 {stats.get('p50_ms', float('nan')):.3f} ms over {stats['runs']} runs"
    if "speedup_vs_fp32_p50" in metrics:
        line += f"; FP32 ({fp32_method}) p50 {metrics['fp32_p50_ms']:.3f} ms, ratio {metrics['speedup_vs_fp32_p50']}x"
    if not complete:
        line += f"; INCOMPLETE ({stopped})"
    print(f"{line} -> {path}")
    if stopped.startswith("remote failure"):
        raise RemoteError(f"the board went away during the benchmark ({stopped}); the {stats['runs']} "
                          f"finished runs are recorded, marked incomplete, in {path}")
    if stopped == "interrupted":
        return 130
    if codes is not None and not metrics["bit_exact"]:
        raise SuiteError(f"{args.artifact} is NOT bit-exact with the reference executor on "
                         f"{metrics['mismatched_images']} of {len(codes)} images (recorded in {path})")
    return 0


def cmd_emulate_pi(args: argparse.Namespace) -> int:
    """Prepare (once) and run the emulated Raspberry Pi's RPC server until Ctrl-C."""
    from tvm_backends.emulate import check_port_free, command, prepare, serve

    if not args.prepare:
        check_port_free(args.host, args.port)  # before the (possibly long) preparation
    t0 = time.perf_counter()
    cache = prepare(Path(args.cache) if args.cache else None)
    print(f"emulated Pi ready in {time.perf_counter() - t0:.0f} s (cache {cache})", flush=True)
    if args.prepare:
        return 0
    argv, env = command(cache, args.port, host=args.host, tracker=args.tracker, key=args.key)
    print(f"serving TVM RPC on {args.host}:{args.port}"
          + (f" (registered at {args.tracker} as {args.key})" if args.tracker else "")
          + "; connect with `pfcr bench ARTIFACT --rpc "
          + f"{args.host if args.host != '0.0.0.0' else '127.0.0.1'}:{args.port}`. Emulated: no latency.",
          flush=True)
    return serve(argv, env)  # Ctrl-C, SIGTERM or SIGHUP stop the server too: it never outlives this command


def _count(minimum: int):
    """argparse type: an integer >= minimum (argparse then exits 2 with a one-line message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _seconds(minimum: float, strict: bool = False):
    """argparse type: a finite number of seconds >= minimum (> minimum when strict)."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text} is not a number of seconds {'>' if strict else '>='} {minimum:g}")
        return value

    return parse


def _port(text: str) -> int:
    port = _count(1)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def add_commands(sub: argparse._SubParsersAction) -> None:
    from tvm_backends.targets import PRESETS

    names = ", ".join(PRESETS)
    sp = sub.add_parser("compile", help="integer program -> deployable TVM library + metadata for a target")
    sp.add_argument("program", help="integer program file (`pfcr export`)")
    sp.add_argument("--target", required=True, help=f"target preset: {names}")
    sp.add_argument("--out", required=True, help="artifact folder (model.so + artifact.json)")
    sp.add_argument("--batch", type=_count(1), default=1, help="images per inference (default 1)")
    sp.add_argument("--tag", default=None, help="extra tag in the record's name")
    arguments.common(sp)
    sp.set_defaults(func=cmd_compile)

    sp = sub.add_parser("bench", help="bit-exact check and latency of an artifact, here or on a board via TVM RPC")
    sp.add_argument("artifact", help="artifact folder made by `pfcr compile`")
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--rpc", default=None, help="host:port of the board's RPC server")
    where.add_argument("--tracker", default=None, help="host:port of an RPC tracker (with --key)")
    sp.add_argument("--key", default=None, help="device key at the tracker")
    sp.add_argument("--timeout", type=_seconds(0, strict=True), default=None,
                    help="seconds to wait for the board or tracker to connect and to answer each call (default 60; "
                    "600 on the emulated Pi, where one call of a 224x224 model takes minutes)")
    sp.add_argument("--emulated-pi", action="store_true",
                    help="start the emulated Pi (qemu) and run there: correctness only, never latency")
    sp.add_argument("--cache", default=None, help="emulated Pi cache folder (default $PFCR_CACHE or ~/.cache/pfcr)")
    sp.add_argument("--program", default=None, help="the program the artifact was compiled from: checks it is the "
                    "same file and compares outputs with the reference executor")
    sp.add_argument("--check-images", type=_count(0), default=64,
                    help="images of --data (the first N of the Fashion-MNIST test split or of the folder) for the "
                    "bit-exact check with --program (default 64; 0: none)")
    arguments.data_source(sp, "the images of the bit-exact check")
    sp.add_argument("--warmup", type=_count(0), default=None, help="warm-up runs (default 10; 0 when emulated)")
    sp.add_argument("--min-runs", type=_count(1), default=None,
                    help="at least this many timed runs (default 100; 1 when emulated)")
    sp.add_argument("--min-seconds", type=_seconds(0), default=None,
                    help="and at least this long (default 5 s; 0 when emulated)")
    sp.add_argument("--fp32", choices=["auto", "torch", "tvm", "none"], default="auto",
                    help="FP32 baseline on the same device: torch eager (this CPU) or a TVM FP32 build "
                    "(default: torch here, tvm on a board, none when emulated)")
    sp.add_argument("--threads", type=_count(1), default=None, help="TVM (and torch) threads here (default: all)")
    sp.add_argument("--tag", default=None, help="extra tag in the record's name")
    arguments.common(sp)
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("emulate-pi", help="run an emulated Raspberry Pi (aarch64 under qemu) with a TVM RPC server")
    sp.add_argument("--port", type=_port, default=9090)
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--tracker", default=None, help="register at this RPC tracker (host:port)")
    sp.add_argument("--key", default="pi-emulated", help="device key at the tracker (default pi-emulated)")
    sp.add_argument("--cache", default=None, help="cache folder (default $PFCR_CACHE/emulated-pi or "
                    "~/.cache/pfcr/emulated-pi)")
    sp.add_argument("--prepare", action="store_true", help="only build the cache, do not serve")
    sp.set_defaults(func=cmd_emulate_pi)


def main_stages(job: MainJob) -> list[Stage]:
    """Per model (ViT, Swin): host build + bit-exact check + latency vs FP32, Pi 5 cross build +
    emulated bit-exact check; for the ViT also the Pi 4 build and CUDA builds for the Jetson Orin and Nano."""
    from tvm_backends.targets import PRESETS

    art, common, programs, full = job.results / "tvm", job.common, job.programs, job.full
    runs = ["--min-runs", "300", "--min-seconds", "10"] if full else ["--min-runs", "100", "--min-seconds", "3"]
    stages = []
    for name, suffix in (("vit_fmnist W4A4", ""), ("swin_fmnist W4A4", "-swin")):
        prog = str(programs[name])
        boards = ("pi4", "pi5") if not suffix else ("pi5",)
        stages += [(f"TVM: compile {name} for the host",
                    ["compile", prog, "--target", "host", "--out", str(art / f"host{suffix}"), *common]),
                   (f"TVM: host bit-exact check and latency vs FP32, {name}",
                    ["bench", str(art / f"host{suffix}"), "--program", prog, "--check-images",
                     "256" if full else "64", "--threads", "1", *runs, *common])]
        stages += [(f"TVM: cross-compile {name} for {pi}",
                    ["compile", prog, "--target", pi, "--out", str(art / f"{pi}{suffix}"), *common]) for pi in boards]
        stages.append((f"TVM: bit-exact check of {name} on the emulated Pi 5 (qemu, RPC)",
                       ["bench", str(art / f"pi5{suffix}"), "--emulated-pi", "--program", prog, "--check-images", "8",
                        "--warmup", "1", "--min-runs", "3", "--min-seconds", "0", *common]))
    stages += [(f"TVM: CUDA build for {board} ({PRESETS[board].cuda_arch}, cubin check)",
                ["compile", str(programs["vit_fmnist W4A4"]), "--target", board, "--out", str(art / board), *common])
               for board in ("jetson-orin", "jetson-nano")]
    return stages
