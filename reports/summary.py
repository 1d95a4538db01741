"""The summary report: tables as Markdown and CSV, and the README's results section."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pfcr.atomic import atomic_write
from pfcr.errors import SuiteError
from reports import figures
from reports.load import records_frame
from reports.tables import accuracy_table, markdown, quant_table

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def _describe(paths: list[str]) -> str:
    """Record files named by their folder and a glob-like common stem, e.g. results/study/quantize_vit*.json."""
    folder = os.path.commonpath([os.path.dirname(p) for p in paths])
    names = [os.path.basename(p) for p in paths]
    stem = os.path.commonprefix(names)  # noqa: RUF071 (a character prefix of file names is meant)
    return f"`{folder}/{stem}*.json`" if len(names) > 1 else f"`{paths[0]}`"


def write_summary(results: str | os.PathLike | None, out: str | os.PathLike,
                  readme: str | os.PathLike | None = None) -> str:
    """Write summary.md, accuracy.csv and quantization.csv into `out`; optionally rewrite the README's
    results section. Returns the Markdown."""
    frame = records_frame(results)
    fp, quant = accuracy_table(frame), quant_table(frame)
    md = "\n\n".join([
        "**FP32 models** (`pfcr eval`)", markdown(fp) if not fp.empty else "_no eval records yet_",
        "**Post-training quantization** (`pfcr quantize`; mean ± std over calibration seeds; "
        "agree = top-1 agreement with the FP32 model; KL = mean KL(FP32 || quantized) of the outputs)",
        markdown(quant) if not quant.empty else "_no quantize records yet_",
    ])
    out = Path(out)
    for model in sorted(set(frame["model"])) if not frame.empty else []:
        for name, draw in (("ptq", figures.accuracy_vs_bits), ("ablation", figures.ablation)):
            used = draw(frame, model, out / f"{name}_{model}.png")
            if used:
                md += (f"\n\n![{name} {model}]({name}_{model}.png)\n\n"
                       f"_From {len(used)} records: {_describe(used)}_")
    atomic_write(out / "accuracy.csv", fp.to_csv(index=False))
    atomic_write(out / "quantization.csv", quant.to_csv(index=False))
    atomic_write(out / "summary.md", "# Results\n\n" + md + "\n")
    if readme is not None:
        text = Path(readme).read_text()
        pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
        if not pattern.search(text):
            raise SuiteError(f"{readme} has no {README_START} ... {README_END} section to rewrite; "
                             "add the two marker lines where the table goes")
        atomic_write(readme, pattern.sub(lambda _: f"{README_START}\n{md}\n{README_END}", text))
    return md
