"""timm VisionTransformer (ViT, DeiT): one stage of blocks after a class token and position
embedding; the head reads the class token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from core.errors import ModelError
from pfcr.export import _I32, _act, _attention, _layernorm, _linear, _mlp, _np
from pfcr.families import Family, register
from pfcr.families.units import AttnUnit, MlpUnit, Tail, Unit
from pfcr.quant.modules import QuantLinear

if TYPE_CHECKING:
    from intprog.program import Program
    from pfcr.export import _Scales


class VitStem(Unit):
    """Patch embedding, class token and position embedding."""

    def __init__(self, m: nn.Module):
        super().__init__("stem", None, m, [m.patch_embed])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.target[0]
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


@register
class Vit(Family):
    name = "vit"
    description = "timm VisionTransformer (ViT, DeiT)"

    def matches(self, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def check(self, model: nn.Module) -> None:
        if model.reg_token is not None or not isinstance(model.head, (nn.Linear, QuantLinear)):
            raise ModelError(f"{type(model).__name__}: ViTs with register tokens or non-linear heads "
                             "are not supported yet")

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def units(self, model: nn.Module) -> list[Unit]:
        units: list[Unit] = [VitStem(model)]
        for bi, blk in enumerate(model.blocks):
            units += [AttnUnit(blk, (0, bi)), MlpUnit(blk, (0, bi))]
        return [*units, Tail(model, model.head)]

    def head(self, model: nn.Module) -> nn.Module:
        return model.head

    def export(self, p: Program, m: nn.Module, s: _Scales, in_q: tuple, x: str) -> None:
        x = _linear(p, "embed", x, m.patch_embed.proj, in_q, s.res, 0, *_I32)
        cls_token = np.round(_np(m.cls_token).reshape(-1) / s.res).astype(np.int64)
        x = p.add("prepend", [x], "tokens", consts={"token": cls_token})
        x = p.add("add_const", [x], "stream0",
                  consts={"value": np.round(_np(m.pos_embed)[0] / s.res).astype(np.int64)})
        for i, blk in enumerate(m.blocks):
            t = f"b{i}."
            h_ = _layernorm(p, t + "ln1", x, blk.norm1, s.res, _act(blk.attn.qkv.a_quant))
            x = p.add("add", [x, _attention(p, t, h_, blk.attn, s.res)], t + "stream_attn")
            x = _mlp(p, t, x, blk, s)
        x = p.add("take_token", [x], "cls", {"index": 0})
        head_in = _act(m.head.a_quant)
        x = _layernorm(p, "norm", x, m.norm, s.res, head_in)
        _linear(p, "logits", x, m.head, head_in, s.logit, 0, *_I32)
