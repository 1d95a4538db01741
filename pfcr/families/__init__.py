"""Model families: all that quantization, reparameterization and export know about one kind of timm model.

Each family is a `Family` subclass in its own module of this package, decorated with `@register`;
every module of the package is imported with it, so supporting a new kind of model is adding one
file here. `family_of(model)` asks every registered family whether it `matches` the model, so
pfcr.quant and pfcr.export never test for an architecture themselves.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from torch import nn

from core.errors import ModelError
from pfcr.families.units import Unit

if TYPE_CHECKING:
    from intprog.program import Program
    from pfcr.export import _Scales


class Family(ABC):
    """One kind of timm model. The defaults fit blocks laid out as timm's ViT blocks are
    (norm1 -> attn, norm2 -> mlp), which Swin's blocks share."""

    name: str  # the program's meta "family" and the registry key
    description: str  # the timm class and the models it covers, for error messages
    timm_class: str  # "module.Class" of the timm model class this family handles (subclasses too)

    def matches(self, model: nn.Module) -> bool:
        """Whether `model` (float or quantized) is of this family: an instance of `timm_class`."""
        module, _, cls = self.timm_class.rpartition(".")
        return isinstance(model, getattr(importlib.import_module(module), cls))

    @staticmethod
    def refuse(model: nn.Module, what: str, fix: str) -> ModelError:
        """The error for a variant the integer program cannot express, naming it and the fix."""
        return ModelError(f"{type(model).__name__} with {what} cannot be exported to the integer program; {fix}")

    def check(self, model: nn.Module) -> None:  # noqa: B027  (a hook: most families take all they match)
        """Raise ModelError for variants of a matching model that the family cannot handle yet."""

    def prepare(self, model: nn.Module) -> None:  # noqa: B027  (a hook: most families need no rewrite)
        """Rewrite the quantized model's float copy, before its layers are swapped for quantized ones,
        into an equal function that the integer program can express (e.g. fold scales into weights)."""

    @abstractmethod
    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks, in the order the model runs them."""

    @abstractmethod
    def units(self, model: nn.Module) -> list[Unit]:
        """The reconstruction units (stem, attention and MLP with their shortcuts, ..., tail), in
        model order: chaining them equals the model's forward."""

    def postln_pairs(self, model: nn.Module) -> list[tuple[nn.LayerNorm, nn.Module]]:
        """(LayerNorm, the Linear that reads it): these Linears quantize their inputs channel-wise
        until RepQ-ViT's reparameterization folds the scales into the LayerNorm."""
        return [pair for b in self.blocks(model) for pair in ((b.norm1, b.attn.qkv), (b.norm2, b.mlp.fc1))]

    def class_token_quantizers(self, model: nn.Module) -> list[tuple[nn.Module, int]]:
        """(activation quantizer, its input's token axis) that clip the class token on their own
        grid (QuantConfig.cls_clip): those whose integer producer can clamp one token apart. A
        family without a class token has none to clip."""
        raise ModelError(f"{type(model).__name__} has no class token: quantize it without cls_clip (--cls-clip)")

    @abstractmethod
    def head(self, model: nn.Module) -> nn.Module:
        """The classifier's Linear (its weights take the first/last-layer bit width)."""

    @abstractmethod
    def export(self, p: Program, m: nn.Module, s: _Scales, in_q: tuple, x: str) -> None:
        """Append the quantized model's ops to `p`: from the patches `x` (codes of the input
        quantization `in_q`) to the logits, with pfcr.export's helpers and extra scales `s`."""

    def __repr__(self) -> str:
        return f"<family {self.name}>"


FAMILIES: dict[str, Family] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add an instance of `cls` to the registry under `cls.name`."""
    if cls.name in FAMILIES:
        raise ValueError(f"model family {cls.name!r} is registered twice")
    FAMILIES[cls.name] = cls()
    return cls


def family_of(model: nn.Module) -> Family:
    """The registered family of `model`; ModelError naming the model and the supported families."""
    for family in FAMILIES.values():
        if family.matches(model):
            family.check(model)
            return family
    supported = "; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values())
    raise ModelError(f"{type(model).__name__} is not supported: the model families quantization handles are "
                     f"{supported}")


for _module in pkgutil.iter_modules(__path__):  # each family module registers its family on import
    importlib.import_module(f"{__name__}.{_module.name}")
