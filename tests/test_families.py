"""The registry of model families (pfcr/families): recognition, units, refusals, and that no module
outside a family's own tests for its architecture."""

import ast
import re
from pathlib import Path

import pytest
import torch

import pfcr.families as families
from core import models
from core.errors import ModelError
from pfcr.families import FAMILIES, Family, family_of, register
from tests.test_models import TINY

PFCR = Path(__file__).resolve().parent.parent / "pfcr"
# What naming each architecture in code looks like (identifiers, imports, strings; not docstrings).
ARCH_WORDS = {"vit": r"vit|vision_?transformer", "swin": r"swin"}
CLI = PFCR / "commands.py"  # names zoo models (vit_fmnist, swin_fmnist) for the main job: not family checks


def _tiny(name, **extra):
    torch.manual_seed(0)
    arch, kw = TINY[name]
    return models.build(arch, **{**kw, **extra}).eval()


EXAMPLES = {  # family -> tiny models of it
    "vit": [lambda: _tiny("vit"), lambda: _tiny("deit"), lambda: _tiny("vit", init_values=0.1)],  # LayerScale
    "swin": [lambda: _tiny("swin", depths=(2, 1))],  # a shifted window and a patch merging
}


def test_every_family_has_examples():
    assert set(EXAMPLES) == set(FAMILIES)


@pytest.mark.parametrize(("name", "build"), [(n, b) for n, bs in EXAMPLES.items() for b in bs])
def test_a_family_matches_its_models_only_and_its_units_chain_to_the_forward(name, build):
    model = build()
    assert [f.name for f in FAMILIES.values() if f.matches(model)] == [name]
    family = family_of(model)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = x
    for unit in family.units(model):
        y = unit(y)
    with torch.no_grad():
        assert torch.allclose(y, model(x), atol=1e-5)
    assert family.head(model) is family.units(model)[-1].owned()[0]
    assert all(isinstance(norm, torch.nn.LayerNorm) and isinstance(linear, torch.nn.Linear)
               for norm, linear in family.postln_pairs(model))


@pytest.mark.parametrize("build", [lambda: torch.nn.Sequential(torch.nn.Linear(2, 2)),
                                   lambda: models.build("resnet10t")], ids=["sequential", "resnet"])
def test_unsupported_models_are_named_with_the_supported_families(build):
    model = build()
    with pytest.raises(ModelError) as err:
        family_of(model)
    assert str(err.value).startswith(f"{type(model).__name__} is not supported")
    assert all(f.name in str(err.value) and f.description in str(err.value) for f in FAMILIES.values())


def test_vits_with_non_linear_heads_are_refused():
    """Register tokens are exported (tests/test_export_variants.py); a head that is no Linear is not."""
    assert family_of(_tiny("vit", reg_tokens=1)).name == "vit"
    model = _tiny("vit")
    model.head = torch.nn.Sequential(model.head, torch.nn.ReLU())
    with pytest.raises(ModelError, match="Sequential head"):
        family_of(model)


def test_register_adds_a_family_once(monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", dict(FAMILIES))

    @register
    class Mlp(Family):
        name, description = "mlp", "torch Sequential"

        def matches(self, model):
            return isinstance(model, torch.nn.Sequential)

        blocks = units = head = export = None  # not needed to be found

    assert family_of(torch.nn.Sequential()).name == "mlp"
    with pytest.raises(ValueError, match="registered twice"):
        register(Mlp)


def _code_words(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every identifier, attribute, import and string in the code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append((node.lineno, node.value))
        elif isinstance(node, ast.ImportFrom):
            words.append((node.lineno, node.module or ""))
        else:
            for field in ("id", "attr", "name", "arg"):
                if isinstance(getattr(node, field, None), str):
                    words.append((getattr(node, "lineno", 0), getattr(node, field)))
    return words


def test_only_a_family_module_names_its_architecture():
    """No `if swin`, `family == "vit"` or isinstance on a timm class outside pfcr/families/<family>.py."""
    bad = [f"{path.relative_to(PFCR.parent)}:{line} {word!r}"
           for path in sorted(PFCR.rglob("*.py")) if path != CLI
           for line, word in _code_words(path)
           for name, pattern in ARCH_WORDS.items()
           if path != PFCR / "families" / f"{name}.py" and re.search(pattern, word, re.IGNORECASE)]
    assert not bad, "architecture checks outside their family module:\n" + "\n".join(bad)
