"""Report sections of the sensor simulator (hwsim/sensor): EMVA 1288 results with the photon-transfer
curve, top-1 against illuminance per ADC depth, and a natural photo through the ISP."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reports import load
from reports.figures import _save
from reports.section import Figure, Section

EMVA_KEYS = ("system_gain", "quantum_efficiency", "dark_noise_e", "dark_current_e_per_s", "full_well_e")
METHOD_LABEL = {"sensor-fp32": "", "sensor-fake-quant": " fake-quant", "sensor-intprog": " integer program"}


def _sensor_rows(frame: pd.DataFrame, method: str) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame[(frame["kind"] == "sensor") & (frame["method"] == method)]


def _caveats(r: pd.Series) -> str:
    """Which results of an emva record are biased, and why in short: from its `caveats` (result ->
    reason, as `pfcr sensor emva` prints them; a list of strings is shown as it is), the flags
    `quantization_limited` and `black_level_clips`, or, in a record older than those, the dark noise
    not resolved ('' there when it is resolved; 'none' where the record says it has no caveat)."""
    metrics = load.record(r["record"])["metrics"]
    caveats = metrics.get("caveats")
    causes = []
    if metrics.get("quantization_limited", metrics.get("dark_noise_resolved") is False):
        noise = metrics.get("dark_noise_dn")
        causes.append("quantization-limited" + (f" (dark noise {noise:.2f} DN)" if noise is not None else ""))
    if metrics.get("black_level_clips"):
        clipped = metrics.get("dark_clipped_fraction")
        causes.append("black level clips" + (f" ({100 * clipped:.1f} % of dark pixels at 0)"
                                             if clipped is not None else ""))
    if isinstance(caveats, list):
        return "; ".join([*causes, *map(str, caveats)])
    if caveats is None:  # a record from before caveats: only the dark values are known to be affected
        return f"{', '.join(causes)}: dark values not resolved" if causes else ""
    if not caveats and not causes:
        return "none"
    verdicts: dict[str, list[str]] = {}  # "not measurable" -> [dark_noise_e, ...], in the record's order
    for key, reason in caveats.items():
        # each reason is "<verdict>: <why>; <fix>", several joined by "; "
        for verdict in re.findall(r"(?:^|; )([^:;]+): ", str(reason)) or [str(reason)]:
            verdicts.setdefault(verdict, []).append(key)
    said = "; ".join(f"{', '.join(keys)} {verdict}" for verdict, keys in verdicts.items())
    return f"{', '.join(causes)}: {said}" if causes else said


def emva_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in _sensor_rows(frame, "emva1288").iterrows():
        row = {"sensor": r["model"].removeprefix("sensor-"), "tag": r["tag"]}
        for k in EMVA_KEYS:
            row[k] = f"{r[f'm.{k}']:.4g} ({100 * r[f'm.rel_error_{k}']:+.2f}%)"
            resolved = r.get("m.dark_noise_resolved", True)
            if k.startswith("dark") and not pd.isna(resolved) and not bool(resolved):
                row[k] += " below 0.5 DN: not resolved"
        row["EMVA saturation e-"] = f"{r['m.saturation_e']:.4g}"
        row["caveats"] = _caveats(r)
        row["folder"] = r["folder"]
        row["record"] = Path(r["record"]).name
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["sensor", "tag", "folder"]).reset_index(drop=True) if rows else \
        pd.DataFrame()


def photon_transfer_figure(frame: pd.DataFrame, path: Path) -> list[str]:
    """Temporal variance against mean signal (dark subtracted), log-log, with the fitted K."""
    rows = _sensor_rows(frame, "emva1288")
    if rows.empty:
        return []
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for _, r in rows.iterrows():
        ptc = load.record(r["record"])["photon_transfer"]
        signal = np.array(ptc["mu_y"]) - np.array(ptc["mu_y_dark"])
        noise = np.array(ptc["var_y"]) - np.array(ptc["var_y_dark"])
        label = f"{r['model'].removeprefix('sensor-')} {r['tag']}"
        ax.loglog(signal, noise, "o", ms=3, label=f"{label}: measured")
        ax.loglog(signal, r["m.system_gain"] * signal, "-", lw=1, label=f"K = {r['m.system_gain']:.4f} DN/e-")
    ax.set(title="Photon transfer (EMVA 1288)", xlabel="mean signal mu_y - mu_y.dark (DN)",
           ylabel="temporal variance sigma_y^2 - sigma_y.dark^2 (DN^2)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, path)
    return sorted(rows["record"])


def _sweeps(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    s = frame[(frame["kind"] == "sensor") & frame["method"].isin(list(METHOD_LABEL))]
    if s.empty:
        return s
    bits = s["bits"].fillna("FP32")
    return s.assign(study=s["tag"].str.replace(r"-lux.*$", "", regex=True), bits=bits,
                    model_label=bits + s["method"].map(METHOD_LABEL))


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Top-1 % per (study, model, ADC bits) row and illuminance column; clean = without the sensor."""
    s = _sweeps(frame)
    if s.empty:
        return pd.DataFrame()
    pivot = s.pivot_table(index=["study", "model_label", "m.adc_bits", "n"], columns="m.lux", values="m.top1")
    pivot = (100 * pivot).round(1)
    pivot.columns = [f"{lux:g} lux" for lux in pivot.columns]
    clean = s.groupby(["study", "model_label", "m.adc_bits", "n"])["m.clean_top1"].first()
    out = pivot.assign(clean=(100 * clean).round(1)).reset_index()
    out["m.adc_bits"] = out["m.adc_bits"].astype(int)
    return out.rename(columns={"model_label": "model", "m.adc_bits": "ADC bits", "n": "images"})


def _model_order(label: str) -> tuple:
    """FP32 first, then wider bits first, fake-quant before the integer program of the same bits."""
    bits = label.split()[0]
    return (bits != "FP32", -int(bits[1:].split("A")[0]) if bits != "FP32" else 0, "integer" in label)


def accuracy_figures(frame: pd.DataFrame, out: Path) -> list[Figure]:
    """One figure per study: a panel per model, top-1 against illuminance, a line per ADC depth."""
    s = _sweeps(frame)
    figures = []
    for study, g in (s.groupby("study") if not s.empty else []):
        models = sorted(g["model_label"].unique(), key=_model_order)
        fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), sharey=True, squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            m = g[g["model_label"] == model]
            for adc_bits, line in m.groupby("m.adc_bits"):
                line = line.sort_values("m.lux")
                ax.semilogx(line["m.lux"], 100 * line["m.top1"], marker="o", ms=3, label=f"{adc_bits:.0f}-bit ADC")
            ax.axhline(100 * m["m.clean_top1"].iloc[0], color="black", ls="--", lw=1, label="no sensor")
            ax.set(title=model, xlabel="scene illuminance (lux)")
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel(f"top-1 % ({int(g['n'].iloc[0])} test images)")
        axes[0][-1].legend(fontsize=7)
        path = out / f"sensor_accuracy_{study}.png"
        _save(fig, path)
        figures.append(Figure(path, sorted(g["record"])))
    return figures


def photo_figure(frame: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, list[Figure]]:
    """Scene, raw mosaic and ISP output of each photo record (the PNGs its command wrote)."""
    rows = _sensor_rows(frame, "isp-photo")
    if rows.empty:
        return pd.DataFrame(), []
    table = pd.DataFrame({"image": rows["data"], "sensor": rows["model"].str.removeprefix("sensor-"),
                          "lux": rows["m.lux"], "exposure ms": (1e3 * rows["m.exposure_s"]).round(2),
                          "white e-": rows["m.white_electrons"].round(0), "PSNR dB": rows["m.psnr_db"].round(1),
                          "folder": rows["folder"], "record": rows["record"].map(lambda p: Path(p).name)}
                         ).sort_values(["image", "lux", "folder"])
    records = []
    for _, row in rows.sort_values("record").iterrows():
        rec = load.record(row["record"])
        # The PNG paths are relative to the results folder the record was written to (its folder).
        images = {k: Path(row["record"]).parent / f for k, f in rec["images"].items()}
        if all(f.exists() for f in images.values()):
            records.append((row["record"], rec, images, row["folder"]))
    if not records:
        return table, []
    fig, axes = plt.subplots(len(records), 3, figsize=(10, 3.4 * len(records)), squeeze=False)
    for ax_row, (_, rec, images, folder) in zip(axes, records, strict=True):
        for ax, key in zip(ax_row, ("scene", "raw", "isp"), strict=True):
            img = mpimg.imread(images[key])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(f"{rec['data']['name']} {key} ({rec['config']['lux']:g} lux, {folder}/)", fontsize=9)
            ax.axis("off")
    path = out / "sensor_photo.png"
    _save(fig, path)
    return table, [Figure(path, [r[0] for r in records])]  # the records drawn: those whose PNGs are here


def sections(frame: pd.DataFrame, out: Path) -> list[Section]:
    out = Path(out)
    also = "`pfcr main` or `python benchmarks/sensor_study.py`"
    emva = Section("sensor_emva", "Sensor characterization (`pfcr sensor emva`, EMVA 1288 photon transfer): "
                   "measured (relative error to the configured value); caveats = results the sensor biases "
                   "(`pfcr sensor emva` says why and the fix)", emva_table(frame),
                   command=f"run `pfcr sensor emva`, {also}")
    used = photon_transfer_figure(frame, out / "sensor_photon_transfer.png")
    if used:
        emva.figures.append(Figure(out / "sensor_photon_transfer.png", used))
    accuracy = Section("sensor_accuracy", "Top-1 % of Fashion-MNIST seen through the simulated sensor and ISP "
                       "(`pfcr sensor sweep`, mono-3um), by scene illuminance and ADC bits",
                       accuracy_table(frame), accuracy_figures(frame, out),
                       command=f"run `pfcr sensor sweep --program PROGRAM`, {also}")
    table, figs = photo_figure(frame, out)
    photo = Section("sensor_photo", "Natural photos through the Bayer sensor and the fixed-point ISP "
                    "(`pfcr sensor photo`): scene, raw mosaic, ISP output", table, figs,
                    command=f"run `pfcr sensor photo --image astronaut`, {also}")
    return [emva, accuracy, photo]
