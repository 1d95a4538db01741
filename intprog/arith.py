"""Integer arithmetic of the integer program: rounding shifts, requantization, exact GEMMs, packing.

Every executor (reference, TVM, the accelerator model) must compute these bit for bit alike, so
each rounding is named once here and nowhere else. numpy only: importable without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import numpy as np

# float64 holds every integer below 2^53 exactly: a GEMM whose accumulators are proven to stay
# below that bound may use BLAS.
_EXACT_FLOAT64 = 1 << 53


class Rounding(StrEnum):
    """How a right shift by S rounds x / 2^S to an integer."""

    HALF_UP = "half_up"  # floor(x / 2^S + 1/2): ties toward +inf (what TFLite/gemmlowp-style adders do)
    HALF_EVEN = "half_even"  # ties to the even neighbour (numpy/torch round())
    FLOOR = "floor"  # plain arithmetic shift: toward -inf


def round_shift(x: np.ndarray, shift: np.ndarray | int, rounding: Rounding = Rounding.HALF_UP) -> np.ndarray:
    """x / 2^shift rounded as named, for int64 x and shifts 0..62 (scalar or broadcastable)."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    lo, hi = (int(shift.min()), int(shift.max())) if shift.size else (1, 1)
    if lo < 0 or hi > 62:
        raise ValueError(f"shift must be in 0..62, got {lo}..{hi}")
    rounding = Rounding(rounding)
    if rounding is Rounding.FLOOR:
        return x >> shift
    if rounding is Rounding.HALF_UP and lo >= 1:
        # t = floor(x / 2^(S-1)) holds the bit below the cut; (t + 1) >> 1 = floor(x / 2^S + 1/2)
        # with no x + 2^(S-1), which could overflow int64. Three passes, the last two in place.
        out = x >> (shift - 1)
        out += 1
        out >>= 1
        return out
    floor = x >> shift
    # The bit below the cut decides (no x + 2^(S-1), which could overflow int64); S = 0 has none.
    half_bit = np.where(shift > 0, (x >> np.maximum(shift - 1, 0)) & 1, 0)
    up = floor + half_bit
    if rounding is Rounding.HALF_UP:
        return up
    below_half = x & (np.left_shift(np.int64(1), np.maximum(shift - 1, 0)) - 1)
    tie = (half_bit == 1) & (below_half == 0)
    return np.where(tie & (up & 1 == 1), up - 1, up)


