"""What a report module returns: sections, each a table and the figures drawn beside it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Figure:
    path: Path
    records: list[str]

    @property
    def caption(self) -> str:
        """Names the records the figure was drawn from, by folder and common file-name stem."""
        folder = os.path.commonpath([os.path.dirname(p) for p in self.records])
        names = [os.path.basename(p) for p in self.records]
        stem = os.path.commonprefix(names)  # noqa: RUF071 (a character prefix of file names is meant)
        where = f"{folder}/{stem}*.json" if len(names) > 1 else self.records[0]
        return f"From {len(self.records)} records: {where}"


@dataclass
class Section:
    name: str  # its CSV file's stem
    title: str
    table: pd.DataFrame
    figures: list[Figure] = field(default_factory=list)
