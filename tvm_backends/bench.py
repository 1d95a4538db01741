"""Latency protocol (MLPerf single-stream style) and the bit-exact check of an artifact on a device.

Warm-up runs first, then single inferences until BOTH a minimum number of runs and a minimum
duration are reached; the record keeps every run time and reports p50/p90/p99, mean and std.
Runs are timed in chunks on the device (TVM's time_evaluator), so an interrupt (Ctrl-C) or a board
that goes away loses at most the chunk in flight: the finished runs are kept and recorded.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from tvm_backends.rpc import RemoteLost

Timer = Callable[[int], list[float]]  # timer(k) times k single runs, returns their seconds


@contextlib.contextmanager
def local_threads(n: int | None) -> Iterator[None]:
    """TVM's thread pool and torch's (the FP32 baseline's) at `n` threads in this process for the
    block, then back. TVM reads TVM_NUM_THREADS only when its pool starts, so in a process that ran
    TVM before (the main job runs its stages in one) only runtime.config_threadpool resizes it; the
    threads share every core this process may use. Nothing changes for n None."""
    if not n:
        yield
        return
    import torch
    import tvm

    configure = tvm.get_global_func("runtime.config_threadpool")
    cpus = [str(c) for c in sorted(os.sched_getaffinity(0))]
    env, torch_threads = os.environ.get("TVM_NUM_THREADS"), torch.get_num_threads()
    os.environ["TVM_NUM_THREADS"] = str(n)
    configure(-3, n, cpus)  # -3: kSpecifyThreadShareAllCore
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        configure(-3, int(env) if env else len(cpus), cpus)
        if env is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = env


@dataclass(frozen=True)
class Protocol:
    warmup: int = 10
    min_runs: int = 100
    min_seconds: float = 5.0
    chunk_seconds: float = 0.5  # one device call times about this long

    def describe(self) -> dict:
        return {"warmup": self.warmup, "min_runs": self.min_runs, "min_seconds": self.min_seconds,
                "style": "single-stream: min runs AND min duration, per-run times"}


@dataclass
class Measurement:
    runs_s: list[float] = field(default_factory=list)
    complete: bool = False
    stopped: str = ""  # why it ended early: 'interrupted' or the remote failure
    wall_seconds: float = 0.0

    def stats(self) -> dict:
        """p50/p90/p99, mean, std, min, max in milliseconds, and the number of runs."""
        ms = np.asarray(self.runs_s) * 1e3
        if ms.size == 0:
            return {"runs": 0}
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return {"runs": int(ms.size), "p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4),
                "p99_ms": round(float(p99), 4), "mean_ms": round(float(ms.mean()), 4),
                "std_ms": round(float(ms.std(ddof=1)) if ms.size > 1 else 0.0, 4),
                "min_ms": round(float(ms.min()), 4), "max_ms": round(float(ms.max()), 4),
                "wall_seconds": round(self.wall_seconds, 3)}


def measure(timer: Timer, protocol: Protocol, log=print, what: str = "") -> Measurement:
    """Run the protocol; KeyboardInterrupt and remote failures end it early with the runs so far."""
    m = Measurement()
    try:
        warm = timer(max(protocol.warmup, 1))
        per_run = max(min(warm[-3:]) if warm else 1e-3, 1e-6)
        chunk = int(min(max(protocol.chunk_seconds / per_run, 1), 1000))
        t0 = time.perf_counter()
        while len(m.runs_s) < protocol.min_runs or m.wall_seconds < protocol.min_seconds:
            m.runs_s += timer(chunk)
            m.wall_seconds = time.perf_counter() - t0
        m.complete = True
    except KeyboardInterrupt:
        m.stopped = "interrupted"
        log(f"{what}: interrupted after {len(m.runs_s)} runs; keeping them")
    except RemoteLost as err:
        m.stopped = f"remote failure: {err}"
        log(f"{what}: the device went away after {len(m.runs_s)} runs; keeping them")
    return m


def call_timer(run: Callable[[], object]) -> Timer:
    """Per-run wall times of k calls of `run` in this process."""
    def timer(k: int) -> list[float]:
        out = []
        for _ in range(k):
            t = time.perf_counter()
            run()
            out.append(time.perf_counter() - t)
        return out

    return timer


def check_outputs(run: Callable[[np.ndarray], np.ndarray], program, codes: np.ndarray, batch: int,
                  dtype: str) -> dict:
    """Artifact outputs vs the reference executor on `codes` [N, ...], batch by batch (the last one
    padded); returns counts of images whose outputs differ in any element."""
    from intprog import reference

    n = len(codes)
    got = []
    for i in range(0, n, batch):
        chunk = codes[i:i + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)]) if len(chunk) < batch \
            else chunk
        got.append(run(padded.astype(dtype))[:len(chunk)])
    got = np.concatenate(got).astype(np.int64)
    want = reference.run(program, codes)
    diff = np.any(got.reshape(n, -1) != want.reshape(n, -1), axis=1)
    return {"bit_exact": bool(not diff.any()), "checked_images": n, "mismatched_images": int(diff.sum()),
            "max_abs_diff": int(np.abs(got - want).max()) if n else 0, "outputs": got}


def model_field(meta: dict) -> dict:
    """The record's `model` of an artifact (the program names its model; the checkpoint is hashed by
    the export record)."""
    return {"name": meta["model"].get("model") or "unknown", "checkpoint_sha256": None}


def _timing(m: Measurement) -> dict:
    return {**m.stats(), "complete": m.complete, "stopped": m.stopped, "runs_ms": [round(s * 1e3, 5) for s in m.runs_s]}


def bench_record(art, checks: dict, latency: Measurement, fp32_method: str, fp32: Measurement | None,
                 protocol: Protocol, *, data: dict, device: dict, env: dict, seed: int, tag: str,
                 emulated: bool = False, threads: int | None = None) -> dict:
    """The `bench` record of one artifact on one device: checks and latency in `metrics`, every run
    time in `latency` (and `fp32`). Emulated timings go to `emulated_timing` only, never to metrics.
    `threads`: the thread count asked for (TVM's and the FP32 baseline's; None: the runtime's default)."""
    from core.records import make_record

    meta, stats = art.meta, latency.stats()
    metrics, extra = {**checks, "emulated": emulated}, {}
    if fp32 is not None:
        extra["fp32"] = {"method": fp32_method, **_timing(fp32)}
    if emulated:
        extra["emulated_timing"] = _timing(latency)
    else:
        extra["latency"] = _timing(latency)
        metrics.update(stats, complete=latency.complete and (fp32 is None or fp32.complete))
        if fp32 is not None and fp32.runs_s and latency.runs_s:
            f = fp32.stats()
            metrics.update({f"fp32_{k}": f[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")},
                           speedup_vs_fp32_p50=round(f["p50_ms"] / stats["p50_ms"], 3))
    config = {"method": "tvm", "w_bits": meta["model"].get("w_bits"), "a_bits": meta["model"].get("a_bits"),
              "tag": tag, "batch": meta["batch"], "threads": threads, "fp32": fp32_method,
              "protocol": protocol.describe()}
    return make_record("bench", model=model_field(meta), data=data, config=config, metrics=metrics, seed=seed,
                       extra={**extra, "artifact": str(art.path), "target": meta["target"], "emulated": emulated,
                              "device": device, "environment": env, "program_sha256": meta["program"]["sha256"],
                              "library_sha256": meta["build"]["library_sha256"]})
