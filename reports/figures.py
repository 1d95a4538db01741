"""Plots from result records. Each returns the records it drew from, so captions can name them."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from core.files import atomic_path

BITS_ORDER = ["W8A8", "W4A4", "W3A3", "W3A2", "W2A3"]
METHOD_STYLE = {"rtn": ("tab:gray", "o"), "block": ("tab:blue", "s"), "pfcr": ("tab:red", "D")}


def _quantize_rows(frame: pd.DataFrame, model: str, tag: str) -> pd.DataFrame:
    return frame[(frame["kind"] == "quantize") & (frame["model"] == model) & (frame["tag"] == tag)]


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def accuracy_vs_bits(frame: pd.DataFrame, model: str, path: str | os.PathLike, tag: str = "study") -> list[str]:
    """Top-1 and KL to FP32 against bit width, one line per method, error bars = std over seeds."""
    q = _quantize_rows(frame, model, tag)
    if q.empty:
        return []
    bits = [b for b in BITS_ORDER if b in set(q["bits"])]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, (color, marker) in METHOD_STYLE.items():
        g = q[q["method"] == method].groupby("bits")
        if not len(g):
            continue
        top1, kl = g["m.top1"].agg(["mean", "std"]).reindex(bits), g["m.kl"].agg(["mean", "std"]).reindex(bits)
        ax1.errorbar(bits, 100 * top1["mean"], yerr=100 * top1["std"].fillna(0), color=color, marker=marker,
                     capsize=3, label=method)
        ax2.errorbar(bits, kl["mean"], yerr=kl["std"].fillna(0), color=color, marker=marker, capsize=3, label=method)
    ax1.axhline(100 * q["m.fp_top1"].mean(), color="black", ls="--", lw=1, label="FP32")
    ax1.set(title=f"{model}: top-1 on the test set", ylabel="top-1 %", xlabel="bits")
    ax2.set(title="mean KL(FP32 || quantized)", ylabel="nats", xlabel="bits", yscale="log")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    _save(fig, path)
    return sorted(q["record"])


def ablation(frame: pd.DataFrame, model: str, path: str | os.PathLike) -> list[str]:
    """KL to FP32 and top-1 per PFCR ablation variant (records tagged 'ablation-*')."""
    q = frame[(frame["kind"] == "quantize") & (frame["model"] == model)
              & frame["tag"].fillna("").str.startswith("ablation-")]
    if q.empty:
        return []
    g = q.assign(variant=q["tag"].str.removeprefix("ablation-")).groupby("variant")
    stats = g.agg(kl=("m.kl", "mean"), kl_std=("m.kl", "std"), top1=("m.top1", "mean")).sort_values("kl")
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(stats) + 1.2))
    ax.barh(stats.index, stats["kl"], xerr=stats["kl_std"].fillna(0), color="tab:red", alpha=0.7)
    for y, (kl, top1) in enumerate(zip(stats["kl"], stats["top1"], strict=True)):
        ax.text(kl, y, f"  top-1 {100 * top1:.2f}%", va="center", fontsize=8)
    ax.set(title=f"{model} W3A3: PFCR ablation (lower is better)", xlabel="mean KL(FP32 || quantized)")
    ax.invert_yaxis()
    _save(fig, path)
    return sorted(q["record"])


def integer_vs_fake(frame: pd.DataFrame, path: str | os.PathLike) -> list[str]:
    """Integer-only beside fake-quant top-1, per model and bit width (`run` records with both)."""
    r = frame[(frame["kind"] == "run")] if not frame.empty else frame
    if r.empty or "m.fake_quant_top1" not in r:
        return []
    r = r[r["m.fake_quant_top1"].notna()]
    if r.empty:
        return []
    labels = [f"{row['model']}\n{row['bits']} {row['tag'] or ''}\n{row['n']:.0f} img"
              for _, row in r.iterrows()]
    x = range(len(r))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(r)), 3.8))
    ax.bar([i - 0.2 for i in x], 100 * r["m.fake_quant_top1"], 0.4, label="fake-quant (float nonlinearities)",
           color="tab:blue")
    ax.bar([i + 0.2 for i in x], 100 * r["m.top1"], 0.4, label="integer-only (reference executor)", color="tab:red")
    lo = 100 * min(r["m.top1"].min(), r["m.fake_quant_top1"].min())
    ax.set(ylim=(max(0.0, lo - 5), 100), ylabel="top-1 %", title="Fake-quant vs integer-only accuracy")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
    return sorted(r["record"])
