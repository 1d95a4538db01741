"""The integer program's arithmetic against hand-computed cases and a slow scalar reference."""

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intprog.arith import Rounding, matmul_exact, pack, quantize_multiplier, requantize, round_shift, unpack


def scalar_round_shift(x: int, s: int, rounding: str) -> int:
    q = Fraction(x, 1 << s)
    if rounding == "floor":
        return math.floor(q)
    if rounding == "half_up":
        return math.floor(q + Fraction(1, 2))
    return round(q)  # Python's round() of a Fraction is half-even


@pytest.mark.parametrize(
    "x, s, half_up, half_even, floor",
    [
        (5, 1, 3, 2, 2), (7, 1, 4, 4, 3), (-5, 1, -2, -2, -3), (-7, 1, -3, -4, -4),  # ties
        (6, 2, 2, 2, 1), (-6, 2, -1, -2, -2), (9, 0, 9, 9, 9), (1, 62, 0, 0, 0),
        (-(1 << 40), 40, -1, -1, -1), ((1 << 40) - 1, 40, 1, 1, 0),
    ],
)
def test_round_shift_by_hand(x, s, half_up, half_even, floor):
    assert round_shift(np.int64(x), s, Rounding.HALF_UP) == half_up
    assert round_shift(np.int64(x), s, Rounding.HALF_EVEN) == half_even
    assert round_shift(np.int64(x), s, Rounding.FLOOR) == floor


@settings(max_examples=300, deadline=None)
@given(st.integers(-(1 << 50), 1 << 50), st.integers(0, 12), st.sampled_from(["half_up", "half_even", "floor"]))
def test_round_shift_matches_scalar_reference(x, s, rounding):
    assert int(round_shift(np.array([x]), s, rounding)[0]) == scalar_round_shift(x, s, rounding)


def test_round_shift_rejects_bad_shifts():
    with pytest.raises(ValueError, match=r"0\.\.62"):
        round_shift(np.array([1]), -1)
    with pytest.raises(ValueError, match=r"0\.\.62"):
        round_shift(np.array([1]), 63)


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-9, 1e3, allow_nan=False))
def test_quantize_multiplier_precision(real):
    m, s = quantize_multiplier(real)
    assert (1 << 30) <= int(m) < (1 << 31)
    assert abs(int(m) / 2.0 ** int(s) - real) <= real * 2.0 ** -30


def test_quantize_multiplier_errors():
    with pytest.raises(ValueError, match="positive"):
        quantize_multiplier(0.0)
    with pytest.raises(ValueError, match="positive"):
        quantize_multiplier(float("nan"))


@settings(max_examples=300, deadline=None)
@given(st.integers(-(1 << 31), (1 << 31) - 1), st.floats(1e-6, 4.0), st.integers(-128, 127),
       st.sampled_from(["half_up", "half_even", "floor"]))
def test_requantize_matches_scalar_reference(acc, scale, zp, rounding):
    m, s = quantize_multiplier(scale)
    got = int(requantize(np.array([acc]), m, s, zp, -128, 127, rounding)[0])
    want = min(127, max(-128, zp + scalar_round_shift(acc * int(m), int(s), rounding)))
    assert got == want


def test_requantize_saturates_both_ends_and_per_channel():
    m, s = quantize_multiplier(np.array([1.0, 0.5]))
    acc = np.array([[1000, 1000], [-1000, -1000], [3, 3]])
    out = requantize(acc, m, s, zero_point=0, qmin=-8, qmax=7)
    assert out.tolist() == [[7, 7], [-8, -8], [3, 2]]  # 3 * 0.5 = 1.5 -> 2 (half up)
    with pytest.raises(OverflowError):
        requantize(np.array([1 << 33]), m[0], s[0], 0, -8, 7)


def test_matmul_exact_both_paths():
    rng = np.random.default_rng(0)
    a, b = rng.integers(-128, 128, (5, 64)), rng.integers(-128, 128, (64, 7))
    want = [[sum(int(a[i, k]) * int(b[k, j]) for k in range(64)) for j in range(7)] for i in range(5)]
    assert matmul_exact(a, b).tolist() == want
    big = np.full((1, 3), 1 << 40, dtype=np.int64)  # exceeds float64's exact range: int64 path
    assert matmul_exact(big, np.full((3, 1), 3))[0, 0] == 9 * (1 << 40)
    with pytest.raises(TypeError):
        matmul_exact(np.ones((2, 2)), np.ones((2, 2)))


@pytest.mark.parametrize("x_hi, k", [(255, 768), (255, 3000), (1 << 15, 96), (200, 64)])
def test_linear_acc_is_exact_on_every_float_path(x_hi, k):
    """K slices in float32 (bound over 2^24), float64, and float32 whole: int64's integers, with the
    extremes that reach each bound."""
    from intprog.reference import linear_acc

    rng = np.random.default_rng(k)
    x = rng.integers(0, x_hi + 1, (2, 5, k))
    x[0, 0] = x_hi
    weight = rng.integers(-128, 128, (7, k))
    weight[0] = -127  # odd products of x's extreme row: sums past 2^24 would round in float32
    c = {"weight": weight.astype(np.int8), "weight_zp": np.zeros(7, np.int64), "bias": rng.integers(-99, 99, 7)}
    c["weight"].setflags(write=False)
    zp = 2
    want = (x - zp) @ weight.T.astype(np.int64) + c["bias"]
    assert np.array_equal(linear_acc(x, zp, c), want)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 8), st.data())
def test_pack_round_trip(bits, data):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    values = np.array(data.draw(st.lists(st.integers(lo, hi), max_size=50)), dtype=np.int64)
    packed = pack(values, bits)
    assert packed.dtype == np.uint8 and packed.size == (values.size * bits + 7) // 8
    assert unpack(packed, bits, values.size).tolist() == values.tolist()


def test_pack_by_hand_and_errors():
    assert pack(np.array([1, -1]), 4).tolist() == [0xF1]  # low nibble first
    assert pack(np.array([-2, 1, 0, -1]), 2).tolist() == [0b11000110]
    with pytest.raises(ValueError, match="range"):
        pack(np.array([8]), 4)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(np.zeros(1, np.uint8), 4, 3)


def test_importable_without_torch():
    code = "import sys; import intprog.arith; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
