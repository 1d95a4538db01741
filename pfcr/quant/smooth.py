"""Outlier migration folded into the float weights before quantization (QuantConfig.smooth).

Each transform changes weights only, is exact in real arithmetic, and so leaves the integer
program's ops as they are: the exported program is the quantized model's, whatever alpha is.
- SmoothQuant (Xiao et al. 2023) on every LayerNorm -> Linear pair (norm1 -> qkv, norm2 -> fc1,
  Swin's merging norm -> reduction): s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha); the norm's gamma
  and beta / s, the Linear's columns * s;
- the same between v and proj (v's rows of qkv / s, proj's columns * s);
- a per-head Hadamard rotation H between v and proj (v' = v H, proj' = proj H; H H = I), which
  spreads one channel's outlier over the head (QuaRot/SpinQuant), where the head width is a power
  of two;
- q/k balancing: q's rows * t, k's rows / t with t = sqrt(max|k| / max|q|) per channel, so q and k
  share the range (q k^T is unchanged).
On the real ViT-S/14 the four together lift W4A4 round-to-nearest from 0.652 to 0.713 feature
cosine; at 6 and 8 bits with min..max ranges they do not help (docs/real-model.md).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pfcr.families import family_of

_EPS = 1e-5


def hadamard(n: int) -> torch.Tensor:
    """The n x n Sylvester Hadamard matrix / sqrt(n), float64: symmetric and orthonormal (H H = I)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power of two, not {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


@torch.no_grad()
def _input_ranges(model: nn.Module, linears: dict[str, nn.Linear], images: torch.Tensor,
                  batch: int = 16) -> dict[str, torch.Tensor]:
    """Per-channel max |x| of each named Linear's input; of a '*.qkv' one's output too, as '*.qkv.out'."""
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str, t: torch.Tensor) -> None:
        a = t.detach().abs().reshape(-1, t.shape[-1]).amax(0)
        seen[key] = a if key not in seen else torch.maximum(seen[key], a)

    hooks = []
    for key, lin in linears.items():
        hooks.append(lin.register_forward_pre_hook(lambda _m, a, key=key: keep(key, a[0])))
        if key.endswith(".qkv"):
            hooks.append(lin.register_forward_hook(lambda _m, _a, o, key=key: keep(key + ".out", o)))
    try:
        for j in range(0, len(images), batch):
            model(images[j:j + batch])
    finally:
        for h in hooks:
            h.remove()
    return seen


def _balance(x_range: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    w = weight.abs().amax(0).clamp(min=_EPS).double()
    return (x_range.clamp(min=_EPS).double().pow(alpha) / w.pow(1 - alpha)).to(weight.dtype)


@torch.no_grad()
def smoothed(fp_model: nn.Module, images: torch.Tensor, alpha: float) -> nn.Module:
    """A copy of `fp_model` with the transforms above at strength `alpha`, ranges from `images`."""
    family = family_of(fp_model)
    model = copy.deepcopy(fp_model).eval()
    family.prepare(model)  # LayerScale into proj / fc2 first: the weights that will be quantized
    pairs = family.postln_pairs(model)
    blocks = family.blocks(model)
    for norm, _ in pairs:
        if norm.weight is None or norm.bias is None:
            raise family.refuse(model, "a LayerNorm without affine parameters", "smoothing needs gamma and beta; "
                                "quantize without --smooth")
    linears = {f"pair{i}": lin for i, (_, lin) in enumerate(pairs)}
    linears |= {f"block{i}.proj": b.attn.proj for i, b in enumerate(blocks)}
    linears |= {f"block{i}.qkv": b.attn.qkv for i, b in enumerate(blocks)}
    ranges = _input_ranges(model, linears, images)
    for i, (norm, lin) in enumerate(pairs):
        s = _balance(ranges[f"pair{i}"], lin.weight, alpha)
        norm.weight.div_(s)
        norm.bias.div_(s)
        lin.weight.mul_(s[None, :])
    for i, blk in enumerate(blocks):
        qkv, proj, heads = blk.attn.qkv, blk.attn.proj, blk.attn.num_heads
        d = qkv.weight.shape[0] // 3
        out = ranges[f"block{i}.qkv.out"]
        t = (out[d:2 * d].clamp(min=_EPS) / out[:d].clamp(min=_EPS)).sqrt()
        s = _balance(ranges[f"block{i}.proj"], proj.weight, alpha)
        rows = [(slice(0, d), t), (slice(d, 2 * d), 1 / t), (slice(2 * d, 3 * d), 1 / s)]
        for part, scale in rows:
            qkv.weight[part].mul_(scale[:, None])
            if qkv.bias is not None:
                qkv.bias[part].mul_(scale)
        proj.weight.mul_(s[None, :])
        hd = d // heads
        if hd & (hd - 1) == 0:
            h = torch.block_diag(*[hadamard(hd)] * heads).to(qkv.weight.dtype)
            qkv.weight[2 * d:] = h @ qkv.weight[2 * d:]
            if qkv.bias is not None:
                qkv.bias[2 * d:] = h @ qkv.bias[2 * d:]
            proj.weight.copy_(proj.weight @ h)
    return model
