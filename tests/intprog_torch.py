"""A second, independent executor of the integer program, in torch int64 ops, written from the
specification (docs/integer-program.md) rather than from intprog's kernels.

It shares only the program's data with the reference executor. Whole-model agreement between the
two, bit for bit, is what catches a vectorization, broadcasting or indexing slip that a per-op test
of one implementation against itself would not.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from intprog.program import Program

_EXP_FRAC, _EXP_ONE, _LOG_FRAC, _NORM_FRAC = 8, 30, 8, 15


def round_shift(x: torch.Tensor, s: torch.Tensor | int, rounding: str) -> torch.Tensor:
    """x / 2^s as the spec names it, from a floor division and its remainder."""
    s = torch.as_tensor(s, dtype=torch.int64)
    d = torch.pow(torch.tensor(2, dtype=torch.int64), s)
    q = torch.div(x, d, rounding_mode="floor")
    if rounding == "floor":
        return q
    r2 = 2 * (x - q * d)  # twice the remainder, in [0, 2d)
    up = (r2 > d) | ((r2 == d) & (torch.ones_like(q, dtype=torch.bool) if rounding == "half_up" else (q % 2 == 1)))
    return q + up.to(torch.int64)


def requantize(acc, m, s, zp, qmin, qmax, rounding: str) -> torch.Tensor:
    return torch.clamp(zp + round_shift(acc * m, s, rounding), qmin, qmax)


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) by bisection over the bits of the root (no floating point)."""
    r = torch.zeros_like(n)
    for bit in range(31, -1, -1):
        cand = r + (1 << bit)
        r = torch.where(cand * cand <= n, cand, r)
    return r


def ilog2(v: torch.Tensor) -> torch.Tensor:
    """log2(v) with 8 fraction bits: integer part from the highest set bit, fraction bits by
    squaring the Q30 mantissa (the spec's definition)."""
    msb = torch.zeros_like(v)
    for b in range(1, 63):
        msb = torch.where(v >= (1 << b), torch.full_like(v, b), msb)
    mant = torch.where(msb >= 30, v >> (msb - 30).clamp(min=0), v << (30 - msb).clamp(min=0))
    frac = torch.zeros_like(v)
    for bit in range(_LOG_FRAC - 1, -1, -1):
        mant = (mant * mant) >> 30
        ge2 = mant >= (1 << 31)
        frac = frac + ge2.to(torch.int64) * (1 << bit)
        mant = torch.where(ge2, mant >> 1, mant)
    return msb * (1 << _LOG_FRAC) + frac


def layernorm(x: torch.Tensor, a: dict, c: dict) -> torch.Tensor:
    n = x.shape[-1]
    centered = n * x - x.sum(-1, keepdim=True)
    s2 = (centered**2).sum(-1, keepdim=True) + a["eps_term"]
    root = torch.clamp(isqrt(s2), min=1)
    norm = torch.div(2 * centered * a["sqrt_c"] + root, 2 * root, rounding_mode="floor")
    y = round_shift(c["sign"] * norm * c["multiplier"] + c["beta_fixed"], c["shift"] + _NORM_FRAC, "half_up")
    return torch.clamp(a["out_zp"] + y, a["qmin"], a["qmax"])


