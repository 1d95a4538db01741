"""How a part of the suite plugs in: its commands, its stages of the main job, its report sections.

A part is a package (pfcr, hwsim's accelerator and sensor, tvm_backends) with a light `commands`
module: `add_commands(sub, args)` adds its argparse subcommands (heavy imports such as torch or
tvm stay inside the command functions, so `pfcr --help` stays fast), and the optional
`main_stages(job)` returns its stages of the main job. The one table of parts, with the report
module that draws each part's records, is `cli.parts.PARTS`: adding a part is a line there.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

# (title, pfcr command line): the title keys the stage's resume state, so it must be unique
Stage = tuple[str, list[str]]


@dataclass(frozen=True)
class Part:
    """One entry of the registry: a part's commands module and the report modules of its records
    (each with `sections(frame, out) -> list[Section]`)."""

    name: str
    commands: str
    reports: tuple[str, ...] = ()

    def module(self) -> ModuleType:
        return importlib.import_module(self.commands)

    def add_commands(self, sub: argparse._SubParsersAction) -> None:
        self.module().add_commands(sub)

    def main_stages(self, job: MainJob) -> list[Stage]:
        stages: Callable[[MainJob], list[Stage]] | None = getattr(self.module(), "main_stages", None)
        return stages(job) if stages else []


@dataclass
class MainJob:
    """What the main job's stages share: where records go, the schedule, and the integer programs
    that earlier stages write (keyed "<model> <bits>", e.g. "vit_fmnist W4A4") for later ones."""

    results: Path
    full: bool = False
    limit: int | None = None
    real: bool = False  # `pfcr main --real`: the real-model track (realvit) joins
    programs: dict[str, Path] = field(default_factory=dict)

    @property
    def common(self) -> list[str]:
        return ["--results", str(self.results)]
