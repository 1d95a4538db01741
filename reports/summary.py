"""The report: tables and figures from result records, as Markdown, CSV and one self-contained HTML
page, and the README's results section."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from core.errors import SuiteError
from core.files import atomic_write
from reports.html import render_html
from reports.load import records_frame
from reports.section import Section
from reports.tables import markdown

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def build_sections(results: str | os.PathLike | None, out: Path, modules: Sequence[str]) -> list[Section]:
    """Compute the tables and draw the figures (PNG files in `out`): each report module's
    `sections(frame, out)`, in the order given (the parts' order, cli.parts.PARTS)."""
    frame = records_frame(results)
    return [s for name in modules for s in importlib.import_module(name).sections(frame, out)]


def render_markdown(sections: list[Section], link_base: Path) -> str:
    """Markdown of the sections; figure links relative to `link_base` (the file's folder)."""
    parts = []
    for s in sections:
        parts += [f"**{s.title}**", markdown(s.table) if not s.table.empty else f"_{s.empty_note}_"]
        for f in s.figures:
            where = ", ".join(f"`{p}`" for p in f.patterns)  # code spans: `*` and `_` stay as they are
            parts += [f"![{f.path.stem}]({os.path.relpath(f.path, link_base)})",
                      f"_From {len(set(f.records))} records:_ {where}"]
    return "\n\n".join(parts)


def write_summary(results: str | os.PathLike | None, out: str | os.PathLike, modules: Sequence[str],
                  readme: str | os.PathLike | None = None) -> str:
    """Write summary.md, report.html and one CSV per table into `out`; optionally rewrite the
    README's results section. Returns the Markdown."""
    out = Path(out)
    sections = build_sections(results, out, modules)
    md = render_markdown(sections, out)
    for s in sections:
        atomic_write(out / f"{s.name}.csv", s.table.to_csv(index=False))
    atomic_write(out / "summary.md", "# Results\n\n" + md + "\n")
    atomic_write(out / "report.html", render_html(sections))
    if readme is not None:
        text = Path(readme).read_text()
        pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
        if not pattern.search(text):
            raise SuiteError(f"{readme} has no {README_START} ... {README_END} section to rewrite; "
                             "add the two marker lines where the table goes")
        body = render_markdown(sections, Path(readme).resolve().parent)
        atomic_write(readme, pattern.sub(lambda _: f"{README_START}\n{body}\n{README_END}", text))
    return md