def _window_structure(n: int, w: int, c: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed attention as dense attention over all n tokens: the bias [H, n, n] is block
    diagonal and every pair outside a window (or masked inside one) is forbidden."""
    group = torch.arange(n) // w
    allowed = group[:, None] == group[None, :]
    pos = torch.arange(n) % w
    if "mask" in c:
        allowed &= c["mask"][group[:, None], pos[:, None], pos[None, :]] == 0
    bias = c["bias"][:, pos[:, None], pos[None, :]] if "bias" in c else torch.zeros(1, n, n, dtype=torch.int64)
    return torch.where(allowed, bias, 0), allowed


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: dict, c: dict | None = None) -> torch.Tensor:
    logits = (q - a["q_zp"]) @ (k - a["k_zp"]).transpose(-1, -2)
    allowed = torch.ones_like(logits, dtype=torch.bool)
    if a.get("window"):
        bias, allowed = _window_structure(q.shape[-2], a["window"], c or {})
        logits = logits * 2 ** a["logit_shift"] + bias
        allowed = allowed.expand_as(logits)
    row_max = torch.where(allowed, logits, torch.iinfo(torch.int64).min).amax(-1, keepdim=True)
    d = torch.clamp(logits - row_max, min=-(1 << 31))
    t = -round_shift(-d * a["sm_multiplier"], a["sm_shift"] - _EXP_FRAC, "half_up")
    f = torch.arange(1 << _EXP_FRAC, dtype=torch.float64) / (1 << _EXP_FRAC)
    table = torch.round(torch.exp2(-f) * (1 << _EXP_ONE)).to(torch.int64)
    whole, frac = (-t) // (1 << _EXP_FRAC), (-t) % (1 << _EXP_FRAC)
    e = torch.where((whole > 62) | ~allowed, 0, table[frac.clamp(min=0)] >> whole.clamp(0, 62))
    per_octave = a.get("codes_per_octave", 1)  # P: codes round(-P log2 p), P = 2 log-sqrt2
    code_shift = _LOG_FRAC - int(math.log2(per_octave))
    code = round_shift(ilog2(e.sum(-1, keepdim=True)) - ilog2(e.clamp(min=1)), code_shift, "half_up")
    top = a["max_code"]
    keep = (e > 0) & (code < (1 << a["bits"])) & (code <= per_octave * top)
    # 2^(top - code / per_octave), rounded half up: in float64, exact for these magnitudes (< 2^52,
    # and an odd code's power is irrational, never a tie)
    power = torch.floor(torch.exp2(top - code.clamp(min=0).double() / per_octave) + 0.5).to(torch.int64)
    weight = torch.where(keep, power, 0)
    return weight @ (v - a["v_zp"])


def _op(kind: str, xs: list[torch.Tensor], a: dict, c: dict) -> torch.Tensor:
    x = xs[0]
    if kind == "patchify":
        p = a["patch"]
        return torch.nn.functional.unfold(x.double(), p, stride=p).transpose(1, 2).round().to(torch.int64)
    if kind in ("linear", "requantize"):
        if kind == "linear":
            x = (x - a["in_zp"]) @ (c["weight"] - c["weight_zp"][:, None]).T + c["bias"]
        return requantize(x, c["multiplier"], c["shift"], c["out_zp"], c["qmin"], c["qmax"], a["rounding"])
    if kind == "prepend":
        return torch.cat([c["token"].expand(x.shape[0], 1, -1), x], dim=1)
    if kind in ("add_const", "add"):
        return x + (c["value"] if kind == "add_const" else xs[1])
    if kind == "layernorm":
        return layernorm(x, a, c)
    if kind == "split_heads":
        x = x[..., a["start"]:a["start"] + a["dim"]]
        return x.unflatten(-1, (a["heads"], -1)).transpose(1, 2)
    if kind == "attention":
        return attention(*xs, a, c)
    if kind == "gather_tokens":
        idx = c["index"]
        return torch.cat([x[:, idx[:, j]] for j in range(idx.shape[1])], dim=-1)
    if kind == "sum_tokens":
        return x.sum(1)
    if kind == "merge_heads":
        return x.transpose(1, 2).flatten(2)
    if kind == "lut":
        return c["table"][x + (1 << (a["in_bits"] - 1))]
    if kind == "take_token":
        return x[:, a["index"]]
    raise NotImplementedError(kind)


def run(program: Program, codes: np.ndarray) -> np.ndarray:
    """The program's output integers for input codes, computed with torch int64."""
    values = {program.input["name"]: torch.from_numpy(np.asarray(codes, dtype=np.int64))}
    for op in program.ops:
        consts = {r: torch.from_numpy(program.consts[k].astype(np.int64)) for r, k in op["consts"].items()}
        values[op["out"]] = _op(op["op"], [values[n] for n in op["in"]], op["attrs"], consts)
    return values[program.output["name"]].numpy()
