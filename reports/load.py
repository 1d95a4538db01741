"""Result records -> one pandas row each, with the fields reports group and sort by."""

from __future__ import annotations

import os

import pandas as pd

from core.records import read_records


def records_frame(directory: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per record: kind, model, data, method, bits, seed, metrics (flattened) and source file."""
    rows = []
    for r in read_records(directory):
        cfg = r["config"]
        row = {"kind": r["kind"], "model": r["model"]["name"], "data": r["data"]["name"],
               "split": r["data"]["split"], "n": r["data"]["size"], "method": cfg["method"],
               "w_bits": cfg.get("w_bits"), "a_bits": cfg.get("a_bits"), "tag": cfg.get("tag"), "seed": r["seed"],
               "created": r["created"], "git_commit": r["git_commit"], "record": r["_path"]}
        row.update({f"m.{k}": v for k, v in r["metrics"].items() if not isinstance(v, (list, dict))})
        rows.append(row)
    return pd.DataFrame(rows)
