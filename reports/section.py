"""What a report module returns: sections, each a table and the figures drawn beside it."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


def _common_suffix(names: Sequence[str]) -> str:
    return os.path.commonprefix([n[::-1] for n in names])[::-1]  # noqa: RUF071 (characters are meant)


def _around(names: Sequence[str]) -> tuple[str, str]:
    """The longest common prefix and suffix of `names` that do not overlap in the shortest name."""
    prefix = os.path.commonprefix(list(names))  # noqa: RUF071 (a character prefix of file names is meant)
    suffix = _common_suffix([n[len(prefix):] for n in names])
    return prefix, suffix


def _candidates(names: Sequence[str]) -> Iterable[str]:
    """Glob patterns for the file names `names`, broadest first; the last one (a {a,b} list) is exact."""
    if len(names) == 1:
        yield glob.escape(names[0])
        return
    prefix, suffix = _around(names)
    yield f"{glob.escape(prefix)}*{glob.escape(suffix)}"
    tokens = [n.split("_") for n in names]
    if len({len(t) for t in tokens}) == 1:  # the same fields: a wildcard only where a field differs
        parts = []
        for column in zip(*tokens, strict=True):
            head, tail = _around(column)
            parts.append(glob.escape(head) if len(set(column)) == 1 else f"{glob.escape(head)}*{glob.escape(tail)}")
        yield re.sub(r"\*+", "*", "_".join(parts))
    middles = sorted(n[len(prefix):len(n) - len(suffix)] for n in names)
    yield f"{glob.escape(prefix)}{{{','.join(glob.escape(m) for m in middles)}}}{glob.escape(suffix)}"


def expand(pattern: str) -> list[str]:
    """The glob patterns a pattern with {a,b} alternatives stands for (as the shell's brace expansion)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    return [p for alt in m.group(1).split(",") for p in expand(pattern[:m.start()] + alt + pattern[m.end():])]


def matches(pattern: str) -> set[str]:
    """The files a caption's pattern matches, as the paths glob gives."""
    return {p for g in expand(pattern) for p in glob.glob(g)}


def _exact(folder: str, pattern: str, names: Sequence[str]) -> bool:
    return matches(os.path.join(glob.escape(folder), pattern)) == {os.path.join(folder, n) for n in names}


def _pick(names_by_folder: dict[str, list[str]], *, listing: bool = True) -> str | None:
    """The first candidate over every folder's names that matches exactly those names in each folder
    (without the list of names unless `listing`)."""
    names = sorted({n for ns in names_by_folder.values() for n in ns})
    candidates = list(_candidates(names))
    if not listing and len(names) > 1:
        candidates = candidates[:-1]
    return next((c for c in candidates if all(_exact(d, c, ns) for d, ns in names_by_folder.items())), None)


def _in_folders(folders: Sequence[str], pattern: str) -> str:
    """`pattern` in each of `folders`: 'root/{a,b}/pattern' (or 'root/{,a/}pattern' when root is one)."""
    if len(folders) == 1:
        return os.path.join(glob.escape(folders[0]), pattern)
    root = os.path.commonpath(folders)
    rels = [os.path.relpath(f, root) if root else f for f in folders]
    head = os.path.join(glob.escape(root), "") if root else ""
    if "." in rels:
        return head + "{" + ",".join("" if r == "." else os.path.join(glob.escape(r), "") for r in rels) + "}" + pattern
    return head + "{" + ",".join(glob.escape(r) for r in rels) + "}" + os.sep + pattern


def record_patterns(records: Sequence[str]) -> list[str]:
    """Glob patterns, with {a,b} alternatives, that together match exactly the files `records` (on disk
    now): one pattern across folders when a file-name pattern serves in each, else one per folder."""
    by_folder: dict[str, list[str]] = {}
    for p in sorted(set(map(str, records))):
        by_folder.setdefault(os.path.dirname(p), []).append(os.path.basename(p))
    shared = _pick(by_folder, listing=len(by_folder) == 1)  # a list of names only within one folder
    if shared is not None:
        return [_in_folders(sorted(by_folder), shared)]
    # Per folder; the list of names ({a,b}) names them exactly even when they are not on disk here.
    return [_in_folders([d], _pick({d: ns}) or list(_candidates(ns))[-1]) for d, ns in by_folder.items()]


@dataclass
class Figure:
    path: Path
    records: list[str]

    @property
    def patterns(self) -> list[str]:
        """Glob patterns ({a,b} for alternatives) that match exactly the records the figure was drawn from."""
        return record_patterns(self.records)

    @property
    def caption(self) -> str:
        """Names the records the figure was drawn from: patterns that match exactly those files."""
        return f"From {len(set(self.records))} records: {', '.join(self.patterns)}"


@dataclass
class Section:
    name: str  # its CSV file's stem
    title: str
    table: pd.DataFrame
    figures: list[Figure] = field(default_factory=list)
    # what fills the section, Markdown (commands in backticks): "run `pfcr eval MODEL` or `pfcr main`"
    command: str = field(kw_only=True)

    @property
    def empty_note(self) -> str:
        """What the report says where the table is empty: which command fills it."""
        return f"no records yet: {self.command}"
