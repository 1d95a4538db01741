"""Integer nonlinear kernels of the integer program: lookup tables, LayerNorm, log2 softmax.

Floats appear only when a kernel's constants are built (at export time); applying a kernel is
integer-only, so every executor can reproduce it bit for bit. numpy only.
"""

from __future__ import annotations

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
        x = np.asarray(x, dtype=np.int64)
        c = x.shape[-1]
        centered = c * x - x.sum(axis=-1, keepdims=True)
        s2 = (centered * centered).sum(axis=-1, keepdims=True) + self.eps_term
        norm = div_half_up(centered * self.sqrt_c, np.maximum(isqrt(s2), 1))  # (x - mean) / std, Q15
        y = round_shift(self.sign * norm * self.multiplier + self.beta_fixed, self.shift + NORM_FRAC_BITS,
                        Rounding.HALF_UP)
        return np.clip(self.out_zp + y, self.qmin, self.qmax)


def _ilog2_fixed(v: np.ndarray) -> np.ndarray:
    """log2(v) in fixed point with LOG_FRAC_BITS fraction bits, for int64 1 <= v < 2^53 (table-free:
    the fraction comes from repeated squaring of the normalized mantissa)."""
    v = np.asarray(v, dtype=np.int64)
    if v.size and v.max() >= 1 << 53:
        raise ValueError("_ilog2_fixed takes v < 2^53 (a softmax row of fewer than 2^23 keys)")
    msb = np.frexp(v.astype(np.float64))[1].astype(np.int64) - 1  # exact: v converts exactly below 2^53
    # mantissa in Q30: v / 2^msb in [1, 2)
    mant = np.where(msb >= 30, v >> np.maximum(msb - 30, 0), v << np.maximum(30 - msb, 0))
    frac = np.zeros_like(v)
    for bit in range(LOG_FRAC_BITS - 1, -1, -1):
        mant = (mant * mant) >> 30
        ge2 = (mant >> 31).astype(np.int64)  # mant < 2^32: 1 where mant >= 2^31
        frac |= ge2 << bit
        mant >>= ge2
    return (msb << LOG_FRAC_BITS) + frac


class IntSoftmaxLog2:
    """Softmax over the last axis of integer logits, output as log2 codes q = round(-log2 p).

    p_i = 2^(t_i) / sum_j 2^(t_j), t = (x - max x) * in_scale * log2(e) in fixed point; 2^t comes
    from a 256-entry Q30 table of 2^-f and a right shift. q_i >= 2^bits, or 2^t_i = 0, means
    p_i = 0 (the `zero` mask). Constants come from `build`.
    """

    def __init__(self, multiplier: int, shift: int, bits: int):
        self.multiplier, self.shift, self.bits = multiplier, shift, bits
        f = np.arange(1 << EXP_FRAC_BITS, dtype=np.float64) / (1 << EXP_FRAC_BITS)
        self.exp2_table = np.round(np.exp2(-f) * (1 << EXP_ONE_BITS)).astype(np.int64)

    @classmethod
    def build(cls, in_scale: float, bits: int) -> IntSoftmaxLog2:
        m, s = quantize_multiplier(in_scale * np.log2(np.e))
        if int(s) < EXP_FRAC_BITS:
            raise ValueError(f"softmax input scale {in_scale} is too coarse for the integer kernel")
        return cls(int(m), int(s), bits)

    def __call__(self, x: np.ndarray, masked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Codes and the zero mask; `masked` (broadcastable bools) marks entries of probability 0
        whatever their logit (Swin's shifted-window mask), left out of the maximum and the sum."""
        x = np.asarray(x, dtype=np.int64)
        if masked is not None:
            x = np.where(masked, np.iinfo(np.int64).min >> 2, x)
        # <= 0; clamped so that d * M stays below 2^62 (anything that low is a zero probability)
        d = np.maximum(x - x.max(axis=-1, keepdims=True), -(1 << 31))
        t = -round_shift(-d * self.multiplier, self.shift - EXP_FRAC_BITS, Rounding.HALF_UP)  # <= 0, Q8
        whole, frac = (-t) >> EXP_FRAC_BITS, (-t) & ((1 << EXP_FRAC_BITS) - 1)
        e = np.where(whole > 62, 0, self.exp2_table[frac] >> np.minimum(whole, 62))
        if masked is not None:
            e = np.where(masked, 0, e)
        total = e.sum(axis=-1, keepdims=True)  # >= 2^30: the maximum contributes 2^0
        q = round_shift(_ilog2_fixed(total) - _ilog2_fixed(np.maximum(e, 1)), LOG_FRAC_BITS, Rounding.HALF_UP)
        zero = (e == 0) | (q >= 1 << self.bits)
        return np.where(zero, (1 << self.bits) - 1, q), zero
