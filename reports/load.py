"""Result records -> one pandas row each, with the fields reports group and sort by; and the one
reader of a whole record file, for the fields a row does not hold (per-layer tables, run times)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from core.records import read_records, results_dir


def bits_label(w_bits: int | None, a_bits: int | None) -> str | None:
    """'W4A4', or None for a record that names no bit widths (an FP32 model, or no model at all)."""
    if w_bits is None and a_bits is None:
        return None
    w, a = ("-" if b is None else f"{b:.0f}" for b in (w_bits, a_bits))
    return f"W{w}A{a}"


COLUMNS = ["kind", "model", "data", "split", "n", "method", "w_bits", "a_bits", "bits", "tag", "seed", "created",
           "git_commit", "record", "folder"]


def records_frame(directory: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per record: kind, model, data, method, bits (w_bits, a_bits and their label, None
    without bits), seed, metrics (flattened, `m.` prefixed), the record's file and its folder relative
    to the results folder ('.' at its top: it tells apart copies of one measurement in two folders)."""
    rows = []
    root = results_dir(directory)
    for r in read_records(directory):
        cfg = r["config"]
        row = {"kind": r["kind"], "model": r["model"]["name"], "data": r["data"]["name"],
               "split": r["data"]["split"], "n": r["data"]["size"], "method": cfg["method"],
               "w_bits": cfg.get("w_bits"), "a_bits": cfg.get("a_bits"),
               "bits": bits_label(cfg.get("w_bits"), cfg.get("a_bits")), "tag": cfg.get("tag"), "seed": r["seed"],
               "created": r["created"], "git_commit": r["git_commit"], "record": r["_path"],
               "folder": Path(r["_path"]).parent.relative_to(root).as_posix()}
        row.update({f"m.{k}": v for k, v in r["metrics"].items() if not isinstance(v, (list, dict))})
        rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=COLUMNS)  # no records: the columns still


def record(path: str | os.PathLike) -> dict[str, Any]:
    """The whole record at `path` (a frame's `record` column), read once per version of the file.
    Shared between callers: read it, do not change it."""
    stat = Path(path).stat()
    return _read(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
