"""timm SwinTransformer: stages of (shifted-)window attention blocks, patch merging between stages,
an average-pooled head.

Export: tokens stay [B, H*W, C] in row-major order. A shifted-window attention gathers its tokens
into window order (the cyclic shift and the partition are one fixed permutation), attends within
consecutive groups of window-area tokens with the relative position bias rounded to the logit scale
and the shift mask as "probability zero", and gathers the result back. Patch merging is a gather of
2x2 neighbours into 4C channels, then LayerNorm and the reduction. The head's average pool is an
integer sum requantized by 1/N.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from core.errors import ModelError
from pfcr.export import _I32, ROUNDING, _act, _attention, _layernorm, _linear, _mlp, _np, _requant_consts
from pfcr.families import Family, register
from pfcr.families.units import AttnUnit, MlpUnit, Tail, Unit
from pfcr.quant.modules import QuantLinear

if TYPE_CHECKING:
    from intprog.program import Program
    from pfcr.export import _Scales


class SwinStem(Unit):
    """Patch embedding (with its LayerNorm); Swin has no class token or absolute position embedding."""

    def __init__(self, m: nn.Module):
        super().__init__("stem", None, m, [m.patch_embed])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target[0].patch_embed(x)


class WindowAttnUnit(AttnUnit):
    """(Shifted-)window MHSA with its shortcut: x + attn(norm1(x)), windowing done by the block's _attn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.target[0]
        return x + b.drop_path1(b._attn(b.norm1(x)))


class MergeUnit(Unit):
    """Patch merging at the start of a stage; grouped with that stage's first block."""

    def __init__(self, merging: nn.Module, stage: int):
        super().__init__("merge", (stage, 0), merging, [merging])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target[0](x)


def _merging(stage: nn.Module) -> nn.Module | None:
    """The stage's patch merging; None for a stage that keeps its input resolution."""
    return None if isinstance(stage.downsample, nn.Identity) else stage.downsample


def _token_grid(h: int, w: int) -> torch.Tensor:
    """Token indices [1, H, W, 1], to push through timm's own reshapes and get their permutation."""
    return torch.arange(h * w).view(1, h, w, 1)


def _window_order(blk: nn.Module, h: int, w: int) -> np.ndarray:
    """Row-major token index of each position in window order, after the cyclic shift."""
    from timm.models.swin_transformer import window_partition

    ws, shift = tuple(blk.window_size), tuple(blk.shift_size)
    if h % ws[0] or w % ws[1]:
        raise ModelError(f"Swin export needs resolutions divisible by the window: {h}x{w} tokens, window {ws}")
    grid = _token_grid(h, w)
    if any(shift):
        grid = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    return window_partition(grid, ws).reshape(-1).numpy()


