"""Report sections of the TVM backends: latency per target beside FP32 on the same device, the
bit-exact checks (emulated ones included, without their timings), and the compile records.

Emulated runs never enter a latency table or figure: their records hold no latency metrics."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from reports import load
from reports.figures import _save
from reports.section import Figure, Section

METHOD = "tvm"


def _bits(rows: pd.DataFrame) -> pd.Series:
    return rows["bits"].fillna("-")


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series(float("nan"), index=frame.index)


def _bench(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["kind"] == "bench") & (frame["method"] == METHOD)] if not frame.empty else frame


def _threads(path: str) -> str:
    """The thread count a bench record asked for (records before `config.threads` kept it in their
    environment); '-' for the runtime's default."""
    rec = load.record(path)
    n = rec["config"].get("threads", rec.get("environment", {}).get("threads_arg"))
    return str(n) if n else "-"


def _latency_rows(frame: pd.DataFrame) -> pd.DataFrame:
    b = _bench(frame)
    if not b.empty:
        b = b[~_col(b, "m.emulated").fillna(False).astype(bool) & _col(b, "m.p50_ms").notna()]
    cols = ["target", "model", "bits", "threads", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "FP32",
            "FP32 p50 ms", "FP32 / int p50", "bit-exact", "checked", "complete", "record"]
    if b.empty:
        return pd.DataFrame(columns=cols)
    fp32 = b["record"].map(lambda p: load.record(p)["config"].get("fp32", "none"))
    out = pd.DataFrame({
        "target": b["tag"], "model": b["model"], "bits": _bits(b), "threads": b["record"].map(_threads),
        "runs": b["m.runs"].astype("Int64"),
        **{f"{k} ms": b[f"m.{k}_ms"].round(3) for k in ("p50", "p90", "p99", "mean", "std")},
        "FP32": fp32, "FP32 p50 ms": _col(b, "m.fp32_p50_ms").round(3),
        "FP32 / int p50": _col(b, "m.speedup_vs_fp32_p50"), "bit-exact": _col(b, "m.bit_exact"),
        "checked": _col(b, "m.checked_images").astype("Int64"), "complete": b["m.complete"], "record": b["record"]})
    return out.sort_values(["target", "model", "bits"]).reset_index(drop=True)


def _checks(frame: pd.DataFrame) -> pd.DataFrame:
    b = _bench(frame)
    cols = ["target", "model", "bits", "emulated", "bit-exact", "checked images", "differing", "record"]
    if b.empty or "m.bit_exact" not in b:
        return pd.DataFrame(columns=cols)
    b = b[b["m.bit_exact"].notna()]
    out = pd.DataFrame({"target": b["tag"], "model": b["model"], "bits": _bits(b),
                        "emulated": _col(b, "m.emulated").fillna(False), "bit-exact": b["m.bit_exact"],
                        "checked images": b["m.checked_images"].astype("Int64"),
                        "differing": b["m.mismatched_images"].astype("Int64"), "record": b["record"]})
    return out.sort_values(["target", "model", "bits"]).reset_index(drop=True)


def _compiles(frame: pd.DataFrame) -> pd.DataFrame:
    c = frame[(frame["kind"] == "compile") & (frame["method"] == METHOD)] if not frame.empty else frame
    cols = ["target", "model", "bits", "compile s", "library MB", "CUDA cubins", "record"]
    if c.empty:
        return pd.DataFrame(columns=cols)
    arch = _col(c, "m.cuda_arch")
    out = pd.DataFrame({"target": c["tag"], "model": c["model"], "bits": _bits(c),
                        "compile s": c["m.compile_seconds"].round(1),
                        "library MB": (c["m.library_bytes"] / 1e6).round(2),
                        "CUDA cubins": arch.where(arch.notna(), "-"), "record": c["record"]})
    return out.sort_values(["target", "model", "bits"]).reset_index(drop=True)


