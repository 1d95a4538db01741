"""timm VisionTransformer (ViT, DeiT, DeiT-III, DINOv2-style LayerScale ViTs): one stage of blocks
after the prefix tokens (class token, register tokens) and the position embedding; the head reads
the class token or the average of the tokens.

Every option of timm's VisionTransformer is exported exactly or refused by name (`check`):
- LayerScale (`init_values`) is folded into the projection it scales (`prepare`: attn.proj and
  mlp.fc2 rows times gamma, before quantization), so the quantized model and its program both
  compute the scaled branch with per-channel weight scales;
- class token, register tokens, `no_embed_class`, `pos_embed='none'`, `pre_norm`, `final_norm`,
  `global_pool` 'token' or 'avg' (with or without `fc_norm`, with or without the prefix tokens),
  `qkv_bias` / `proj_bias` off, any elementwise activation (a table of the model's own function),
  `dynamic_img_size` (the position embedding resampled once, to the exported input's grid);
- refused: qk-norm, attention/MLP scale norms, gated MLPs (SwiGLU, GluMlp), non-LayerNorm norms,
  other block types, a normalized patch embedding, pooling other than 'token'/'avg' (including the
  attention-pooling heads 'map' and 'prr'), distillation tokens (distilled DeiT), non-linear heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pfcr.export import (
    _I32,
    ROUNDING,
    _act,
    _attention,
    _layernorm,
    _linear,
    _mlp,
    _np,
    _requant_consts,
    _token0,
)
from pfcr.families import Family, register
from pfcr.families.units import AttnUnit, MlpUnit, Tail, Unit
from pfcr.quant.modules import QuantAttention, QuantLinear

if TYPE_CHECKING:
    from intprog.program import Program
    from pfcr.export import _Scales


class VitStem(Unit):
    """Patch embedding, prefix tokens, position embedding (and the pre-norm where there is one)."""

    def __init__(self, m: nn.Module):
        super().__init__("stem", None, m, [m.patch_embed])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.target[0]
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.Identity))


def _prefix_tokens(m: nn.Module) -> list[torch.Tensor]:
    """The tokens put before the patches, in order: the class token, then the register tokens."""
    out = [] if m.cls_token is None else [m.cls_token.reshape(-1)]
    return out + ([] if m.reg_token is None else list(m.reg_token.reshape(-1, m.reg_token.shape[-1])))


def _position_embedding(m: nn.Module, grid: tuple[int, int]) -> torch.Tensor | None:
    """The position embedding the model adds at this patch grid ([tokens, D]), or None."""
    if m.pos_embed is None:
        return None
    pos = m.pos_embed
    if tuple(grid) != tuple(m.patch_embed.grid_size):
        if not m.dynamic_img_size:
            raise Family.refuse(m, f"input grid {grid} other than its {m.patch_embed.grid_size}",
                          "export at the model's input size, or build it with dynamic_img_size=True")
        from timm.layers import resample_abs_pos_embed

        pos = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(m.patch_embed.grid_size),
                                     num_prefix_tokens=0 if m.no_embed_class else m.num_prefix_tokens)
    return pos[0]


@register
class Vit(Family):
    name = "vit"
    description = "timm VisionTransformer (ViT, DeiT, DeiT-III, LayerScale ViTs)"
    timm_class = "timm.models.vision_transformer.VisionTransformer"

    def check(self, model: nn.Module) -> None:
        from timm.layers import Mlp
        from timm.models.vision_transformer import Attention, Block

        m = model
        if getattr(m, "dist_token", None) is not None:
            raise Family.refuse(m, "a distillation token (distilled DeiT: two heads averaged)",
                          "use the non-distilled DeiT (e.g. deit_small_patch16_224)")
        if m.attn_pool is not None or m.global_pool not in ("token", "avg"):
            raise Family.refuse(m, f"global_pool={m.global_pool!r}", "use global_pool='token' or 'avg'")
        if not isinstance(m.head, (nn.Linear, QuantLinear)):
            raise Family.refuse(m, f"a {type(m.head).__name__} head", "give it a Linear head (num_classes > 0)")
        if not isinstance(m.patch_embed.norm, nn.Identity):
            raise Family.refuse(m, "a normalized patch embedding (embed_norm_layer)",
                                "build it without embed_norm_layer")
        if not all(_is_norm(n) for n in (m.norm_pre, m.norm, m.fc_norm)):
            raise Family.refuse(m, f"{type(m.norm).__name__} norms", "only LayerNorm is exported")
        for i, blk in enumerate(m.blocks):
            if type(blk) is not Block:
                raise Family.refuse(m, f"{type(blk).__name__} blocks (block {i})",
                                    "only timm's standard Block is exported")
            attn = blk.attn
            if isinstance(attn, Attention):
                if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
                    raise Family.refuse(m, "qk_norm", "build it with qk_norm=False")
                if not isinstance(attn.norm, nn.Identity):
                    raise Family.refuse(m, "scale_attn_norm", "build it with scale_attn_norm=False")
            elif not isinstance(attn, QuantAttention):
                raise Family.refuse(m, f"{type(attn).__name__} attention (block {i})",
                                    "only timm's Attention is exported")
            if type(blk.mlp) is not Mlp:
                raise Family.refuse(m, f"a {type(blk.mlp).__name__} MLP (block {i})",
                              "only timm's Mlp (fc1, elementwise activation, fc2) is exported; gated MLPs "
                              "such as SwiGLU are not")
            if not isinstance(blk.mlp.norm, nn.Identity):
                raise Family.refuse(m, "scale_mlp_norm", "build it with scale_mlp_norm=False")
            if not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
                raise Family.refuse(m, f"{type(blk.norm1).__name__} block norms", "only LayerNorm is exported")

    def prepare(self, model: nn.Module) -> None:
        """Fold LayerScale into the projection it scales: y = gamma * (W x + b) = (gamma W) x + gamma b."""
        from timm.layers import LayerScale

        with torch.no_grad():
            for blk in model.blocks:
                for ls, linear in (("ls1", blk.attn.proj), ("ls2", blk.mlp.fc2)):
                    scale = getattr(blk, ls)
                    if not isinstance(scale, LayerScale):
                        continue
                    gamma = scale.gamma.detach()
                    linear.weight.mul_(gamma[:, None])
                    if linear.bias is not None:
                        linear.bias.mul_(gamma)
                    setattr(blk, ls, nn.Identity())

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def units(self, model: nn.Module) -> list[Unit]:
        units: list[Unit] = [VitStem(model)]
        for bi, blk in enumerate(model.blocks):
            units += [AttnUnit(blk, (0, bi)), MlpUnit(blk, (0, bi))]
        return [*units, Tail(model, model.head)]

    def class_token_quantizers(self, model: nn.Module) -> list[tuple[nn.Module, int]]:
        """The LayerNorm outputs (qkv and fc1 inputs) and q, k, v: the LayerNorm and the qkv GEMM
        clamp token 0 apart (k enters q.k^T transposed, its tokens last)."""
        if getattr(model, "cls_token", None) is None:
            return super().class_token_quantizers(model)
        out: list[tuple[nn.Module, int]] = []
        for blk in model.blocks:
            a = blk.attn
            out += [(a.qkv.a_quant, -2), (a.matmul_qk.a_quant, -2), (a.matmul_qk.b_quant, -1),
                    (a.matmul_av.b_quant, -2), (blk.mlp.fc1.a_quant, -2)]
        return out

    def head(self, model: nn.Module) -> nn.Module:
        return model.head

    def export(self, p: Program, m: nn.Module, s: _Scales, in_q: tuple, x: str) -> None:
        _, h, w = p.input["shape"]
        patch = m.patch_embed.proj.weight.shape[-1]
        # A pre-norm reads the embedding at its own scale; otherwise it is the residual stream's start.
        pre_norm = isinstance(m.norm_pre, nn.LayerNorm)
        s_in = s.embed if pre_norm else s.res

        def codes(t: torch.Tensor) -> np.ndarray:
            return np.round(_np(t) / s_in).astype(np.int64)

        x = _linear(p, "embed", x, m.patch_embed.proj, in_q, s_in, 0, *_I32)
        prefix, pos = _prefix_tokens(m), _position_embedding(m, (h // patch, w // patch))
        if pos is not None and m.no_embed_class:  # DeiT-III: the prefix tokens get no position
            x = p.add("add_const", [x], "patches_pos", consts={"value": codes(pos)})
        for j, token in reversed(list(enumerate(prefix))):
            x = p.add("prepend", [x], "tokens" if j == 0 else f"tokens{j}", consts={"token": codes(token)})
        if pos is not None and not m.no_embed_class:
            x = p.add("add_const", [x], "stream0", consts={"value": codes(pos)})
        if pre_norm:
            x = _layernorm(p, "norm_pre", x, m.norm_pre, s_in, (s.res, 0, *_I32))
        p.units.append(x)
        for i, blk in enumerate(m.blocks):
            t = f"b{i}."
            qkv_in = blk.attn.qkv.a_quant
            h_ = _layernorm(p, t + "ln1", x, blk.norm1, s.res, _act(qkv_in), _token0(qkv_in, blk.norm1.weight.numel()))
            x = p.add("add", [x, _attention(p, t, h_, blk.attn, s.res)], t + "stream_attn")
            p.units.append(x)
            x = _mlp(p, t, x, blk, s)
            p.units.append(x)
        self._head(p, m, s, x)

    @staticmethod
    def _head(p: Program, m: nn.Module, s: _Scales, x: str) -> None:
        """The class token or the token average, normalized, into the classifier."""
        head_in = _act(m.head.a_quant)
        final = m.norm if isinstance(m.norm, nn.LayerNorm) else m.fc_norm  # before or after pooling
        if m.global_pool == "token":
            x = p.add("take_token", [x], "cls", {"index": 0})
            if isinstance(final, nn.LayerNorm):
                x = _layernorm(p, "norm", x, final, s.res, head_in)
            else:
                x = p.add("requantize", [x], "head_in", {"rounding": ROUNDING},
                          _requant_consts(s.res / head_in[0], head_in[1], head_in[2], head_in[3], 1))
            _linear(p, "logits", x, m.head, head_in, s.logit, 0, *_I32)
            return
        skip = 0 if m.pool_include_prefix else m.num_prefix_tokens
        n = _token_count(p, m) - skip
        if skip:
            x = p.add("gather_tokens", [x], "pool_tokens",
                      consts={"index": np.arange(skip, skip + n, dtype=np.int64)[:, None]})
        if isinstance(m.norm, nn.LayerNorm):  # norm every token, then average (fc_norm=False)
            x = _layernorm(p, "norm", x, m.norm, s.res, (s.norm, 0, *_I32))
            x = p.add("sum_tokens", [x], "pooled_sum")
            x = p.add("requantize", [x], "pooled", {"rounding": ROUNDING},
                      _requant_consts(s.norm / n / head_in[0], head_in[1], head_in[2], head_in[3], 1))
        elif isinstance(m.fc_norm, nn.LayerNorm):  # average the stream, then norm (timm's default for avg)
            x = p.add("sum_tokens", [x], "pooled_sum")
            x = p.add("requantize", [x], "pooled", {"rounding": ROUNDING},
                      _requant_consts(1.0 / n, 0, *_I32, 1))
            x = _layernorm(p, "fc_norm", x, m.fc_norm, s.res, head_in)
        else:  # final_norm=False: the plain average
            x = p.add("sum_tokens", [x], "pooled_sum")
            x = p.add("requantize", [x], "pooled", {"rounding": ROUNDING},
                      _requant_consts(s.res / n / head_in[0], head_in[1], head_in[2], head_in[3], 1))
        _linear(p, "logits", x, m.head, head_in, s.logit, 0, *_I32)


def _token_count(p: Program, m: nn.Module) -> int:
    """Tokens of the residual stream: prefix tokens plus the patches of the program's input."""
    _, h, w = p.input["shape"]
    patch = m.patch_embed.proj.weight.shape[-1]
    return m.num_prefix_tokens + (h // patch) * (w // patch)
