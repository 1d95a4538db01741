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


# ELF e_machine of the CPUs the presets build for (the host part of a CUDA library too).
ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 3: "i386", 243: "riscv"}
_ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}


def elf_facts(path: Path) -> dict[str, Any]:
    """{"class": 32|64, "machine": name} from a shared library's ELF header; ArtifactError naming the
    file when it is not a complete ELF file (a truncated library would crash the loader with a bus
    error: its header, program and section tables and every loaded segment must lie inside the file)."""
    import struct

    fix = "recompile it with `pfcr compile`"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 16 or head[:4] != b"\x7fELF":
            raise ArtifactError(f"{path} is not a shared library (no ELF header; {size} bytes); {fix}")
        elf_class, data = head[4], head[5]
        if elf_class not in (1, 2) or data not in (1, 2):
            raise ArtifactError(f"{path} has a damaged ELF header (class {elf_class}, data {data}); {fix}")
        end = "<" if data == 1 else ">"
        wide = elf_class == 2
        if len(head) < (64 if wide else 52):
            raise ArtifactError(f"{path} is truncated ({size} bytes, shorter than its ELF header); {fix}")
        machine = struct.unpack_from(end + "H", head, 18)[0]
        phoff, shoff = struct.unpack_from(end + ("QQ" if wide else "II"), head, 32 if wide else 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", head, 54 if wide else 42)
        tables = [(phoff, phentsize * phnum, "program header table"),
                  (shoff, shentsize * shnum, "section header table")]
        for offset, length, what in tables:
            if length and offset + length > size:
                raise ArtifactError(f"{path} is truncated: its ELF {what} ends at byte {offset + length}, the file "
                                    f"has {size}; {fix}")
        if phnum and phentsize:
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                entry = table[i * phentsize:(i + 1) * phentsize]
                if len(entry) < (56 if wide else 32):
                    break
                kind = struct.unpack_from(end + "I", entry, 0)[0]
                word, (at_offset, at_filesz) = ("Q", (8, 32)) if wide else ("I", (4, 16))
                offset = struct.unpack_from(end + word, entry, at_offset)[0]
                filesz = struct.unpack_from(end + word, entry, at_filesz)[0]
                if kind == 1 and offset + filesz > size:  # PT_LOAD
                    raise ArtifactError(f"{path} is truncated: a loaded segment ends at byte {offset + filesz}, the "
                                        f"file has {size}; {fix}")
    return {"class": 64 if wide else 32, "machine": ELF_MACHINES.get(machine, f"e_machine {machine}")}


def expected_machine(target: dict[str, Any]) -> str | None:
    """The CPU a target dict's library runs on ('x86_64', 'aarch64'), from its triple; None if it
    names none (built for the machine that compiled it)."""
    host = target.get("host", {}) if target.get("kind") == "cuda" else target
    triple = host.get("mtriple") if isinstance(host, dict) else None
    if not triple:
        return None
    arch = triple.split("-", 1)[0].lower()
    return _ARCH_ALIASES.get(arch, arch)


def check_library(path: Path, *, size: int | None, machine: str | None, described_by: str) -> dict[str, Any]:
    """ArtifactError naming the file and the fix unless `path` is a complete ELF library of `size`
    bytes for `machine` (either None: not checked); its ELF facts."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ArtifactError(f"{path} has {actual} bytes, but {described_by} records {size} (truncated or replaced "
                            "after the build); recompile it with `pfcr compile`")
    facts = elf_facts(path)
    if machine is not None and facts["machine"] != machine:
        raise ArtifactError(f"{path} holds code for {facts['machine']}, but {described_by} is for {machine}; "
                            "recompile it with `pfcr compile`")
    return facts


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
        try:
            library, build, target = art.library, meta["build"], meta["target"]
            size, digest, tvm_target = build.get("library_bytes"), build["library_sha256"], target["tvm"]
            target["preset"]
        except (KeyError, TypeError) as err:
            raise ArtifactError(f"{meta_path} lacks {err}; recompile with `pfcr compile`") from None
        if not library.is_file():
            raise ArtifactError(f"{library} is missing; recompile with `pfcr compile`")
        # Before anything loads it: a truncated library kills the loader with a bus error.
        elf = check_library(library, size=size, machine=build.get("elf", {}).get("machine")
                            or expected_machine(tvm_target), described_by=str(meta_path))
        if build.get("elf", {}).get("class") not in (None, elf["class"]):
            raise ArtifactError(f"{library} is a {elf['class']}-bit library, but {meta_path} records a "
                                f"{build['elf']['class']}-bit one; recompile with `pfcr compile`")
        if sha256_file(library) != digest:
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
