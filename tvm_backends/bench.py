"""Latency protocol (MLPerf single-stream style) and the bit-exact check of an artifact on a device.

Warm-up runs first, then single inferences until BOTH a minimum number of runs and a minimum
duration are reached; the record keeps every run time and reports p50/p90/p99, mean and std.
Runs are timed in chunks on the device (TVM's time_evaluator), so an interrupt (Ctrl-C) or a board
that goes away loses at most the chunk in flight: the finished runs are kept and recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tvm_backends.rpc import RemoteLost

Timer = Callable[[int], list[float]]  # timer(k) times k single runs, returns their seconds


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


def torch_timer(model, x) -> Timer:
    """Per-run wall times of a torch module on the CPU (the FP32 eager baseline)."""
    import torch

    def timer(k: int) -> list[float]:
        out = []
        with torch.inference_mode():
            for _ in range(k):
                t = time.perf_counter()
                model(x)
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
