"""Fixed-point behaviour of the accelerator's datapath, in the ap_fixed vocabulary (Vitis HLS).

Overflow of an accumulator: AP_SAT (clamp to the range) or AP_WRAP (two's complement wrap).
Rounding of the requantization shift: the seven ap_fixed quantization modes. The three that the
integer program names (half_up, half_even, floor) are intprog.arith's own; the other four are
derived from them by symmetry, so no rounding is defined twice.
"""

from __future__ import annotations

import numpy as np

from intprog.arith import Rounding, requantize, round_shift

# ap_fixed mode -> the integer program's rounding it equals (None: not one of the program's three)
AP_TO_PROGRAM: dict[str, Rounding | None] = {
    "AP_RND": Rounding.HALF_UP,  # ties toward +inf
    "AP_RND_CONV": Rounding.HALF_EVEN,  # convergent: ties to even
    "AP_TRN": Rounding.FLOOR,  # truncate toward -inf
    "AP_RND_ZERO": None,  # ties toward zero
    "AP_RND_MIN_INF": None,  # ties toward -inf
    "AP_RND_INF": None,  # ties away from zero
    "AP_TRN_ZERO": None,  # truncate toward zero
}


def ap_round_shift(x: np.ndarray, shift: np.ndarray | int, mode: str) -> np.ndarray:
    """x / 2^shift rounded by an ap_fixed quantization mode."""
    x = np.asarray(x, dtype=np.int64)
    program = AP_TO_PROGRAM[mode]
    if program is not None:
        return round_shift(x, shift, program)
    mag = np.abs(x)
    if mode == "AP_RND_MIN_INF":  # mirror of half-up
        return -round_shift(-x, shift, Rounding.HALF_UP)
    if mode == "AP_RND_INF":  # |x| rounded half up, sign restored
        return np.sign(x) * round_shift(mag, shift, Rounding.HALF_UP)
    if mode == "AP_RND_ZERO":  # |x| rounded half down, sign restored
        return -np.sign(x) * round_shift(-mag, shift, Rounding.HALF_UP)
    return np.sign(x) * round_shift(mag, shift, Rounding.FLOOR)  # AP_TRN_ZERO


def ap_requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, zero_point: np.ndarray,
                  qmin: np.ndarray, qmax: np.ndarray, mode: str) -> np.ndarray:
    """The requantization unit: clamp(zp + round_shift(acc * M, S), qmin, qmax) with the unit's rounding.

    A mode that is one of the program's roundings goes to requantize as that rounding, so that it
    takes the executors' own fast paths (the same integers: ap_round_shift delegates to it)."""
    program = AP_TO_PROGRAM[mode]
    if program is not None:
        return requantize(acc, multiplier, shift, zero_point, qmin, qmax, program)
    return requantize(acc, multiplier, shift, zero_point, qmin, qmax, mode, ap_round_shift)


def overflow(x: np.ndarray, bits: int, mode: str) -> np.ndarray:
    """x forced into a signed `bits`-bit register: clamped (AP_SAT) or wrapped (AP_WRAP)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if mode == "AP_SAT":
        return np.clip(x, lo, hi)
    return ((x - lo) & ((1 << bits) - 1)) + lo


def signed_bits(lo: int, hi: int) -> int:
    """Bits of the narrowest two's complement register that holds every integer in [lo, hi]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits
