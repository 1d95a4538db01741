"""Classifiers seen through the camera: top-1 against illuminance and ADC bits, one record per point.

The scene is a test image read as sRGB-encoded reflectance, one scene pixel per sensor pixel:
grayscale (Fashion-MNIST, or a folder's images for a one-channel model) on a monochrome sensor, or
RGB at the model's input size (a folder's images resized and cropped as the model's preprocessing
does) on a Bayer sensor. The ISP's 8-bit output is what every model sees: the integer program as
input codes (the ISP's last LUT, per channel), float and fake-quant models as that image normalized
like their own preprocessing.
A point whose record exists with the same fingerprint (sensor, images, model file) is skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import SuiteError
from core.records import make_record, record_name, results_dir, write_record
from hwsim.sensor import camera, isp
from hwsim.sensor.config import SensorConfig


@dataclass
class Evaluator:
    """One classifier: predict maps 8-bit images [N, H, W] to class indices [N]."""

    method: str  # sensor-fp32, sensor-fake-quant, sensor-intprog
    w_bits: int | None
    a_bits: int | None
    model: dict  # the record's model entry
    predict: Callable[[np.ndarray], np.ndarray]
    artifact: str | None = None
    artifact_sha256: str | None = None

    @property
    def label(self) -> str:
        return self.method if self.w_bits is None else f"{self.method} W{self.w_bits}A{self.a_bits}"


def sense(images_u8: np.ndarray, lux: float, cfg: SensorConfig, seed: int) -> tuple[np.ndarray, camera.Exposure]:
    """The camera's 8-bit output for scenes [N, H, W] (grayscale) or [N, H, W, 3] (RGB, through a Bayer
    sensor and the ISP's demosaic and colour correction) at `lux`, and the exposure it chose."""
    rgb = images_u8.ndim == 4
    exp = camera.exposure_program(cfg, lux)
    raw = camera.capture(images_u8, exp, cfg, seed)
    return isp.process(raw, camera.isp_for(cfg, exp, out_shape=images_u8.shape[1:3], gray=not rgb)), exp


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit images (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def lux_text(lux: float) -> str:
    """An illuminance for tags and file names: 1e+09 -> 1e9 (record names turn '+' into '-', so 1e+09 and
    1e-09 lux would share a file)."""
    return f"{lux:g}".replace("e+", "e")


def finite_or_none(x: float) -> float | None:
    """`x`, or None for inf / NaN (a record holds JSON numbers only: PSNR of identical images is None)."""
    return x if np.isfinite(x) else None


def _recorded_fingerprint(path: Path) -> str | None:
    """The fingerprint of the record at `path`; None when it is missing or unreadable (then it is redone)."""
    try:
        return json.loads(path.read_text())["config"].get("fingerprint")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _fingerprint(cfg: SensorConfig, ev: Evaluator, images: np.ndarray, seed: int) -> str:
    body = json.dumps([cfg.to_dict(), ev.method, ev.artifact_sha256, ev.model.get("checkpoint_sha256"), seed])
    return hashlib.sha256(body.encode() + images.tobytes()).hexdigest()[:16]


def run(evaluators: list[Evaluator], images: np.ndarray, labels: np.ndarray, luxes: Iterable[float],
        adc_bits: Iterable[int], cfg: SensorConfig, seed: int, results: str | Path | None, tag: str,
        data: dict, log: Callable[[str], None] = print) -> list[Path]:
    """Every (lux, ADC bits, evaluator) point: simulate once per (lux, bits), evaluate, write a record."""
    if len(images) == 0:
        raise SuiteError("the sweep got no images; give --limit >= 1")
    written: list[Path] = []
    clean: dict[int, np.ndarray] = {}  # each evaluator's predictions on the clean scenes
    for bits in adc_bits:
        sensor = cfg.replace(adc_bits=bits)
        for lux in luxes:
            todo = []
            for i, ev in enumerate(evaluators):
                fp = _fingerprint(sensor, ev, images, seed)
                config = {"method": ev.method, "w_bits": ev.w_bits, "a_bits": ev.a_bits,
                          "tag": f"{tag}-lux{lux_text(lux)}-adc{bits}", "sensor": sensor.to_dict(), "lux": lux,
                          "adc_bits": bits, "fingerprint": fp}
                path = results_dir(results) / record_name({"kind": "sensor", "model": ev.model, "data": data,
                                                           "config": config, "seed": seed})
                if path.exists() and _recorded_fingerprint(path) == fp:
                    log(f"  {ev.label} {lux:g} lux {bits}-bit ADC: record exists, skipped")
                    continue
                todo.append((i, ev, config))
            if not todo:
                continue
            t0 = time.perf_counter()
            seen, exp = sense(images, lux, sensor, seed)
            quality = {"psnr_db": finite_or_none(psnr_db(seen, images)), "exposure_s": exp.exposure_s,
                       "white_electrons": float(exp.white_e.max()), "lux": lux, "adc_bits": bits,
                       "white_dn": float(exp.white_e.max() * sensor.system_gain),
                       "sensor_seconds": round(time.perf_counter() - t0, 3)}
            for i, ev, config in todo:
                if i not in clean:
                    clean[i] = ev.predict(images)
                t1 = time.perf_counter()
                pred = ev.predict(seen)
                top1 = float(np.mean(pred == labels))
                # Agreement with the clean predictions needs no labels: on a folder of unlabelled
                # photos it is the only measure of what the sensor costs the model.
                metrics = {"top1": top1, "clean_top1": float(np.mean(clean[i] == labels)),
                           "clean_agreement": float(np.mean(pred == clean[i])), **quality,
                           "model_seconds": round(time.perf_counter() - t1, 2)}
                extra = {"artifact": ev.artifact, "artifact_sha256": ev.artifact_sha256} if ev.artifact else None
                record = make_record("sensor", model=ev.model, data=data, config=config, metrics=metrics,
                                     seed=seed, extra=extra)
                written.append(write_record(record, results))
                log(f"  {ev.label} {lux:g} lux {bits}-bit ADC: top-1 {100 * top1:.1f}% "
                    f"(clean {100 * metrics['clean_top1']:.1f}%), agrees with clean on "
                    f"{100 * metrics['clean_agreement']:.1f}%, PSNR {psnr_db(seen, images):.1f} dB, "
                    f"white {quality['white_electrons']:.0f} e- = {quality['white_dn']:.1f} DN")
    return written