def _host_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """benchmarks/bench_tvm_host.py and real_speed.py: each TVM build beside PyTorch FP32 eager and
    onnxruntime's int8 model, all timed interleaved in one process on the host the record names (its
    vector ISA, where the record has the roofline estimate); at 1 thread, and at 2 where measured."""
    b = frame[(frame["kind"] == "bench") & frame["method"].astype(str).str.startswith("tvm-llvm")] \
        if not frame.empty else frame
    cols = ["model", "bits", "build", "ISA", "p50 ms", "p90 ms", "p99 ms", "FP32 p50 ms", "onnxruntime int8 p50 ms",
            "FP32 / int p50", "onnxruntime / int p50", "2 threads p50 ms", "1 / 2 threads", "bit-exact", "record"]
    if b.empty:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({
        "model": b["model"], "bits": _bits(b),
        "build": b["method"].map(lambda m: "unscheduled" if m.endswith("-default") else "scheduled"),
        "ISA": b["record"].map(lambda p: load.record(p).get("roofline", {}).get("isa", "-")),
        **{f"{k} ms": b[f"m.tvm_{k}_ms"].round(3) for k in ("p50", "p90", "p99")},
        "FP32 p50 ms": b["m.fp32_p50_ms"].round(3), "onnxruntime int8 p50 ms": b["m.ort_int8_p50_ms"].round(3),
        "FP32 / int p50": b["m.speedup_vs_fp32_p50"], "onnxruntime / int p50": b["m.speedup_vs_ort_int8_p50"],
        "2 threads p50 ms": _col(b, "m.tvm_p50_ms_t2").round(3), "1 / 2 threads": _col(b, "m.threads_scaling_p50"),
        "bit-exact": b["m.bit_exact"], "record": b["record"]})
    return out.sort_values(["model", "build", "bits"]).reset_index(drop=True)


def latency_figure(rows: pd.DataFrame, path: Path) -> list[str]:
    """Box plots of every recorded run time: the integer build and its FP32 baseline, per target."""
    data, labels, colors = [], [], []
    for _, r in rows.iterrows():
        rec = load.record(r["record"])
        data.append(rec["latency"]["runs_ms"])
        name = f"{r['target']}\n{str(r['model']).split('_')[0]}"  # vit / swin
        labels.append(f"{name} {r['bits']}")
        colors.append("tab:red")
        if rec.get("fp32", {}).get("runs_ms"):
            data.append(rec["fp32"]["runs_ms"])
            labels.append(f"{name}\nFP32 {rec['fp32']['method']}")
            colors.append("tab:gray")
    if not data:
        return []
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(data)), 3.8))
    box = ax.boxplot(data, whis=(1, 99), showfliers=False, patch_artist=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    for patch, color in zip(box["boxes"], colors, strict=True):
        patch.set(facecolor=color, alpha=0.5)
    ax.set(ylabel="ms per inference", title="latency per run (whiskers p1..p99)", ylim=(0, None))
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
    return sorted(rows["record"])


def sections(frame: pd.DataFrame, out: Path) -> list[Section]:
    rows = _latency_rows(frame)
    latency = Section("tvm_latency", "TVM latency (`pfcr bench`): single-stream protocol, every run timed on the "
                      "device; FP32 = the same model measured on the same device (torch eager here, a TVM FP32 "
                      "build on a board); emulated runs are not latency and are left out", rows,
                      command="run `pfcr bench ARTIFACT`, `pfcr main` or, on a GPU, `python benchmarks/gpu_check.py`")
    path = Path(out) / "tvm_latency.png"
    used = latency_figure(rows, path) if not rows.empty else []
    if used:
        latency.figures.append(Figure(path, used))
    checks = Section("tvm_bit_exact", "TVM outputs vs the reference executor, bit for bit (`pfcr bench --program`),"
                     " on the host, on boards over RPC and on the emulated Pi (qemu)", _checks(frame),
                     command="run `pfcr bench ARTIFACT --program PROGRAM` or `pfcr main`")
    compiles = Section("tvm_compile", "TVM builds (`pfcr compile`): CUDA kernels compiled ahead of time into "
                       "the library (cubins, no CUDA source)", _compiles(frame),
                       command="run `pfcr compile PROGRAM --target TARGET` or `pfcr main`")
    host = Section("tvm_host", "TVM on the recording host beside PyTorch FP32 eager and onnxruntime int8 (QDQ "
                   "export of the FP32 model), batch 1, one thread (and two, for the 224x224 models), interleaved "
                   "in one process; ratios above 1: the integer build (or 2 threads) is faster",
                   _host_comparison(frame), command="run `python benchmarks/bench_tvm_host.py --model M` (the zoo) "
                   "or `python benchmarks/real_speed.py` (224x224)")
    return [latency, host, checks, compiles]
