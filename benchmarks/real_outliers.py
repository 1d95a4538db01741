"""What limits W8A8 and W4A4 on the real ViT-S/14 (DINOv2) of `pfcr real` (realvit; issue 15):
per-quantizer sensitivity, the activation statistics of the dominant quantizers, and candidate fixes
measured as ablation records. Nothing under pfcr/ is edited: the fixes are float transforms of the
model before QuantModel is built (exact in float), a calibration of our own (the same search as
pfcr.quant.calibrate with other clipping rules), or per-quantizer bit widths set after the model is
built.

    python benchmarks/real_outliers.py sensitivity --bits 8 8       # one group on / one group off
    python benchmarks/real_outliers.py stats                        # per-channel ranges of the inputs
    python benchmarks/real_outliers.py knob --bits 8 8 --knob clip=minmax --seed 0   # one record

A knob is a comma-separated list of parts (see KNOB_HELP); its text becomes the record's tag, so
`pfcr real summary --results benchmarks/results/real` lists the knobs beside the plain rtn records.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import re
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from realvit import track as rv  # noqa: E402

RESULTS = ROOT / "benchmarks/results/real"

KNOB_HELP = """knob parts (comma-separated, applied in this order):
  smooth-ln=A      SmoothQuant on norm1->qkv and norm2->fc1: s_j = max|x_j|^A / max|W_:j|^(1-A), LN gamma,
                   beta / s, W columns * s (exact in float; RepQ's channel-wise scales still on top)
  smooth-vproj=A   the same on v -> proj: v rows (qkv rows 2D..3D) / s, proj columns * s (exact, no new op)
  had-vproj        per-head 64x64 Hadamard on v and proj's input: v rows H, proj columns H (exact, no new op)
  smooth-qk        q rows * t, k rows / t, t_j = sqrt(max|k_j| / max|q_j|) (exact, no new op)
  smooth-fc2=A     GELU output / s per channel, fc2 columns * s (export: a per-channel GELU table)
  had-fc2          block-diagonal Hadamard (3 x 512) on the GELU output, fc2 columns H (export: an
                   online integer Hadamard op before fc2's input requantization)
  clip=RULE        activation ranges: mse (pfcr's, on a 4M-element sample), fullmax (mse with the true
                   min/max among the candidates), minmax (no clipping), pNNNN (quantile, e.g. p9999),
                   output (fullmax candidates, chosen by the error of the Linear's output X W^T)
  softmax=KIND     log2 (pfcr's), sqrt2 (log base sqrt 2), uniform (scale 1/(2^b - 1))
  cls-sep          the class token (token 0, where this model's massive activations sit in blocks 2-8) gets
                   its own static ranges in every token-shaped activation quantizer (per channel for the
                   post-LN inputs, per tensor otherwise), calibrated on the class-token rows after RepQ's
                   folding; the other tokens keep the rule's ranges (export: per-token-position
                   requantization constants / the LayerNorm's output constants for token 0);
                   cls-sep=pt: the same, per tensor everywhere; cls-sep=linear: the Linear inputs only
                   (per tensor); cls-sep=attn: q, k, v only; cls-sep=ln: the post-LN inputs only (per
                   channel); cls-sep=ln8: the post-LN inputs only, per tensor at 8 bits;
                   cls-sep=rows8 / rowsfp: the Linear inputs and q (the quantizers read row by row)
                   at 8 bits per tensor / left float; cls-sep=allfp: every token-shaped quantizer
                   left float for token 0 (the others still calibrated without it); cls-sep=all8 /
                   allminmax: as cls-sep, token 0's codes at 8 bits / its ranges not clipped;
                   cls-sep=wideN / plusE[fF]: token 0 keeps the others' step with its codes widened
                   to N bits / by E bits (and F more fraction bits after the LayerNorms);
                   cls-sep=clip: token 0's own (clipping) range, as bounds on the others' grid;
                   cls-sep=clip4: the same, the post-LN inputs and q, k, v only, within 256 codes of
                   the others' (what QuantConfig.cls_clip, --cls-clip, builds)
  cls-clip         the suite's own QuantConfig.cls_clip (calibrate without token 0, then
                   calibrate_class_token): the quantizers keep their names, so `sensitivity` sees them
  a8=KINDS         these activation kinds at 8 bits (mixed precision), KINDS joined by '+'
  fp=KINDS         these activation kinds left float (upper bound of a wider integer)
activation kinds: qkv_in, q, k, v, softmax, proj_in, fc1_in, fc2_in, image; blocks: kind@i (e.g. fc2_in@11)"""

# Activation quantizer kinds by the tail of their name in QuantModel.quantizers().
ACT_KINDS = {"qkv_in": "attn.qkv.a_quant", "q": "attn.matmul_qk.a_quant", "k": "attn.matmul_qk.b_quant",
             "v": "attn.matmul_av.b_quant", "softmax": "attn.matmul_av.a_quant", "proj_in": "attn.proj.a_quant",
             "fc1_in": "mlp.fc1.a_quant", "fc2_in": "mlp.fc2.a_quant"}
W_KINDS = {"w_qkv": "attn.qkv", "w_proj": "attn.proj", "w_fc1": "mlp.fc1", "w_fc2": "mlp.fc2"}
STEM = {"image": "patch_embed.proj.a_quant", "w_patch": "patch_embed.proj.w_quant"}
MAX_SEARCH = 1 << 22  # = pfcr.quant.quantizers._MAX_SEARCH
QUANTILES = (0.99, 0.999, 0.9999, 0.99999, 1.0)
SHRINK = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _block_of(name: str) -> int | None:
    m = re.search(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def kind_of(name: str) -> str | None:
    for k, tail in {**ACT_KINDS, **STEM}.items():
        if name.endswith(tail):
            return k
    for k, tail in W_KINDS.items():
        if name.endswith(tail + ".w_quant"):
            return k
    return None


def _match(name: str, spec: str) -> bool:
    """`spec` is a kind (every block) or kind@i (block i)."""
    kind, _, blk = spec.partition("@")
    return kind_of(name) == kind and (not blk or _block_of(name) == int(blk))


# ------------------------------------------------------------------------------------- float model

@__import__("functools").cache
def _channel_scale_cls():
    from torch import nn

    class ChannelScale(nn.Module):
        """x * scale per channel (the last axis)."""

        def __init__(self, scale):
            super().__init__()
            self.register_buffer("scale", scale.float())

        def forward(self, x):
            return x * self.scale

    class Rotate(nn.Module):
        """x @ R on the last axis (R orthonormal)."""

        def __init__(self, r):
            super().__init__()
            self.register_buffer("r", r.float())

        def forward(self, x):
            return x @ self.r

    return ChannelScale, Rotate


def float_ranges(model, images, batch: int = 16) -> dict:
    """Per-channel max |x| of the inputs the transforms balance, on `images` (float model)."""
    import torch

    seen: dict[str, torch.Tensor] = {}

    def keep(key, t):
        a = t.detach().abs().reshape(-1, t.shape[-1]).amax(0)
        seen[key] = a if key not in seen else torch.maximum(seen[key], a)

    hooks = []
    for i, blk in enumerate(model.blocks):
        hooks.append(blk.attn.qkv.register_forward_pre_hook(lambda _m, a, i=i: keep(f"ln1.{i}", a[0])))
        hooks.append(blk.attn.qkv.register_forward_hook(lambda _m, _a, o, i=i: keep(f"qkv_out.{i}", o)))
        hooks.append(blk.attn.proj.register_forward_pre_hook(lambda _m, a, i=i: keep(f"proj_in.{i}", a[0])))
        hooks.append(blk.mlp.fc1.register_forward_pre_hook(lambda _m, a, i=i: keep(f"ln2.{i}", a[0])))
        hooks.append(blk.mlp.fc2.register_forward_pre_hook(lambda _m, a, i=i: keep(f"fc2_in.{i}", a[0])))
    try:
        with torch.no_grad():
            for j in range(0, len(images), batch):
                model.forward_features(images[j:j + batch])
    finally:
        for h in hooks:
            h.remove()
    return seen


def _eff_weight(blk, linear_name: str):
    """The Linear's weight as it will be quantized: LayerScale folded into proj / fc2 rows."""
    from timm.layers import LayerScale

    lin, ls = {"proj": (blk.attn.proj, blk.ls1), "fc2": (blk.mlp.fc2, blk.ls2)}[linear_name]
    w = lin.weight.detach()
    return w * ls.gamma.detach()[:, None] if isinstance(ls, LayerScale) else w


def transform(model, parts: dict, calib) -> dict:
    """Apply the float-exact transforms of `parts` to `model` in place; returns what was done."""
    import torch
    from torch import nn

    from pfcr.quant.smooth import hadamard

    ChannelScale, Rotate = _channel_scale_cls()
    done = {}
    need = [k for k in ("smooth-ln", "smooth-vproj", "smooth-qk", "smooth-fc2") if k in parts]
    ranges = float_ranges(model, calib) if need else {}
    eps = 1e-5
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            d = blk.attn.qkv.weight.shape[1]
            hd = d // blk.attn.num_heads
            qkv_w, qkv_b = blk.attn.qkv.weight, blk.attn.qkv.bias
            if "smooth-ln" in parts:
                alpha = float(parts["smooth-ln"])
                for norm, lin, key in ((blk.norm1, blk.attn.qkv, "ln1"), (blk.norm2, blk.mlp.fc1, "ln2")):
                    a = ranges[f"{key}.{i}"].clamp(min=eps)
                    w = lin.weight.abs().amax(0).clamp(min=eps)
                    s = a.pow(alpha) / w.pow(1 - alpha)
                    norm.weight.div_(s)
                    norm.bias.div_(s)
                    lin.weight.mul_(s[None, :])
                    done.setdefault("smooth-ln_scale_range", []).append([float(s.min()), float(s.max())])
            if "smooth-qk" in parts:
                out = ranges[f"qkv_out.{i}"]
                t = (out[d:2 * d].clamp(min=eps) / out[:d].clamp(min=eps)).sqrt()
                qkv_w[:d].mul_(t[:, None])
                qkv_w[d:2 * d].div_(t[:, None])
                if qkv_b is not None:
                    qkv_b[:d].mul_(t)
                    qkv_b[d:2 * d].div_(t)
            if "smooth-vproj" in parts:
                alpha = float(parts["smooth-vproj"])
                a = ranges[f"proj_in.{i}"].clamp(min=eps)
                w = _eff_weight(blk, "proj").abs().amax(0).clamp(min=eps)
                s = a.pow(alpha) / w.pow(1 - alpha)
                qkv_w[2 * d:].div_(s[:, None])
                if qkv_b is not None:
                    qkv_b[2 * d:].div_(s)
                blk.attn.proj.weight.mul_(s[None, :])
            if "had-vproj" in parts:
                h = torch.block_diag(*[hadamard(hd)] * blk.attn.num_heads).to(qkv_w.dtype)
                qkv_w[2 * d:] = h @ qkv_w[2 * d:]  # v' = v H per head (H symmetric)
                if qkv_b is not None:
                    qkv_b[2 * d:] = h @ qkv_b[2 * d:]
                blk.attn.proj.weight.copy_(blk.attn.proj.weight @ h)
            if "smooth-fc2" in parts:
                alpha = float(parts["smooth-fc2"])
                a = ranges[f"fc2_in.{i}"].clamp(min=eps)
                w = _eff_weight(blk, "fc2").abs().amax(0).clamp(min=eps)
                s = a.pow(alpha) / w.pow(1 - alpha)
                blk.mlp.act = nn.Sequential(blk.mlp.act, ChannelScale(1 / s))
                blk.mlp.fc2.weight.mul_(s[None, :])
            if "had-fc2" in parts:
                hidden = blk.mlp.fc2.weight.shape[1]
                n = 512 if hidden % 512 == 0 else 1 << int(math.log2(hidden & -hidden))
                h = torch.block_diag(*[hadamard(n)] * (hidden // n)).to(qkv_w.dtype)
                blk.mlp.act = nn.Sequential(blk.mlp.act, Rotate(h))  # g' = g H
                blk.mlp.fc2.weight.copy_(blk.mlp.fc2.weight @ h)  # W' = W H: g' W'^T = g W^T
    return done


# ------------------------------------------------------------------------------------- calibration

def _set_bits(q, bits: int) -> None:
    from pfcr.quant.quantizers import Log2Quantizer

    if isinstance(q, Log2Quantizer):
        q.bits, q.levels = bits, 1 << bits
        return
    signed = q.qmin < 0
    q.bits = bits
    q.qmin = -(1 << (bits - 1)) if signed else 0
    q.qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


def _search(q, rows, candidates, err_fn):
    """Best (scale, zero point) per row among candidates (lo, hi) by err_fn(fake, rows) per row."""
    import torch

    best_err = None
    for lo, hi in candidates:
        s, z = q.params_for(lo, hi)
        err = err_fn(q._fake(rows, s[:, None], z[:, None]))
        if best_err is None:
            best_err, best_s, best_z = err, s, z
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


def calibrate_act(q, x, rule: str, weight=None) -> None:
    """Set activation quantizer `q`'s range from its float input `x` by `rule` (see KNOB_HELP)."""
    import torch

    from pfcr.quant.quantizers import _channel_view

    if rule == "mse":
        q.calibrate(x)
        return
    rows_full = _channel_view(x.detach().float(), q.axis)
    lo_all, hi_all = rows_full.min(dim=1).values, rows_full.max(dim=1).values
    rows = rows_full
    if rows.shape[1] > MAX_SEARCH:
        idx = torch.randperm(rows.shape[1], generator=torch.Generator().manual_seed(0))[:MAX_SEARCH]
        rows = rows[:, idx]
    if rule == "minmax":
        q.set_params(*q.params_for(lo_all, hi_all))
        return
    if rule.startswith("p"):
        frac = float("0." + rule[1:])
        qv = torch.quantile(rows, torch.tensor([1 - frac, frac]), dim=1)
        q.set_params(*q.params_for(qv[0], qv[1]))
        return
    candidates = [(lo_all, hi_all)] + [(lo_all * c, hi_all * c) for c in SHRINK]
    qs = torch.tensor([1 - v for v in QUANTILES] + list(QUANTILES))
    qv = torch.quantile(rows, qs, dim=1)
    n = len(QUANTILES)
    candidates += [(qv[i], qv[n + i]) for i in range(n)]
    if rule == "output" and weight is not None and q.axis is None:
        # rows of the Linear's input: [tokens, in]; error of the output X W^T
        xt = x.detach().float().reshape(-1, x.shape[-1])
        sel = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))[:8192]
        xt = xt[sel]
        wt = weight.detach().float().T
        ref = xt @ wt

        def err_out(fake):
            return ((fake.reshape(xt.shape) @ wt - ref).pow(2).mean()).reshape(1)

        s, z = _search(q, xt.reshape(1, -1), candidates, err_out)
        q.set_params(s, z)
        return
    if rule not in ("fullmax", "output"):
        raise SystemExit(f"unknown clip rule {rule!r}")
    s, z = _search(q, rows, candidates, lambda fake: (fake - rows).pow(2).mean(dim=1))
    q.set_params(s, z)


def calibrate(qm, images, rule: str = "mse", batch_size: int = 64, drop_cls: str | None = None) -> None:
    """pfcr.quant.calibrate.calibrate with the clipping `rule` for the activation quantizers;
    `drop_cls`: the token-shaped quantizers see every token but the class token (cls-sep)."""
    import torch

    from pfcr.quant.calibrate import calibrate_weights, float_inputs
    from pfcr.quant.quantizers import AdaRoundQuantizer, UniformQuantizer

    if rule == "mse" and not drop_cls:
        from pfcr.quant.calibrate import calibrate as pfcr_calibrate

        pfcr_calibrate(qm, images, batch_size)
        return
    acts = {n: q for n, q in qm.quantizers() if isinstance(q, UniformQuantizer)
            and not isinstance(q, AdaRoundQuantizer)}
    owners = {}
    for name, mod in qm.model.named_modules():
        if hasattr(mod, "a_quant") and hasattr(mod, "weight") and mod.weight.dim() == 2:
            owners[name + ".a_quant"] = mod.weight
    def rest(n, t):
        ax = TOKEN_AXIS.get(kind_of(n)) if drop_cls and kind_of(n) in cls_kinds(drop_cls) else None
        return t if ax is None else t.narrow(ax, 1, t.shape[ax] - 1)

    seen = float_inputs(qm, images, acts, rest, batch_size)
    with torch.no_grad():
        for name, q in acts.items():
            calibrate_act(q, seen.pop(name), rule, owners.get(name))
    calibrate_weights(qm)


# ----------------------------------------------------------------------------------- softmax kinds

def _softmax_sqrt2(self, x):
    """log base sqrt 2: x_hat = 2^(-q/2), q in 0..2^b-1 (RepQ-ViT's log-sqrt-2; an integer program
    does it with a shift and one multiply by sqrt 2 for odd codes)."""
    import torch

    from pfcr.quant.quantizers import round_ste

    if not self.enabled:
        return x
    q = round_ste(-2 * torch.log2((x / self.scale).clamp(min=1e-30)))
    return torch.where(q < self.levels, self.scale * torch.pow(2.0, -q.clamp(min=0) / 2), torch.zeros_like(x))


def set_softmax(qm, kind: str, bits: int) -> None:
    """Swap every post-softmax quantizer for `kind`."""
    import types

    import torch

    from pfcr.quant.quantizers import Log2Quantizer, UniformQuantizer

    for _, mod in qm.model.named_modules():
        mm = getattr(mod, "matmul_av", None)
        if mm is None:
            continue
        if kind == "log2":
            continue
        if kind == "sqrt2":
            assert isinstance(mm.a_quant, Log2Quantizer)
            mm.a_quant.forward = types.MethodType(_softmax_sqrt2, mm.a_quant)
        elif kind == "uniform":
            u = UniformQuantizer(bits)
            u.set_params(torch.tensor([1.0 / ((1 << bits) - 1)]), torch.zeros(1))
            mm.a_quant = u
        else:
            raise SystemExit(f"unknown softmax kind {kind!r}")


# ------------------------------------------------------------------------------ class-token ranges

def cls_kinds(which: str) -> set[str]:
    """The quantizer kinds cls-sep=WHICH splits: all (post-LN ones per channel), pt (all, per
    tensor), linear (the Linear inputs), attn (q, k, v), ln (the post-LN inputs, per channel), ln8
    (the post-LN inputs, per tensor at 8 bits), rows8 / rowsfp (the quantizers whose consumers work
    row by row, the Linear inputs and q: at 8 bits per tensor / left float); every kind otherwise
    (allfp, wideN, plusE[fF] too)."""
    attn, ln = {"q", "k", "v"}, {"qkv_in", "fc1_in"}
    rows = set(TOKEN_AXIS) - {"k", "v"}
    return {"linear": set(TOKEN_AXIS) - attn, "attn": attn, "ln": ln, "ln8": ln, "rows8": rows,
            "rowsfp": rows, "clip4": ln | attn}.get(which, set(TOKEN_AXIS))


def _wider_codes(q, kind: str, which: str):
    """Token 0's quantizer for cls-sep=wideN / plusE[fF]: the others' step and zero point, its codes
    extended to N bits (wideN) or by E bits (plusE) around the zero point, and (fF, the post-LN
    inputs only) 2^F finer steps: what an integer program could give token 0 without a second weight
    copy (a wider clamp, and F more fraction bits in its row of the next GEMM)."""
    import torch

    from pfcr.quant.quantizers import UniformQuantizer

    n, _, frac = which.removeprefix("wide").removeprefix("plus").partition("f")
    extra = int(n) if which.startswith("plus") else max(int(n) - q.bits, 0)
    f = int(frac or 0) if kind in ("qkv_in", "fc1_in") else 0
    cls = UniformQuantizer(q.bits, q.symmetric)
    cls.zero_point = q.zero_point
    cls.scale = q.scale if not f else torch.nn.Parameter(q.scale.detach() / (1 << f))
    z, k = int(q.zero_point), 1 << extra
    cls.qmin, cls.qmax = z + (q.qmin - z) * k, z + (q.qmax - z + 1) * k - 1
    cls.calibrated.fill_(True)
    return cls


# where the token axis is in each quantizer's input
TOKEN_AXIS = {"qkv_in": 1, "proj_in": 1, "fc1_in": 1, "fc2_in": 1, "q": 2, "k": 3, "v": 2}


@__import__("functools").cache
def _token_split_cls():
    import torch
    from torch import nn

    class TokenSplit(nn.Module):
        """Token 0 through `cls`, the other tokens through `main` (along `axis`)."""

        def __init__(self, main, cls, axis: int):
            super().__init__()
            self.main, self.cls, self.axis = main, cls, axis

        def forward(self, x):
            n = x.shape[self.axis]
            return torch.cat([self.cls(x.narrow(self.axis, 0, 1)), self.main(x.narrow(self.axis, 1, n - 1))],
                             self.axis)

    return TokenSplit


def split_class_token(qm, calib, batch_size: int = 16, which: str = "all") -> int:
    """After calibration and RepQ folding: give token 0 its own quantizer in every token-shaped
    activation quantizer (`which` = linear: the Linear inputs only, per tensor), calibrated (pfcr's
    MSE search) on the float model's token-0 rows."""
    import torch

    from pfcr.quant.calibrate import float_inputs
    from pfcr.quant.quantizers import UniformQuantizer

    TokenSplit = _token_split_cls()
    split, wide = {}, 0
    for name, q in list(qm.quantizers()):
        kind = kind_of(name)
        if kind not in TOKEN_AXIS or not isinstance(q, UniformQuantizer):
            continue
        if kind not in cls_kinds(which):
            continue
        owner, _, attr = name.rpartition(".")
        parent = qm.model.get_submodule(owner)
        if which.startswith(("wide", "plus")):  # token 0 on the others' grid: nothing to calibrate
            setattr(parent, attr, TokenSplit(q, _wider_codes(q, kind, which), TOKEN_AXIS[kind]))
            wide += 1
            continue
        postln = kind in ("qkv_in", "fc1_in") and which in ("all", "all8", "allminmax", "clip", "clip4", "ln")
        eight = which in ("ln8", "rows8", "all8")
        cls = UniformQuantizer(8 if eight else q.bits, q.symmetric, axis=-1 if postln else None)
        if not eight:
            cls.qmin, cls.qmax = q.qmin, q.qmax
        cls.enabled = which not in ("rowsfp", "allfp")
        ts = TokenSplit(q, cls, TOKEN_AXIS[kind])
        setattr(parent, attr, ts)
        split[name] = ts
    def cls_rows(n, t):
        ax = split[n].axis
        return t.narrow(ax, 0, 1).movedim(ax, -2).reshape(-1, t.shape[-1] if ax != t.dim() - 1 else t.shape[-2])

    if not split:
        return wide
    rows = float_inputs(qm, calib, split, cls_rows, batch_size)
    with torch.no_grad():
        for n, ts in split.items():
            ts.cls.calibrate(rows[n], "minmax" if which == "allminmax" else "mse")
            if which in ("clip", "clip4"):  # keep its clipping range, on the others' grid (their step)
                ts.cls = _clamp_on_grid(ts.main, ts.cls, which == "clip4")
    return len(split)


def _clamp_on_grid(main, own, window: bool = False):
    """Token 0's quantizer for cls-sep=clip: `own`'s range (its clipping, per channel where it is),
    as code bounds on `main`'s grid (main's step and zero point: as fine as the other tokens');
    `window` (clip4): the bounds cut so that every token's codes span at most 256 (one int8 operand
    for the GEMMs and attention products), the rule of QuantConfig.cls_clip."""
    import types

    import torch

    from pfcr.quant.calibrate import bounds_on_grid, int8_window
    from pfcr.quant.quantizers import UniformQuantizer, round_ste

    s, z = main.scale.detach().reshape(-1), main.zero_point.reshape(-1)
    lo, hi = (b.reshape(-1) for b in bounds_on_grid(own, s, z))
    if window:
        lo, hi = int8_window(lo, hi, main.qmin, main.qmax)

    def forward(self, x):  # per-channel bounds: UniformQuantizer's LSQ scale takes an integer qmax
        return (torch.clamp(round_ste(x / s) + z, lo, hi) - z) * s

    cls = UniformQuantizer(main.bits, main.symmetric)
    cls.forward = types.MethodType(forward, cls)
    return cls


# ----------------------------------------------------------------------------------------- building

def parse_knob(knob: str) -> dict:
    parts = {}
    for p in filter(None, (knob or "").split(",")):
        k, _, v = p.partition("=")
        parts[k] = v or True
    return parts


def build(model, calib, w_bits: int, a_bits: int, parts: dict):
    """Float transforms, QuantModel, calibration with the knob's clipping, bit widths, RepQ folding."""
    from pfcr.quant.calibrate import reparameterize
    from pfcr.quant.model import QuantConfig, QuantModel
    from pfcr.quantize import harden

    fm = copy.deepcopy(model)
    info = transform(fm, parts, calib)
    qm = QuantModel(fm, QuantConfig(w_bits=w_bits, a_bits=a_bits, log2_softmax=parts.get("softmax") != "uniform",
                                    cls_clip="cls-clip" in parts))
    quantizers = dict(qm.quantizers())
    for spec in filter(None, str(parts.get("a8", "")).split("+")):
        hit = [n for n in quantizers if _match(n, spec)]
        if not hit:
            raise SystemExit(f"a8={spec}: no quantizer matches")
        for n in hit:
            _set_bits(quantizers[n], 8)
    cls = parts.get("cls-sep")
    cls = "all" if cls is True else cls
    calibrate(qm, calib, parts.get("clip", "mse"), drop_cls=cls)
    set_softmax(qm, parts.get("softmax", "log2"), qm.cfg.softmax_bits)
    for spec in filter(None, str(parts.get("fp", "")).split("+")):
        hit = [n for n, _ in qm.quantizers() if _match(n, spec)]
        if not hit:
            raise SystemExit(f"fp={spec}: no quantizer matches")
        for n in hit:
            dict(qm.quantizers())[n].enabled = False
    reparameterize(qm)
    if "cls-clip" in parts:
        from pfcr.quant.calibrate import calibrate_class_token

        info["class_token_quantizers"] = calibrate_class_token(qm, calib)
    if "cls-sep" in parts:
        info["class_token_quantizers"] = split_class_token(qm, calib, which=cls)
    harden(qm)
    qm.eval()
    return qm, info


def setup(args):
    import torch

    rv._threads(args.threads)
    model, mcard = rv.load_model()
    data, icard = rv.load_images()
    pool = rv.photos.to_tensor(data["calib"])
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))[: args.calib]
    x_all = rv.photos.to_tensor(data["eval"])
    fp, fp_logits = rv.fp32_features(model, x_all, mcard["checkpoint_sha256"], icard["sha256"])
    return model, mcard, data, icard, pool, pick, x_all, fp, fp_logits


# ---------------------------------------------------------------------------------------- sensitivity

def _features_from(qm, streams, start: int, batch: int = 16):
    """Pre-head features running the blocks from `start` on the cached stream entering it."""
    import torch

    m = qm.model
    out = []
    with torch.no_grad():
        for i in range(0, len(streams), batch):
            h = streams[i:i + batch]
            for blk in m.blocks[start:]:
                h = blk(h)
            out.append(m.forward_head(m.norm(h), pre_logits=True))
    return torch.cat(out).double()


def _groups(qm):
    """(group name, block or None, [quantizer modules]) for every kind x block and the stem."""
    qs = dict(qm.quantizers())
    groups = []
    for name in qs:
        k = kind_of(name)
        if k is None:
            continue
        groups.append((f"{k}@{_block_of(name)}" if _block_of(name) is not None else k, _block_of(name), name))
    out: dict[str, tuple] = {}
    for g, b, n in groups:
        out.setdefault(g, (b, []))[1].append(qs[n])
    return out


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """One group on (the rest float), and one group off (the rest quantized), per kind x block,
    per kind (all blocks) and per block (all kinds), on the first --eval evaluation crops."""
    import torch

    model, _, _, icard, pool, pick, x_all, fp_all, _ = setup(args)
    x, fp = x_all[: args.eval], fp_all[: args.eval]
    w_bits, a_bits = args.bits
    t0 = time.time()
    qm, _ = build(model, pool[pick], w_bits, a_bits, parse_knob(args.knob))
    t_build = time.time() - t0
    cos = lambda q: torch.nn.functional.cosine_similarity(fp, q, dim=1)  # noqa: E731

    def summary(q):
        c = cos(q)
        return {"cos": round(float(c.mean()), 6), "p5": round(float(torch.quantile(c, 0.05)), 6)}

    allq = [q for _, q in qm.quantizers()]
    flags = [q.enabled for q in allq]
    q_full, _ = rv.features_and_logits(qm.model, x)
    base = summary(q_full)
    # the float stream entering each block (every quantizer off)
    for q in allq:
        q.enabled = False
    streams = {}
    hooks = [blk.register_forward_pre_hook(lambda _m, a, i=i: streams.setdefault(i, []).append(a[0]))
             for i, blk in enumerate(qm.model.blocks)]
    q_off, _ = rv.features_and_logits(qm.model, x)
    for h in hooks:
        h.remove()
    streams = {i: torch.cat(v) for i, v in streams.items()}
    none = summary(q_off)
    groups = _groups(qm)
    only, but = {}, {}
    t0 = time.time()
    for g, (blk, mods) in groups.items():
        for q in mods:
            q.enabled = True
        feats = rv.features_and_logits(qm.model, x)[0] if blk is None else _features_from(qm, streams[blk], blk)
        for q in mods:
            q.enabled = False
        only[g] = summary(feats)
    print(f"  one group on: {len(only)} groups, {time.time() - t0:.0f} s", flush=True)
    for q, f in zip(allq, flags, strict=True):
        q.enabled = f
    by_kind: dict[str, list] = {}
    by_block: dict[str, list] = {}
    for g, (blk, mods) in groups.items():
        by_kind.setdefault(g.split("@")[0], []).extend(mods)
        if blk is not None:
            by_block.setdefault(f"block{blk}", []).extend(mods)
    for g, mods in {**by_kind, **by_block}.items():
        for q in mods:
            q.enabled = False
        but[g] = summary(rv.features_and_logits(qm.model, x)[0])
        for q in mods:
            q.enabled = True
        print(f"  off: {g:10s} cosine {but[g]['cos']:.4f} p5 {but[g]['p5']:.4f}", flush=True)
    # one kind on across all blocks (rest float)
    only_kind = {}
    for q in allq:
        q.enabled = False
    for g, mods in by_kind.items():
        for q in mods:
            q.enabled = True
        only_kind[g] = summary(rv.features_and_logits(qm.model, x)[0])
        for q in mods:
            q.enabled = False
        print(f"  only: {g:10s} cosine {only_kind[g]['cos']:.4f} p5 {only_kind[g]['p5']:.4f}", flush=True)
    for q, f in zip(allq, flags, strict=True):
        q.enabled = f
    top = sorted(only.items(), key=lambda kv: kv[1]["cos"])[:15]
    card = {"format": "pfcr.real.sensitivity/1", "model": rv.MODEL_NAME, "method": "rtn", "w_bits": w_bits,
            "a_bits": a_bits, "seed": args.seed, "knob": args.knob or None, "calibration_images": len(pick),
            "eval_images": len(x), "images_sha256": icard["sha256"], "threads": torch.get_num_threads(),
            "build_seconds": round(t_build, 1),
            "note": "cos/p5: feature cosine mean / 5th percentile vs FP32 on the first eval crops; 'one_on': "
                    "only that group quantized; 'one_off': everything quantized except that group",
            "all_on": base, "all_off": none, "one_on_kind": only_kind, "one_off": but, "one_on": only,
            "worst_one_on": [g for g, _ in top]}
    knob = f"-{_tag(args.knob)}" if args.knob else ""
    out = Path(args.results) / f"sensitivity-rtn-w{w_bits}a{a_bits}{knob}-seed{args.seed}.json"
    rv._write_json(out, card)
    print(f"{out}\n  all on {base}, worst single groups: " +
          ", ".join(f"{g} {v['cos']:.4f}" for g, v in top[:10]))
    return 0


# --------------------------------------------------------------------------------------------- stats

def cmd_stats(args: argparse.Namespace) -> int:
    """Per-channel ranges of every quantized activation's input and the residual stream, float model
    (LayerScale folded, as QuantModel sees it), on --images calibration crops."""
    import torch

    from pfcr.quant.model import QuantConfig, QuantModel

    model, _, _, icard, pool, pick, *_ = setup(args)
    images = pool[pick][: args.images]
    qm = QuantModel(model, QuantConfig(w_bits=8, a_bits=8))
    qm.set_quant(weights=False, acts=False)
    acc: dict[str, list] = {}
    hooks = []
    for name, q in qm.quantizers():
        if kind_of(name) in ACT_KINDS:
            hooks.append(q.register_forward_pre_hook(lambda _m, a, n=name: acc.setdefault(n, []).append(a[0])))
    for i, blk in enumerate(qm.model.blocks):
        hooks.append(blk.register_forward_hook(lambda _m, _a, o, i=i: acc.setdefault(f"stream.{i}", []).append(o)))
    with torch.no_grad():
        for j in range(0, len(images), 8):
            qm(images[j:j + 8])
    for h in hooks:
        h.remove()
    rows = {}
    for name, ts in acc.items():
        t = torch.cat([v.reshape(-1, v.shape[-1]) for v in ts]).float()  # [tokens (x heads), channels]
        absmax_c = t.abs().amax(0)
        flat = t.abs().reshape(-1)
        sample = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[: 1 << 22]]
        pct = torch.quantile(sample, torch.tensor([0.5, 0.99, 0.999, 0.9999]))
        top = absmax_c.topk(5)
        # tokens carrying the largest values: share of rows with any |x| > 0.5 max
        big = (t.abs() > 0.5 * float(flat.max())).any(1).float().mean()
        ch_med = float(absmax_c.median())
        rows[name] = {"absmax": round(float(flat.max()), 4), "p50": round(float(pct[0]), 4),
                      "p99": round(float(pct[1]), 4), "p99.9": round(float(pct[2]), 4),
                      "p99.99": round(float(pct[3]), 4),
                      "channel_absmax_median": round(ch_med, 4),
                      "max_over_median_channel": round(float(flat.max()) / max(ch_med, 1e-12), 2),
                      "top_channels": [[int(c), round(float(v), 3)]
                                       for v, c in zip(top.values, top.indices, strict=True)],
                      "rows_above_half_max": round(float(big), 6), "rows": len(t)}
        print(f"  {name:34s} max {rows[name]['absmax']:9.3f}  p99.99 {rows[name]['p99.99']:8.3f} "
              f"p99 {rows[name]['p99']:7.3f} max/med-ch {rows[name]['max_over_median_channel']:7.1f} "
              f"top ch {rows[name]['top_channels'][:3]} rows>max/2 {rows[name]['rows_above_half_max']:.5f}",
              flush=True)
    card = {"format": "pfcr.real.act-stats/1", "model": rv.MODEL_NAME, "seed": args.seed, "images": len(images),
            "images_sha256": icard["sha256"],
            "note": "inputs of every activation quantizer of the float model (LayerScale folded into proj/fc2, "
                    "as QuantModel quantizes it) and the residual stream after each block; channel = last axis "
                    "(q, k, v: per head dim); rows_above_half_max: share of tokens with a value > max/2",
            "inputs": rows}
    out = Path(args.results) / f"act-stats-seed{args.seed}.json"
    rv._write_json(out, card)
    print(out)
    return 0


# ------------------------------------------------------------------------------------------------ knob

def _tag(knob: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+@-]+", "-", knob.replace("=", "-")).strip("-")


def cmd_knob(args: argparse.Namespace) -> int:
    """Quantize (rtn) with one knob and write a `quantize` record tagged with the knob."""
    import torch

    from core.records import make_record, write_record

    model, mcard, _, icard, pool, pick, x, fp, fp_logits = setup(args)
    calib = pool[pick]
    parts = parse_knob(args.knob)
    for w_bits, a_bits in args.bits_list:
        t0 = time.time()
        qm, info = build(model, calib, w_bits, a_bits, parts)
        q_seconds = time.time() - t0
        t0 = time.time()
        q, q_logits = rv.features_and_logits(qm.model, x)
        eval_seconds = time.time() - t0
        metrics = rv.fidelity_metrics(fp, q, fp_logits, q_logits)
        metrics.update({"seconds": round(q_seconds, 1), "eval_seconds": round(eval_seconds, 1),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                        "threads": torch.get_num_threads()})
        tag = _tag(args.knob) if args.knob else "baseline-harness"
        from pfcr.quant.model import QuantConfig

        cfg = {"method": "rtn", "quant": QuantConfig(w_bits=w_bits, a_bits=a_bits).to_dict(), "init_size": len(calib),
               "seed": args.seed, "w_bits": w_bits, "a_bits": a_bits, "tag": tag, "knob": args.knob or None,
               "knob_parts": {k: (v if v is not True else True) for k, v in parts.items()},
               "threads": torch.get_num_threads(), "harness": "benchmarks/real_outliers.py knob"}
        record = make_record(
            "quantize", model={"name": rv.MODEL_NAME, "checkpoint": f"$PFCR_CACHE/{rv.paths()['model'].name}",
                               "checkpoint_sha256": mcard["checkpoint_sha256"]},
            data={"name": rv.DATA_NAME, "split": "eval", "size": len(x)}, config=cfg, metrics=metrics,
            seed=args.seed,
            extra={"calibration": {"images": len(calib), "pool": len(pool), "indices_seed": args.seed},
                   "head": {"classes": rv.HEAD_CLASSES, "seed": rv.HEAD_SEED,
                            "note": "fixed random Linear head; fidelity is on pre-head features"},
                   "images_sha256": icard["sha256"], "transform": info, "knob_help": KNOB_HELP})
        out = write_record(record, args.results)
        print(f"{out}\n  W{w_bits}A{a_bits} {args.knob or '-'}: feature cosine {metrics['feature_cosine_mean']:.4f} "
              f"p5 {metrics['feature_cosine_p5']:.4f} rel {metrics['feature_rel_error_mean']:.4f} "
              f"5-NN {metrics['knn5_overlap']:.3f}; build {q_seconds:.0f} s, eval {eval_seconds:.0f} s", flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=KNOB_HELP)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=str(RESULTS))
    sub = ap.add_subparsers(dest="cmd", required=True)
    se = sub.add_parser("sensitivity", help="one quantizer group on / off at a time")
    se.add_argument("--bits", type=int, nargs=2, default=(8, 8), metavar=("W", "A"))
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--calib", type=int, default=64)
    se.add_argument("--eval", type=int, default=32)
    se.add_argument("--knob", default="")
    se.set_defaults(fn=cmd_sensitivity)
    st = sub.add_parser("stats", help="per-channel ranges of the quantized inputs, float model")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--calib", type=int, default=64)
    st.add_argument("--images", type=int, default=16)
    st.set_defaults(fn=cmd_stats)
    kn = sub.add_parser("knob", help="quantize with a knob, write a tagged quantize record")
    kn.add_argument("--bits", type=int, nargs=2, action="append", dest="bits_list", metavar=("W", "A"))
    kn.add_argument("--seed", type=int, default=0)
    kn.add_argument("--calib", type=int, default=64)
    kn.add_argument("--knob", default="")
    kn.set_defaults(fn=cmd_knob)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "bits_list", None) is None and args.cmd == "knob":
        args.bits_list = [(8, 8)]
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