@register
class Swin(Family):
    name = "swin"
    description = "timm SwinTransformer (Swin)"
    timm_class = "timm.models.swin_transformer.SwinTransformer"

    def check(self, model: nn.Module) -> None:
        """Refuse by name what the export below does not compute: pooling other than the token
        average, norms other than LayerNorm, MLPs other than timm's Mlp."""
        from timm.layers import Mlp

        if model.global_pool != "avg":
            raise self.refuse(model, f"global_pool={model.global_pool!r}", "use global_pool='avg'")
        if not isinstance(self.head(model), nn.Linear | QuantLinear):
            raise self.refuse(model, f"a {type(self.head(model)).__name__} head",
                              "give it a Linear head (num_classes > 0)")
        norms = [model.patch_embed.norm, model.norm, *(n for b in self.blocks(model) for n in (b.norm1, b.norm2)),
                 *(mg.norm for mg in map(_merging, model.layers) if mg is not None)]
        if not all(isinstance(n, nn.LayerNorm) for n in norms):
            raise self.refuse(model, "norms other than LayerNorm (or no patch norm)", "only LayerNorm is exported")
        for blk in self.blocks(model):
            if type(blk.mlp) is not Mlp or not isinstance(blk.mlp.norm, nn.Identity):
                raise self.refuse(model, f"a {type(blk.mlp).__name__} MLP",
                                  "only timm's Mlp (fc1, elementwise activation, fc2)")

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [blk for stage in model.layers for blk in stage.blocks]

    def units(self, model: nn.Module) -> list[Unit]:
        units: list[Unit] = [SwinStem(model)]
        for si, stage in enumerate(model.layers):
            if (merging := _merging(stage)) is not None:
                units.append(MergeUnit(merging, si))
            for bi, blk in enumerate(stage.blocks):
                units += [WindowAttnUnit(blk, (si, bi)), MlpUnit(blk, (si, bi))]
        return [*units, Tail(model, self.head(model))]

    def postln_pairs(self, model: nn.Module) -> list[tuple[nn.LayerNorm, nn.Module]]:
        """The blocks' pairs, then each patch merging's norm -> reduction."""
        merges = [mg for mg in map(_merging, model.layers) if mg is not None]
        return super().postln_pairs(model) + [(mg.norm, mg.reduction) for mg in merges]

    def head(self, model: nn.Module) -> nn.Module:
        return model.head.fc

    def export(self, p: Program, m: nn.Module, s: _Scales, in_q: tuple, x: str) -> None:
        pe = m.patch_embed
        x = _linear(p, "embed", x, pe.proj, in_q, s.embed, 0, *_I32)
        x = _layernorm(p, "embed_norm", x, pe.norm, s.embed, (s.res, 0, *_I32))
        p.units.append(x)
        h, w = pe.grid_size
        for si, stage in enumerate(m.layers):
            if (mg := _merging(stage)) is not None:
                t = f"s{si}.merge."
                if h % 2 or w % 2:
                    raise ModelError(f"Swin export needs even resolutions at patch merging, got {h}x{w} tokens")
                index = (_token_grid(h, w).reshape(1, h // 2, 2, w // 2, 2, 1).permute(0, 1, 3, 4, 2, 5)
                         .reshape(-1, 4))
                x = p.add("gather_tokens", [x], t + "gather", consts={"index": index.numpy()})
                red_in = _act(mg.reduction.a_quant)
                x = _layernorm(p, t + "norm", x, mg.norm, s.res, red_in)
                x = _linear(p, t + "reduction", x, mg.reduction, red_in, s.res, 0, *_I32)
                p.units.append(x)
                h, w = h // 2, w // 2
            for bi, blk in enumerate(stage.blocks):
                t = f"s{si}.b{bi}."
                order = _window_order(blk, h, w)
                a = blk.attn
                mask = blk.attn_mask
                window = {"size": int(np.prod(blk.window_size)), "bias": _np(a.rel_pos._get_rel_pos_bias())[0],
                          "mask": None if mask is None else _np(mask) < 0}
                h_ = _layernorm(p, t + "ln1", x, blk.norm1, s.res, _act(a.qkv.a_quant))
                h_ = p.add("gather_tokens", [h_], t + "to_windows", consts={"index": order[:, None]})
                att = _attention(p, t, h_, a, s.res, window)
                att = p.add("gather_tokens", [att], t + "from_windows", consts={"index": np.argsort(order)[:, None]})
                x = p.add("add", [x, att], t + "stream_attn")
                p.units.append(x)
                x = _mlp(p, t, x, blk, s)
                p.units.append(x)
        head = self.head(m)
        head_in = _act(head.a_quant)
        x = _layernorm(p, "norm", x, m.norm, s.res, (s.norm, 0, *_I32))
        x = p.add("sum_tokens", [x], "pooled_sum")
        x = p.add("requantize", [x], "pooled", {"rounding": ROUNDING},
                  _requant_consts(s.norm / (h * w) / head_in[0], head_in[1], head_in[2], head_in[3], 1))
        _linear(p, "logits", x, head, head_in, s.logit, 0, *_I32)
