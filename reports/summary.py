"""The headline table: accuracy per model, method and bit width, as Markdown and CSV."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from pfcr.atomic import atomic_write
from pfcr.errors import SuiteError
from reports.load import records_frame

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' own needs the extra `tabulate` package)."""
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(t) else "---" for t in table.dtypes) + "|"
    rows = ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _bits(row: pd.Series) -> str:
    if pd.isna(row["w_bits"]) and pd.isna(row["a_bits"]):
        return "FP32"
    return f"W{row['w_bits']:.0f}A{row['a_bits']:.0f}"


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Top-1/top-5 of every `eval` record on a full data split, one row per model/method/bits."""
    ev = frame[frame["kind"] == "eval"].copy()
    if ev.empty:
        return pd.DataFrame(columns=["model", "data", "method", "bits", "top1 %", "top5 %", "images", "record"])
    ev = ev.reindex(columns=[*ev.columns.drop(["m.top1", "m.top5"], errors="ignore"), "m.top1", "m.top5"])
    ev["bits"] = ev.apply(_bits, axis=1)
    ev["top1 %"] = (100 * ev["m.top1"]).round(2)
    ev["top5 %"] = (100 * ev["m.top5"]).round(2)
    ev["images"] = ev["n"].astype(int)
    ev["record"] = ev["record"].map(lambda p: Path(p).name)
    cols = ["model", "data", "method", "bits", "top1 %", "top5 %", "images", "record"]
    return ev.sort_values(["model", "method", "bits"])[cols].reset_index(drop=True)


def write_summary(results: str | os.PathLike | None, out: str | os.PathLike,
                  readme: str | os.PathLike | None = None) -> str:
    """Write summary.md and summary.csv into `out`; optionally rewrite README's results table."""
    table = accuracy_table(records_frame(results))
    md = markdown(table) if not table.empty else "_no eval records yet_"
    out = Path(out)
    atomic_write(out / "summary.csv", table.to_csv(index=False))
    atomic_write(out / "summary.md", "# Results\n\n" + md + "\n")
    if readme is not None:
        text = Path(readme).read_text()
        pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
        if not pattern.search(text):
            raise SuiteError(f"{readme} has no {README_START} ... {README_END} section to rewrite; "
                             "add the two marker lines where the table goes")
        atomic_write(readme, pattern.sub(lambda _: f"{README_START}\n{md}\n{README_END}", text))
    return md
