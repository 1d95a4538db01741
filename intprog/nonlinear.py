"""Integer nonlinear kernels of the integer program: lookup tables, LayerNorm, log2 / log-sqrt2 softmax.

Floats appear only when a kernel's constants are built (at export time); applying a kernel is
integer-only, so every executor can reproduce it bit for bit. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from intprog.arith import Rounding, quantize_multiplier, round_shift

# Fractional bits of the fixed-point values inside the kernels.
NORM_FRAC_BITS = 15  # LayerNorm's normalized value (x - mean) / std
EXP_FRAC_BITS = 8  # the exponent of 2 in softmax (256-entry table of 2^-f)
EXP_ONE_BITS = 30  # Q30 values of 2^-f: probabilities below 2^-30 of the row maximum become 0
LOG_FRAC_BITS = 8  # fixed-point log2


def build_lut(fn: Callable[[np.ndarray], np.ndarray], in_scale: float, in_zp: int, in_bits: int,
              out_scale: float, out_zp: int, out_qmin: int, out_qmax: int) -> np.ndarray:
    """Table of an elementwise function for every signed `in_bits` input code (export time).

    entry[i] = clamp(round(fn((code - in_zp) * in_scale) / out_scale) + out_zp), code = i + qmin_in;
    round is half-to-even (numpy's).
    """
    if not 2 <= in_bits <= 10:
        raise ValueError(f"lookup tables take 2..10-bit inputs, got {in_bits}")
    codes = np.arange(-(1 << (in_bits - 1)), 1 << (in_bits - 1), dtype=np.int64)
    real = fn((codes - in_zp).astype(np.float64) * in_scale)
    return np.clip(np.round(real / out_scale) + out_zp, out_qmin, out_qmax).astype(np.int64)


def apply_lut(x: np.ndarray, table: np.ndarray, in_bits: int) -> np.ndarray:
    """table[x - qmin] for signed `in_bits` codes x."""
    x = np.asarray(x, dtype=np.int64)
    lo = -(1 << (in_bits - 1))
    if x.size and (x.min() < lo or x.max() >= lo + len(table)):
        raise ValueError(f"lookup input outside the table's {in_bits}-bit range")
    return table[x - lo]


def isqrt(n: np.ndarray) -> np.ndarray:
    """floor(sqrt(n)) exactly, for int64 0 <= n < 2^62."""
    n = np.asarray(n, dtype=np.int64)
    if n.size and (n.min() < 0 or n.max() >= 1 << 62):
        raise ValueError("isqrt takes 0 <= n < 2^62")
    r = np.floor(np.sqrt(n.astype(np.float64))).astype(np.int64)
    for _ in range(2):  # float64's estimate is off by at most one either way here
        r = np.where(r * r > n, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= n, r + 1, r)
    return r


def div_half_up(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b rounded half up, for b > 0: floor((2a + b) / 2b)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return np.floor_divide(2 * a + b, 2 * b)


class IntLayerNorm:
    """LayerNorm over the last axis of integer codes, output requantized to narrow integers.

    With c_i = C x_i - sum(x) and S2 = sum(c_i^2) (+ eps term), (x_i - mean) / std equals
    c_i sqrt(C) / sqrt(S2): the kernel computes it as c_i * round(sqrt(C) 2^F) / isqrt(S2) in
    fixed point, then y = clamp(zp + round_shift(sign_c n M_c + B_c, S_c + F)) with M_c / 2^S_c
    ~ |gamma_c| / out_scale and B_c = round(beta_c / out_scale 2^(S_c + F)): one rounding of
    gamma n + beta. (Rounding beta to whole output codes apart from the gamma term, as version 1
    did, biased every channel by up to half a code: 3 points of top-1 on the 4-bit Swin.)
    Constants come from `build`.
    """

    def __init__(self, multiplier: np.ndarray, shift: np.ndarray, sign: np.ndarray, beta_fixed: np.ndarray,
                 sqrt_c: int, eps_term: int, out_zp: int, qmin: int, qmax: int):
        self.multiplier, self.shift, self.sign, self.beta_fixed = multiplier, shift, sign, beta_fixed
        self.sqrt_c, self.eps_term, self.out_zp, self.qmin, self.qmax = sqrt_c, eps_term, out_zp, qmin, qmax

    @classmethod
    def build(cls, gamma: np.ndarray, beta: np.ndarray, eps: float, in_scale: float, out_scale: float,
              out_zp: int, qmin: int, qmax: int) -> IntLayerNorm:
        c = len(gamma)
        g = np.asarray(gamma, dtype=np.float64) / out_scale
        sign = np.where(g < 0, -1, 1).astype(np.int64)
        # |gamma| / out_scale below 2^-31 moves no output (n < 2^22): multiplier 0, any valid shift
        zero = np.abs(g) < 2.0**-31
        m, s = quantize_multiplier(np.where(zero, 1.0, np.abs(g)))
        b = np.asarray(beta, dtype=np.float64) / out_scale
        # B = b 2^(S + F) must stay below 2^61: a channel whose |beta| dwarfs |gamma| gets a smaller
        # shift (and a multiplier below 2^30, still exact to far less than one output code).
        cap = 61 - NORM_FRAC_BITS - np.ceil(np.log2(np.abs(b) + 1)).astype(np.int64)
        if np.any(cap < 0):
            raise ValueError("LayerNorm beta / out_scale exceeds 2^46 output codes: the output scale is broken")
        s = np.minimum(s, cap)
        m = np.where(zero, 0, np.round(np.abs(g) * 2.0**s)).astype(np.int64)
        beta_fixed = np.round(b * 2.0 ** (s + NORM_FRAC_BITS)).astype(np.int64)
        eps_term = round(eps / in_scale**2 * c**3)
        sqrt_c = round(float(np.sqrt(c)) * (1 << NORM_FRAC_BITS))
        return cls(m, s, sign, beta_fixed, sqrt_c, eps_term, out_zp, qmin, qmax)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The integers of the class docstring, computed in place where a value is fresh: int64
        arithmetic wraps modulo 2^64, so sign_c n M_c as n (sign_c M_c) and 2 a + b as a * 2 + b
        are the same bits. The rounding shift by S_c + F >= 1 is round_shift's HALF_UP,
        ((v >> (S + F - 1)) + 1) >> 1, with the output zero point folded in before the last shift:
        floor((t + 1) / 2) + zp = floor((t + 1 + 2 zp) / 2)."""
        x = np.asarray(x, dtype=np.int64)
        c = x.shape[-1]
        centered = x * c
        centered -= x.sum(axis=-1, keepdims=True)
        s2 = np.einsum("...i,...i->...", centered, centered)[..., None] + self.eps_term
        root = np.maximum(isqrt(s2), 1)
        num = centered * self.sqrt_c
        num *= 2
        num += root  # 2a + b of div_half_up(a, b), a = c_i sqrt(C) 2^F, b = root
        norm = _floor_div_rows(num, 2 * root)  # (x - mean) / std, Q15
        shift = np.asarray(self.shift, dtype=np.int64) + NORM_FRAC_BITS
        lo, hi = (int(shift.min()), int(shift.max())) if shift.size else (1, 1)
        if lo < 1 or hi > 62:  # round_shift's own path (and its error for shifts outside 0..62)
            y = round_shift(self.sign * norm * self.multiplier + self.beta_fixed, shift, Rounding.HALF_UP)
            return np.clip(self.out_zp + y, self.qmin, self.qmax)
        y = norm
        y *= np.asarray(self.sign, dtype=np.int64) * np.asarray(self.multiplier, dtype=np.int64)
        y += self.beta_fixed
        y >>= shift - 1
        y += 1 + 2 * int(self.out_zp)
        y >>= 1
        return np.clip(y, self.qmin, self.qmax, out=y)


def _floor_div_rows(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """floor(n / d) for int64 n and d > 0 (d broadcast along the last axis): np.floor_divide's
    integers. When |n| <= 2^53 and d <= 2^53 both convert to float64 exactly, and the correctly
    rounded quotient Q' of Q = n / d lies between floor(Q) and floor(Q) + 1 (both representable,
    rounding is monotone), so q = floor(Q') is floor(Q) or one more; one test of q d > n (no
    overflow: |q d| <= |n| + d < 2^63) takes the extra one back."""
    if n.size == 0 or max(-int(n.min()), int(n.max())) > 1 << 53 or int(d.max()) > 1 << 53:
        return np.floor_divide(n, d)
    q = n.astype(np.float64)
    q /= d
    np.floor(q, out=q)
    q = q.astype(np.int64)
    q -= (q * d) > n
    return q


def _ilog2_fixed(v: np.ndarray) -> np.ndarray:
    """log2(v) in fixed point with LOG_FRAC_BITS fraction bits, for int64 v >= 1 (table-free:
    the fraction comes from repeated squaring of the normalized mantissa)."""
    v = np.asarray(v, dtype=np.int64)
    # The leading bit from float64's exponent: exact below 2^53; above, the conversion may round v
    # up to the next power of two (never down), which the shift test takes back.
    msb = np.frexp(v.astype(np.float64))[1].astype(np.int64) - 1
    msb -= (v >> msb) == 0
    # mantissa in Q30: v / 2^msb in [1, 2)
    mant = np.where(msb >= 30, v >> np.maximum(msb - 30, 0), v << np.maximum(30 - msb, 0))
    frac = np.zeros_like(v)
    for bit in range(LOG_FRAC_BITS - 1, -1, -1):
        mant = (mant * mant) >> 30
        ge2 = (mant >> 31).astype(np.int64)  # mant < 2^32: 1 where mant >= 2^31
        frac |= ge2 << bit
        mant >>= ge2
    return (msb << LOG_FRAC_BITS) + frac


PER_OCTAVE = (1, 2, 4, 8, 16)  # codes per octave the softmax kernel takes (a right shift of its Q8 log)


def check_per_octave(per_octave: int) -> None:
    if per_octave not in PER_OCTAVE:
        raise ValueError(f"codes per octave must be one of {', '.join(map(str, PER_OCTAVE))} (1: log2, 2: "
                         f"log-sqrt2), got {per_octave}")


class IntSoftmaxLog2:
    """Softmax over the last axis of integer logits, output as log2 codes q = round(-log2 p), or
    with `per_octave` = P > 1 as codes q = round(-P log2 p): P = 2 is log-sqrt(2) (half-octave
    steps: near 1, where attention's largest probabilities sit, steps of 1/sqrt(2) instead of 1/2),
    4, 8, 16 finer still (2^-1/16 steps, 4 % apart), at a range of 2^bits / P octaves.

    p_i = 2^(t_i) / sum_j 2^(t_j), t = (x - max x) * in_scale * log2(e) in fixed point; 2^t comes
    from a 256-entry Q30 table of 2^-f and a right shift. q_i >= 2^bits, or 2^t_i = 0, means
    p_i = 0 (the `zero` mask). Constants come from `build`.
    """

    def __init__(self, multiplier: int, shift: int, bits: int, per_octave: int = 1):
        check_per_octave(per_octave)
        self.multiplier, self.shift, self.bits, self.per_octave = multiplier, shift, bits, per_octave
        self.exp2_table = _exp2_table().copy()

    @classmethod
    def build(cls, in_scale: float, bits: int, per_octave: int = 1) -> IntSoftmaxLog2:
        m, s = quantize_multiplier(in_scale * np.log2(np.e))
        if int(s) < EXP_FRAC_BITS:
            raise ValueError(f"softmax input scale {in_scale} is too coarse for the integer kernel")
        return cls(int(m), int(s), bits, per_octave)

    @property
    def code_shift(self) -> int:
        """The right shift from the fixed-point log difference (Q8) to codes: 8 for log2, 7 for
        log-sqrt2 (codes of half an octave), 8 - log2 P for P codes per octave."""
        return LOG_FRAC_BITS - (self.per_octave.bit_length() - 1)

    def __call__(self, x: np.ndarray, masked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Codes and the zero mask; `masked` (broadcastable bools) marks entries of probability 0
        whatever their logit (Swin's shifted-window mask), left out of the maximum and the sum."""
        q = self.raw_codes(x, masked)
        zero = q >= 1 << self.bits
        return np.minimum(q, (1 << self.bits) - 1, out=q), zero

    def raw_codes(self, x: np.ndarray, masked: np.ndarray | None = None) -> np.ndarray:
        """round(-log2 p) (or round(-P log2 p), `per_octave` P) before the cap: __call__'s codes are
        min(q, 2^bits - 1) and its zero mask q >= 2^bits (a zero probability's q is at least 2^40).

        The integers of the class docstring: d = max(x - max x, -2^31) <= 0; -t = round_shift(-d M,
        S - 8) as HALF_UP's ((v >> (S - 9)) + 1) >> 1 (S >= 8; S = 8 is an exact product), then
        2^t = table[-t % 256] >> (-t // 256) and its ilog2 are looked up per -t (`_exp2_lookup`:
        both from this module's own functions, so exact by construction; -t >= 31 * 256 gives 0).
        q = round_shift(ilog2(sum 2^t) - ilog2(2^t), c) = (ilog2(sum) + 2^(c-1) - ilog2(2^t)) >> c,
        c = `code_shift` (8, 7 for half octaves, down to 4): these are small (below 2^14), so the half is
        added without overflow. ilog2(sum) >= 30 * 256 >= ilog2(2^t) gives q >= 0, and a zero 2^t's
        table entry -2^48 gives q >= 2^40 >= 2^bits (bits < 40), the zero mask of the
        original's (e == 0) | (q >= 2^bits)."""
        x = np.asarray(x, dtype=np.int64)
        if masked is not None:
            x = np.where(masked, np.iinfo(np.int64).min >> 2, x)
        if not (0 < self.bits < 40 and self.multiplier >= 0 and EXP_FRAC_BITS <= self.shift <= EXP_FRAC_BITS + 62):
            return self._raw_codes_direct(x, masked)
        # n = -d = max x - x >= 0, clamped at 2^31 so that n M stays below 2^62
        n = np.negative(x)
        n += x.max(axis=-1, keepdims=True)
        np.minimum(n, 1 << 31, out=n)
        n *= self.multiplier
        s = self.shift - EXP_FRAC_BITS
        if s >= 1:
            n >>= s - 1
            n += 1
            n >>= 1
        np.minimum(n, _E_LIMIT, out=n)  # -t, Q8; from _E_LIMIT on 2^t = 0
        if masked is not None:
            n = np.where(masked, _E_LIMIT, n)
        e_table, log_table = _exp2_lookup()
        e = e_table[n]
        total = e.sum(axis=-1, keepdims=True)  # >= 2^30: the maximum contributes 2^0
        q = log_table[n]
        del e, n
        np.subtract(_ilog2_fixed(total) + (1 << (self.code_shift - 1)), q, out=q)
        q >>= self.code_shift
        return q

    def _raw_codes_direct(self, x: np.ndarray, masked: np.ndarray | None) -> np.ndarray:
        """raw_codes as the class docstring reads, step by step (x already masked)."""
        # <= 0; clamped so that d * M stays below 2^62 (anything that low is a zero probability)
        d = np.maximum(x - x.max(axis=-1, keepdims=True), -(1 << 31))
        t = -round_shift(-d * self.multiplier, self.shift - EXP_FRAC_BITS, Rounding.HALF_UP)  # <= 0, Q8
        whole, frac = (-t) >> EXP_FRAC_BITS, (-t) & ((1 << EXP_FRAC_BITS) - 1)
        e = np.where(whole > 62, 0, self.exp2_table[frac] >> np.minimum(whole, 62))
        if masked is not None:
            e = np.where(masked, 0, e)
        total = e.sum(axis=-1, keepdims=True)  # >= 2^30: the maximum contributes 2^0
        q = round_shift(_ilog2_fixed(total) - _ilog2_fixed(np.maximum(e, 1)), self.code_shift, Rounding.HALF_UP)
        return np.where(e == 0, np.maximum(q, 1 << 40), q)


def code_weights(top: int, bits: int, per_octave: int = 1) -> np.ndarray:
    """Attention's weight of each softmax code, int64, indexed by code, plus a last 0 for every
    dropped probability: 2^(L - q / P) rounded half up, P = `per_octave`, L = `top`, for codes
    q <= min(P L, 2^bits - 1); beyond, and for a zero probability, 0.

    Log2 codes give powers of two (V shifted); with P > 1 a code between octaves is the P-th root
    of n = 2^(P L - q), computed exactly: r = floor(n^(1/P)) by nested integer square roots (P is a
    power of two), rounded up where n^(1/P) >= r + 1/2, i.e. 2^P n >= (2 r + 1)^P (never a tie: the
    root is irrational). Every executor looks its weights up here, so they agree by construction."""
    check_per_octave(per_octave)
    last = min(per_octave * top, (1 << bits) - 1)
    out = np.zeros(last + 2, np.int64)
    for q in range(last + 1):
        if q % per_octave == 0:
            out[q] = 1 << (top - q // per_octave)
            continue
        n = 1 << (per_octave * top - q)
        r = n
        for _ in range(per_octave.bit_length() - 1):
            r = math.isqrt(r)
        out[q] = r + ((n << per_octave) >= (2 * r + 1) ** per_octave)
    return out


_E_LIMIT = 31 << EXP_FRAC_BITS  # -t from which 2^t = table[-t % 256] >> (-t // 256) is 0 (table < 2^31)
_ZERO_LOG = -(1 << 48)  # the ilog2 entry of a zero 2^t: its q comes out >= 2^40
_TABLES: dict[str, np.ndarray] = {}


def _exp2_table() -> np.ndarray:
    """The Q30 table of 2^-f, f = i / 256 (read-only, built once)."""
    if "exp2" not in _TABLES:
        f = np.arange(1 << EXP_FRAC_BITS, dtype=np.float64) / (1 << EXP_FRAC_BITS)
        table = np.round(np.exp2(-f) * (1 << EXP_ONE_BITS)).astype(np.int64)
        table.setflags(write=False)
        _TABLES["exp2"] = table
    return _TABLES["exp2"]


def _exp2_lookup() -> tuple[np.ndarray, np.ndarray]:
    """2^t and ilog2(2^t) (or _ZERO_LOG where 2^t = 0) for every -t = 0 .. _E_LIMIT, computed
    by the step-by-step formulas (table >> whole, _ilog2_fixed), so a lookup is exact by
    construction. Built once, read-only."""
    if "e" not in _TABLES:
        table = _exp2_table()
        if int(table.max()) >> 31:
            raise ValueError("the softmax's 2^-f table must stay below 2^31")
        n = np.arange(_E_LIMIT + 1, dtype=np.int64)
        e = table[n & ((1 << EXP_FRAC_BITS) - 1)] >> (n >> EXP_FRAC_BITS)
        assert e[-1] == 0
        log = np.where(e == 0, _ZERO_LOG, _ilog2_fixed(np.maximum(e, 1)))
        for t in (e, log):
            t.setflags(write=False)
        _TABLES["e"], _TABLES["log"] = e, log
    return _TABLES["e"], _TABLES["log"]
