"""The artifact format: what `pfcr compile` writes and `pfcr bench` (or a board) reads back.

An artifact is a folder: `model.so` (the Relax VM executable, cross-linked for the board) and
`artifact.json` (target, program sha256, input/output quantization, batch, build facts, versions).
Apart from the build so that reading one needs neither TVM's compiler nor CUDA: a runtime-only TVM
loads it (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import SuiteError
from core.files import atomic_write, sha256_file
from tvm_backends.targets import Preset, get

FORMAT = "pfcr-tvm-artifact"
VERSION = 1
LIBRARY = "model.so"
METADATA = "artifact.json"


class ArtifactError(SuiteError):
    """A missing or malformed artifact, or one built from another program than the one given."""


def dist_version(dist: str) -> str | None:
    """The installed version of a distribution (e.g. "apache-tvm"), None if it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Artifact:
    path: Path
    meta: dict[str, Any]

    @property
    def library(self) -> Path:
        return self.path / self.meta["library"]

    @property
    def preset(self) -> Preset:
        return get(self.meta["target"]["preset"])

    @classmethod
    def write(cls, path: Path, meta: dict[str, Any]) -> Artifact:
        """Write the metadata beside a library already in `path`."""
        atomic_write(path / METADATA, json.dumps(meta, indent=1) + "\n")
        return cls(path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Artifact:
        """Read an artifact folder written by `pfcr compile`; ArtifactError says what is missing."""
        path = Path(path)
        meta_path = path / METADATA
        if not meta_path.is_file():
            raise ArtifactError(f"{path} is not a compiled artifact (no {METADATA}); make one with "
                                f"`pfcr compile PROGRAM --target NAME --out {path}`")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{meta_path} is not valid JSON ({err}); recompile with `pfcr compile`") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ArtifactError(f"{meta_path} is not a version {VERSION} {FORMAT} file; recompile with `pfcr compile`")
        art = cls(path, meta)
        if not art.library.is_file():
            raise ArtifactError(f"{art.library} is missing; recompile with `pfcr compile`")
        if sha256_file(art.library) != meta["build"]["library_sha256"]:
            raise ArtifactError(f"{art.library} is not the library {meta_path} describes (sha256 differs); "
                                "recompile with `pfcr compile`")
        return art

    def check_program(self, program_path: str | os.PathLike) -> None:
        """ArtifactError unless the artifact was compiled from exactly this program file."""
        digest = sha256_file(program_path)
        if digest != self.meta["program"]["sha256"]:
            raise ArtifactError(f"artifact {self.path} was compiled from {self.meta['program']['path']} (sha256 "
                                f"{self.meta['program']['sha256'][:12]}...), not from {program_path} (sha256 "
                                f"{digest[:12]}...); recompile it: pfcr compile {program_path} "
                                f"--target {self.meta['target']['preset']} --out {self.path}")
