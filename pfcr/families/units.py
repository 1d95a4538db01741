"""Reconstruction units that several families share; a family adds its own (stems, Swin's merging).

A unit is a function of the residual stream; chaining a model's units, in order, is its forward.
"""

from __future__ import annotations

import torch
from torch import nn


class Unit(nn.Module):
    """The finest reconstruction unit: a function of the residual stream, run in model order.

    `block` is (stage, block index) for grouping into coarser granules; None for stem and tail.
    `owned` are the model's modules whose quantizers this unit trains.
    """

    def __init__(self, kind: str, block: tuple[int, int] | None, target: nn.Module, owned: list[nn.Module]):
        super().__init__()
        self.kind, self.block = kind, block
        self.target = [target]  # a list hides it from nn.Module registration (no duplicate params)
        self._owned = owned

    def owned(self) -> list[nn.Module]:
        return self._owned


class Tail(Unit):
    """Final norm and classifier head (pooling included); `head` is the Linear it trains."""

    def __init__(self, m: nn.Module, head: nn.Module):
        super().__init__("tail", None, m, [head])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target[0].forward_head(self.target[0].norm(x))


class AttnUnit(Unit):
    """MHSA with its shortcut and LayerScale (an identity where the model has none): x + ls1(attn(norm1(x)))."""

    def __init__(self, blk: nn.Module, block: tuple[int, int]):
        super().__init__("attn", block, blk, [blk.attn])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.target[0]
        return x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))


class MlpUnit(Unit):
    """MLP with its shortcut: x + ls2(mlp(norm2(x))); blocks without LayerScale (Swin) have no ls2."""

    def __init__(self, blk: nn.Module, block: tuple[int, int]):
        super().__init__("mlp", block, blk, [blk.mlp])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.target[0]
        return x + b.drop_path2(getattr(b, "ls2", nn.Identity())(b.mlp(b.norm2(x))))
