"""The layering rule (docs/architecture.md), read from the sources themselves:

    core <- intprog <- pfcr <- hwsim        (hwsim's sensor studies evaluate fake-quant models)
                    <- tvm_backends
    reports reads records through core only; cli sits on top and alone knows every part.

intprog, the torch-free contract every executor implements, imports numpy, safetensors and core's
torch-free modules only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "intprog", "pfcr", "hwsim", "tvm_backends", "realvit", "reports", "cli")
ALLOWED = {
    "core": {"core"},
    "intprog": {"core", "intprog"},
    "pfcr": {"core", "intprog", "pfcr"},
    "hwsim": {"core", "intprog", "pfcr", "hwsim"},
    "tvm_backends": {"core", "intprog", "tvm_backends"},
    "realvit": {"core", "intprog", "pfcr", "reports", "realvit"},  # a track on top of pfcr; its summary is the report's
    "reports": {"core", "reports"},
    "cli": set(PACKAGES),
}
# core modules intprog may use: they import no torch
TORCH_FREE_CORE = {"core.errors", "core.files"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, module-level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, node.module)]
    return out


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_the_layers_below(package):
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in _sources(package) for line, module in _imports(path)
           if module.split(".")[0] in PACKAGES and module.split(".")[0] not in ALLOWED[package]]
    assert not bad, "layering broken (see docs/architecture.md):\n" + "\n".join(bad)


def test_intprog_uses_only_torch_free_modules():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in _sources("intprog") for line, module in _imports(path)
           if module.split(".")[0] in {"torch", "timm", "tvm", "pfcr"}
           or (module.startswith("core") and module not in TORCH_FREE_CORE)]
    assert not bad, "\n".join(bad)


def test_intprog_and_its_core_load_without_torch():
    """Importing the program format and the reference executor, with torch made unimportable."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import intprog.program, intprog.reference, intprog.arith, intprog.nonlinear\n"
            "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_part_is_registered_and_every_command_module_is_a_part():
    """A package's commands reach the CLI only through the registry (cli.parts.PARTS)."""
    from cli.parts import PARTS

    registered = {p.commands for p in PARTS}
    found = {".".join(path.relative_to(ROOT).with_suffix("").parts)
             for package in PACKAGES for path in _sources(package) if path.name == "commands.py"}
    assert registered == found
    for part in PARTS:
        assert callable(part.module().add_commands), part.name
