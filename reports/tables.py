"""Tables from result records: FP32 accuracy, and PTQ accuracy/agreement/KL pooled over seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' own needs the extra `tabulate` package)."""
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(t) else "---" for t in table.dtypes) + "|"
    rows = ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Top-1/top-5 of every `eval` record on a full data split, one row per model/method/bits."""
    ev = frame[frame["kind"] == "eval"].copy()
    if ev.empty:
        return pd.DataFrame(columns=["model", "data", "method", "bits", "top1 %", "top5 %", "images", "record"])
    ev = ev.reindex(columns=[*ev.columns.drop(["m.top1", "m.top5"], errors="ignore"), "m.top1", "m.top5"])
    ev["bits"] = ev["bits"].fillna("FP32")
    ev["top1 %"] = (100 * ev["m.top1"]).round(2)
    ev["top5 %"] = (100 * ev["m.top5"]).round(2)
    ev["images"] = ev["n"].astype(int)
    ev["record"] = ev["record"].map(lambda p: Path(p).name)
    cols = ["model", "data", "method", "bits", "top1 %", "top5 %", "images", "record"]
    return ev.sort_values(["model", "method", "bits"])[cols].reset_index(drop=True)


def _num(value: float, spec: str) -> str:
    """`value` formatted, '-' where the records hold none (a label-free record has no top-1)."""
    return "-" if pd.isna(value) else format(value, spec)


def _pm(series: pd.Series, scale: float, digits: int) -> str:
    mean, std = scale * series.mean(), scale * series.std(ddof=1) if len(series) > 1 else float("nan")
    return _num(mean, f".{digits}f") + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def _quantize_groups(frame: pd.DataFrame, labelled: bool):
    """`quantize` records with (labelled) or without (label-free, feature fidelity) top-1, grouped by
    (model, bits, method, variant tag) with seeds pooled."""
    if frame.empty:
        return []
    top1 = frame["m.top1"] if "m.top1" in frame else pd.Series(float("nan"), index=frame.index)  # label-free only
    q = frame[(frame["kind"] == "quantize") & (top1.notna() == labelled)]
    q = q.assign(tag=q["tag"].fillna("-")) if not q.empty else q
    return [] if q.empty else list(q.groupby(["model", "bits", "method", "tag"], sort=False))


def _sorted(rows: list[dict]) -> pd.DataFrame:
    order = {"W8A8": 0, "W6A6": 1, "W4A4": 2, "W3A3": 3, "W3A2": 4, "W2A3": 5}
    method_order = {"rtn": 0, "block": 1, "pfcr": 2}
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(
        by=["model", "bits", "method", "variant"],
        key=lambda c: c.map(order).fillna(9) if c.name == "bits" else
        c.map(method_order).fillna(9) if c.name == "method" else c).reset_index(drop=True)


def quant_table(frame: pd.DataFrame) -> pd.DataFrame:
    """`quantize` records with accuracy, one row per (model, bits, method, variant tag), seeds pooled.
    A model with random weights (no checkpoint: `random` in its variant, e.g. the main job's real-size
    latency model) has no accuracy to show and is left out."""
    rows = []
    for (model, bits, method, tag), g in _quantize_groups(frame, labelled=True):
        if "random" in str(tag).split("-"):
            continue
        rows.append({
            "model": model, "bits": bits, "method": method, "variant": tag, "seeds": len(g),
            "FP32 top1 %": _num(100 * g["m.fp_top1"].mean(), ".2f"),
            "top1 %": _pm(g["m.top1"], 100, 2),
            "Δ top1": _num(100 * (g["m.top1"] - g["m.fp_top1"]).mean(), "+.2f"),
            "agree %": _pm(g["m.agreement"], 100, 2),
            "KL": _pm(g["m.kl"], 1, 4),
            "time s": f"{g['m.seconds'].mean():.0f}",
            "peak MB": f"{g['m.peak_rss_mb'].mean():.0f}",
        })
    return _sorted(rows)


def fidelity_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Label-free `quantize` records (a pretrained backbone without labelled data): fidelity of the
    quantized model's pre-head features to FP32's on held-out images, seeds pooled, apart by what
    computed the features: the integer program (`features` "program") or, in records made before it
    was measured, the fake-quant float path ("float path"); the program's packed weights where the
    record has them (mixed-precision weights cost memory)."""
    groups = [((model, bits, method, tag, path), gp) for (model, bits, method, tag), g in
              _quantize_groups(frame, labelled=False)
              for path, gp in g.groupby(g.get("m.features", pd.Series(index=g.index, dtype=object))
                                        .fillna("float path"), sort=False)]
    rows = [{
        "model": model, "bits": bits, "method": method, "variant": tag, "features": path, "seeds": len(g),
        "images": int(g["n"].iloc[0]),
        "feature cosine": _pm(g["m.feature_cosine_mean"], 1, 4),
        "cosine p5": _pm(g["m.feature_cosine_p5"], 1, 4),
        "rel. error": _pm(g["m.feature_rel_error_mean"], 1, 3),
        "5-NN overlap": _pm(g["m.knn5_overlap"], 1, 3),
        # the same for every seed of a variant; records before it was measured have none
        "weights MB": f"{g['m.weight_bytes_packed'].mean() / 1e6:.2f}"
        if "m.weight_bytes_packed" in g and g["m.weight_bytes_packed"].notna().any() else "",
        "time s": f"{g['m.seconds'].mean():.0f}",
        "peak MB": f"{g['m.peak_rss_mb'].mean():.0f}",
    } for (model, bits, method, tag, path), g in groups
        if "m.feature_cosine_mean" in g and g["m.feature_cosine_mean"].notna().any()]
    return _sorted(rows)


def integer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """`run` records: integer-only accuracy beside the quantized model's float path (the fake-quant
    protocol), whether the program is the quantized model's own (its eval forward), and memory."""
    if frame.empty or "run" not in set(frame["kind"]):
        return pd.DataFrame()
    r = frame[frame["kind"] == "run"]
    kib = 1024
    rows = [{
        "model": row["model"], "bits": row["bits"], "variant": row["tag"] or "-",
        "images": int(row["n"]),
        "integer top1 %": f"{100 * row['m.top1']:.2f}",
        "float-path top1 %": f"{100 * row['m.fake_quant_top1']:.2f}" if pd.notna(row.get("m.fake_quant_top1")) else "",
        "float-path agree %": f"{100 * row['m.vs_fake_quant_agreement']:.2f}"
        if pd.notna(row.get("m.vs_fake_quant_agreement")) else "",
        "= quantized model": {1: "yes", 0: "NO"}.get(row.get("m.quantized_program_identical"), ""),
        "weights KiB (packed / FP32)":
            f"{row['m.weight_bytes_packed'] / kib:.0f} / {row['m.weight_bytes_fp32'] / kib:.0f}",
        "peak activations KiB/image": f"{row['m.peak_activation_bytes'] / kib:.1f}",
    } for _, row in r.iterrows()]
    return pd.DataFrame(rows).sort_values(["model", "bits"]).reset_index(drop=True)
