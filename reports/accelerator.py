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
    cols = ["accelerator", "model", "bits", "tag", "images", "top1 %", "bit-exact", "overflows", "cycles/image",
            "latency ms", "energy uJ", "util %", "stall %", "DRAM KiB", "peak on-chip KiB", "sim GMAC/s",
            "sim GMAC/CPU-s", "record"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({
        "accelerator": runs["method"].str.removeprefix("accel-"), "model": runs["model"],
        "bits": runs["bits"].fillna("-"),
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
    return out.sort_values(["accelerator", "model", "bits", "tag"]).reset_index(drop=True)


# A layer's role, from its name without the block prefix (ViT 'b3.', Swin 's0.b1.' or 's1.'), in the
# order the bars are drawn (model order); a name that none matches keeps its own.
ROLES = (
    ("embed", r"embed|stream0|pos_.*|cls.*"),  # patch embedding, position and class tokens
    ("layernorm", r"ln\d*|norm\d*|.*_norm"),
    ("qkv", r"qkv"),
    ("attn q·k", r"attn\.qk"),
    ("attn softmax", r"attn\.softmax"),
    ("attn ·v", r"attn\.av"),
    ("proj", r"proj"),
    ("requant + residual", r"proj_in|stream|stream_attn"),
    ("fc1", r"fc1"),
    ("gelu", r"gelu"),
    ("fc2", r"fc2"),
    ("patch merge", r"merge\..*|downsample.*"),  # Swin: gather, norm and reduction between stages
    ("head", r"pooled.*|logits|head.*"),
)
_BLOCK = re.compile(r"^(s\d+\.)?(b\d+\.)?")


def _role(name: str) -> str:
    """'b3.attn.qk', 's0.b1.attn.qk' -> 'attn q·k'; 's1.merge.reduction' -> 'patch merge': a layer's
    place in the model, so that blocks (and stages) sum into one bar."""
    local = _BLOCK.sub("", name)
    return next((role for role, pattern in ROLES if re.fullmatch(pattern, local)), local)


def layer_roles(record: str) -> pd.DataFrame:
    """Compute and stall cycles and energy (pJ) per image of one `simulate` record, summed by role over
    blocks and stages (layout moves cost nothing and are left out), in ROLES' order."""
    rows = pd.DataFrame(load.record(record)["layers"])
    rows = rows[rows["unit"] != "layout"].assign(role=lambda d: d["name"].map(_role))
    g = rows.groupby("role")[["compute_cycles", "stall_cycles", "energy_pj"]].sum()
    order = {role: i for i, (role, _) in enumerate(ROLES)}
    return g.loc[sorted(g.index, key=lambda r: (order.get(r, len(order)), r))]


def per_layer_figure(records: list[str], path: Path) -> list[str]:
    """A row of two panels per `simulate` record, titled with its model and bits: cycles per image
    (DRAM stalls stacked) and energy per image, by layer role summed over blocks; horizontal bars."""
    if not records:
        return []
    roles = [(r, layer_roles(r)) for r in sorted(records)]
    height = max(len(g) for _, g in roles)
    fig, axes = plt.subplots(len(roles), 2, figsize=(11, len(roles) * (0.28 * height + 1.1)), squeeze=False)
    for (record, g), (ax1, ax2) in zip(roles, axes, strict=True):
        rec = load.record(record)
        cfg = rec["config"]
        name = f"{rec['model']['name']} {load.bits_label(cfg.get('w_bits'), cfg.get('a_bits')) or ''}".strip()
        accel = cfg["method"].removeprefix("accel-")
        total = g["compute_cycles"] + g["stall_cycles"]
        ax1.barh(g.index, g["compute_cycles"], label="compute", color="tab:blue")
        ax1.barh(g.index, g["stall_cycles"], left=g["compute_cycles"], label="DRAM stall", color="tab:orange")
        ax1.set(title=f"{name} on {accel}: cycles per image", xlabel="cycles", xlim=(0, 1.05 * total.max()))
        ax1.legend(fontsize=8, loc="lower right")
        ax2.barh(g.index, g["energy_pj"] / 1e6, color="tab:green")
        ax2.set(title=f"{name}: energy per image", xlabel="uJ")
        for ax in (ax1, ax2):
            ax.invert_yaxis()  # model order, top to bottom
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Accelerator cost per layer role, summed over all blocks and stages", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return sorted(records)


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
                   "executor", runs,
                   command="run `pfcr simulate PROGRAM`, `pfcr main` or `python benchmarks/accel_study.py speed`")
    # the main job's runs (ViT and Swin), else the first run: one figure per accelerator, a row per run
    picked = runs[runs["tag"] == "main"] if (runs["tag"] == "main").any() else runs.iloc[:1]
    for accel, g in picked.groupby("accelerator"):
        path = out / f"accel_layers_{accel}.png"
        main.figures.append(Figure(path, per_layer_figure(sorted(g["record"]), path)))
    width = Section("accelerator_width", "Accelerator: top-1 % vs accumulator width (edge-NPU array, saturating "
                    "AP_SAT or wrapping AP_WRAP accumulators)", width_table(sim) if not sim.empty else
                    pd.DataFrame(), command="run `python benchmarks/accel_study.py accuracy`")
    if not sim.empty:
        path = out / "accel_width.png"
        used = width_figure(sim, path)
        if used:
            width.figures.append(Figure(path, used))
    scale = Section("accelerator_scalesim", "Accelerator cycle model vs SCALE-Sim 3.0.0 on the same GEMMs "
                    "(SCALE-Sim reports the last cycle's index and, output-stationary, no output drain: "
                    "explained = ours - 1 - (OS: R per fold) equals its count)",
                    scalesim_table(frame) if not frame.empty else pd.DataFrame(),
                    command="run `python benchmarks/accel_study.py scalesim` (SCALE-Sim runs in `tox -e scalesim`)")
    return [main, width, scale]
