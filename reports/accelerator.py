"""Report sections of the accelerator model: runs, per-layer cycles/energy, accuracy vs accumulator
width, and the cycle counts beside SCALE-Sim's. Numbers come from `simulate` and `bench` records only."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from reports import load
from reports.figures import _save
from reports.section import Figure, Section

WIDTH_TAG = re.compile(r"accwidth-(ap_sat|ap_wrap)-(\d+)$")


def _runs(sim: pd.DataFrame) -> pd.DataFrame:
    runs = sim[~sim["tag"].fillna("").str.startswith("accwidth-")]
    cols = ["accelerator", "bits", "tag", "images", "top1 %", "bit-exact", "overflows", "cycles/image",
            "latency ms", "energy uJ", "util %", "stall %", "DRAM KiB", "peak on-chip KiB", "sim GMAC/s",
            "sim GMAC/CPU-s", "record"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({
        "accelerator": runs["method"].str.removeprefix("accel-"), "bits": runs["bits"].fillna("-"),
        "tag": runs["tag"], "images": runs["m.images"].astype("Int64"), "top1 %": (100 * runs["m.top1"]).round(2),
        "bit-exact": runs.get("m.bit_exact"), "overflows": runs["m.overflows"].astype("Int64"),
        "cycles/image": runs["m.cycles"].astype("Int64"), "latency ms": runs["m.latency_ms"].round(3),
        "energy uJ": runs["m.energy_uj"].round(1), "util %": (100 * runs["m.utilization"]).round(1),
        "stall %": (100 * runs["m.stall_cycles"] / runs["m.cycles"]).round(1),
        "DRAM KiB": (runs["m.dram_bytes"] / 1024).round(1),
        "peak on-chip KiB": (runs["m.peak_on_chip_bytes"] / 1024).round(1),
        "sim GMAC/s": (runs["m.sim_macs_per_second"] / 1e9).round(2),
        "sim GMAC/CPU-s": (runs["m.macs"] * runs["m.images"] / runs["m.sim_cpu_seconds"] / 1e9).round(2),
        "record": runs["record"]})
    return out.sort_values(["accelerator", "bits", "tag"]).reset_index(drop=True)


def _role(name: str) -> str:
    """'b3.attn.qk' -> 'attn.qk': a layer's place in a block, so blocks sum into one bar."""
    return re.sub(r"^b\d+\.", "", name)


def per_layer_figure(record: str, path: Path) -> list[str]:
    """Cycles (stalls stacked) and energy per layer role of one `simulate` record, summed over blocks."""
    rows = pd.DataFrame(load.record(record)["layers"])
    rows = rows[rows["unit"] != "layout"].assign(role=lambda d: d["name"].map(_role))
    g = rows.groupby("role", sort=False)[["compute_cycles", "stall_cycles", "energy_pj"]].sum()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.bar(g.index, g["compute_cycles"], label="compute", color="tab:blue")
    ax1.bar(g.index, g["stall_cycles"], bottom=g["compute_cycles"], label="DRAM stall", color="tab:orange")
    ax1.set(title="cycles per image (summed over blocks)", ylabel="cycles")
    ax1.legend()
    ax2.bar(g.index, g["energy_pj"] / 1e6, color="tab:green")
    ax2.set(title="energy per image", ylabel="uJ")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=70)
        ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
    return [record]


def width_figure(sim: pd.DataFrame, path: Path) -> list[str]:
    """Top-1 against accumulator width, one line per (bits, overflow mode)."""
    w = sim[sim["tag"].fillna("").str.match(WIDTH_TAG.pattern)]
    if w.empty:
        return []
    w = w.assign(mode=w["tag"].str.extract(WIDTH_TAG)[0].str.upper(),
                 width=w["tag"].str.extract(WIDTH_TAG)[1].astype(int), bits=w["bits"].fillna("-"))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = dict(zip(sorted(set(w["bits"])), ("tab:red", "tab:blue", "tab:gray", "tab:green"), strict=False))
    for (bits, mode), g in w.groupby(["bits", "mode"]):
        g = g.sort_values("width")
        ax.plot(g["width"], 100 * g["m.top1"], marker="o", ls="-" if mode == "AP_SAT" else "--",
                color=colors.get(bits), label=f"{bits} {mode}")
    ax.set_xticks(sorted(set(w["width"])))
    ax.set(title=f"top-1 vs accumulator width ({int(w['m.images'].iloc[0])} test images)",
           xlabel="accumulator bits", ylabel="top-1 %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return sorted(w["record"])


def width_table(sim: pd.DataFrame) -> pd.DataFrame:
    w = sim[sim["tag"].fillna("").str.match(WIDTH_TAG.pattern)]
    if w.empty:
        return pd.DataFrame(columns=["bits", "mode"])
    w = w.assign(mode=w["tag"].str.extract(WIDTH_TAG)[0].str.upper(),
                 width=w["tag"].str.extract(WIDTH_TAG)[1].astype(int), bits=w["bits"].fillna("-"))
    table = w.pivot_table(index=["bits", "mode"], columns="width", values="m.top1", aggfunc="first")
    table = (100 * table).round(2)
    table.columns = [f"{c} bits" for c in table.columns]
    return table.reset_index()


def scalesim_table(frame: pd.DataFrame) -> pd.DataFrame:
    b = frame[(frame["kind"] == "bench") & (frame["method"] == "accel-vs-scalesim")]
    if b.empty:
        return pd.DataFrame(columns=["gemm", "array", "dataflow", "ours", "SCALE-Sim"])
    rows = load.record(b["record"].iloc[-1])["comparison"]
    return pd.DataFrame([{"gemm": r["gemm"], "M,K,N": f"{r['m']},{r['k']},{r['n']}",
                          "array": f"{r['rows']}x{r['cols']}", "dataflow": r["dataflow"].upper(), "folds": r["folds"],
                          "ours": r["ours"], "SCALE-Sim": r["scalesim"], "difference": r["difference"],
                          "explained": r["explained"]} for r in rows])


def sections(frame: pd.DataFrame, out: Path) -> list[Section]:
    sim = frame[frame["kind"] == "simulate"] if not frame.empty else frame
    runs = _runs(sim) if not sim.empty else _runs(pd.DataFrame(columns=["tag"]))
    main = Section("accelerator", "Accelerator model (`pfcr simulate`): integer program on a configured array; "
                   "cycles, latency, energy and memory per image; bit-exact = identical outputs to the reference "
                   "executor", runs)
    if not runs.empty:
        pick = runs.iloc[(runs["tag"] == "main").to_numpy().argmax()]
        path = out / f"accel_layers_{pick['accelerator']}.png"
        main.figures.append(Figure(path, per_layer_figure(pick["record"], path)))
    width = Section("accelerator_width", "Accelerator: top-1 % vs accumulator width (edge-NPU array, saturating "
                    "AP_SAT or wrapping AP_WRAP accumulators)", width_table(sim) if not sim.empty else
                    pd.DataFrame())
    if not sim.empty:
        path = out / "accel_width.png"
        used = width_figure(sim, path)
        if used:
            width.figures.append(Figure(path, used))
    scale = Section("accelerator_scalesim", "Accelerator cycle model vs SCALE-Sim 3.0.0 on the same GEMMs "
                    "(SCALE-Sim reports the last cycle's index and, output-stationary, no output drain: "
                    "explained = ours - 1 - (OS: R per fold) equals its count)",
                    scalesim_table(frame) if not frame.empty else pd.DataFrame())
    return [main, width, scale]