def quantize_multiplier(real: float | np.ndarray, bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Integer M in [2^(bits-1), 2^bits) and shift S with real ≈ M / 2^S, for 0 < real < 2^(bits-1).

    The relative error is below 2^-(bits-1). The gemmlowp/TFLite representation, with M kept
    positive so that the product acc * M fits int64 for |acc| < 2^32.
    """
    real = np.asarray(real, dtype=np.float64)
    if np.any(real <= 0) or not np.all(np.isfinite(real)):
        raise ValueError("requantization scales must be positive and finite")
    mant, exp = np.frexp(real)  # real = mant * 2^exp, mant in [0.5, 1)
    m = np.round(mant * (1 << bits)).astype(np.int64)
    exp = exp.astype(np.int64)
    carry = m == (1 << bits)  # mantissa rounded up to 1.0
    m = np.where(carry, m >> 1, m)
    exp = np.where(carry, exp + 1, exp)
    shift = bits - exp
    if np.any(shift < 0) or np.any(shift > 62):
        raise ValueError(f"scale {real} needs a shift outside 0..62")
    return m, shift


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, zero_point: int,
               qmin: int, qmax: int, rounding: Rounding | str = Rounding.HALF_UP,
               shifter: Callable[[np.ndarray, np.ndarray, str], np.ndarray] = round_shift) -> np.ndarray:
    """clamp(zero_point + round_shift(acc * M, S), qmin, qmax): int32 accumulators to narrow ints.

    M and S broadcast against acc's last axis (per output channel) or are scalars (per tensor).
    `shifter(x, S, rounding)` is the rounding right shift (the accelerator model passes its
    ap_fixed modes).
    """
    acc = np.asarray(acc, dtype=np.int64)
    if acc.size and (acc.max() >= 1 << 32 or acc.min() <= -(1 << 32)):
        raise OverflowError("requantize takes accumulators below 2^32 in magnitude")
    if shifter is round_shift and Rounding(rounding) is Rounding.HALF_UP:
        folded = _requantize_half_up(acc, multiplier, shift, zero_point, qmin, qmax)
        if folded is not None:
            return folded
    out = shifter(acc * np.asarray(multiplier, dtype=np.int64), shift, rounding) + zero_point
    if isinstance(out, np.ndarray) and out.shape == np.broadcast_shapes(out.shape, np.shape(qmin), np.shape(qmax)):
        return np.clip(out, qmin, qmax, out=out)  # the fresh sum clamped in place: the same integers
    return np.clip(out, qmin, qmax)


def _requantize_half_up(acc: np.ndarray, multiplier, shift, zero_point, qmin, qmax) -> np.ndarray | None:
    """requantize's HALF_UP integers in four in-place passes, or None where the fold does not
    apply: with S >= 2, round_shift(v, S) + zp = ((v >> (S - 1)) + 1) >> 1 + zp
    = ((v >> (S - 1)) + 1 + 2 zp) >> 1 (floor((t + 1) / 2) + zp = floor((t + 1 + 2 zp) / 2)), and
    |v >> (S - 1)| <= 2^62 leaves room for 1 + 2 zp when |zp| < 2^40. v = acc M wraps modulo 2^64
    exactly as in requantize."""
    shift = np.asarray(shift, dtype=np.int64)
    zp = np.asarray(zero_point, dtype=np.int64)
    if not (shift.size and zp.size and acc.ndim):
        return None
    if int(shift.min()) < 2 or int(shift.max()) > 62 or max(-int(zp.min()), int(zp.max())) >= 1 << 40:
        return None
    out = acc * np.asarray(multiplier, dtype=np.int64)
    if out.shape != np.broadcast_shapes(out.shape, shift.shape, zp.shape, np.shape(qmin), np.shape(qmax)):
        return None
    out >>= shift - 1
    out += 1 + 2 * zp
    out >>= 1
    return np.clip(out, qmin, qmax, out=out)


# float32 holds every integer below 2^24 exactly: a GEMM whose partial sums stay below that bound
# is exact in single precision too (twice float64's BLAS speed).
_EXACT_FLOAT32 = 1 << 24


def _extreme(x: np.ndarray) -> int:
    """max |x| of an integer array (0 when empty), by two reductions and no temporary."""
    return max(-int(x.min()), int(x.max())) if x.size else 0


def matmul_exact(a: np.ndarray, b: np.ndarray, *, bound: int | None = None) -> np.ndarray:
    """a @ b of integer arrays, exactly, as int64.

    With B = K * max|a| * max|b| (or the caller's proven `bound` >= it): every product and every
    partial sum, in whatever order and blocking BLAS adds them, is an integer of magnitude <= B.
    B < 2^24 proves float32 BLAS exact (every operand and intermediate is an integer float32 holds),
    B < 2^53 float64 BLAS; above that numpy's int64 matmul.
    """
    a, b = np.asarray(a), np.asarray(b)
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise TypeError("matmul_exact takes integer arrays")
    k = a.shape[-1]
    if bound is None:
        bound = k * (_extreme(a) * _extreme(b))
    if bound < _EXACT_FLOAT32:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.int64)
    if bound < _EXACT_FLOAT64:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers of `bits` (2..8) packed little-endian into bytes, two's complement."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be 2..8, got {bits}")
    v = np.asarray(values, dtype=np.int64).ravel()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"values outside the signed {bits}-bit range {lo}..{hi}")
    u = (v & ((1 << bits) - 1)).astype(np.uint64)
    bitpos = np.arange(v.size, dtype=np.uint64) * bits
    out = np.zeros((v.size * bits + 7) // 8 + 1, dtype=np.uint64)
    np.bitwise_or.at(out, (bitpos >> 3).astype(np.int64), (u << (bitpos & 7)) & 0xFF)
    np.bitwise_or.at(out, (bitpos >> 3).astype(np.int64) + 1, u >> (8 - (bitpos & 7)))
    return out[: (v.size * bits + 7) // 8].astype(np.uint8)


def unpack(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack: `count` signed `bits`-bit integers as int8."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be 2..8, got {bits}")
    raw = np.asarray(data, dtype=np.uint8)
    if raw.size * 8 < count * bits:
        raise ValueError(f"{raw.size} bytes cannot hold {count} values of {bits} bits")
    padded = np.concatenate([raw, np.zeros(1, np.uint8)]).astype(np.uint64)
    bitpos = np.arange(count, dtype=np.uint64) * bits
    byte = (bitpos >> 3).astype(np.int64)
    word = padded[byte] | (padded[byte + 1] << 8)
    u = ((word >> (bitpos & 7)) & ((1 << bits) - 1)).astype(np.int64)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u).astype(np.int8)
