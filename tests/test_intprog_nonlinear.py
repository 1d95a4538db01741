"""Integer nonlinear kernels against their float definitions, within the documented error."""

import decimal
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intprog.nonlinear import IntLayerNorm, IntSoftmaxLog2, apply_lut, build_lut, div_half_up, isqrt


def gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_gelu_table_by_hand():
    table = build_lut(gelu, in_scale=0.1, in_zp=0, in_bits=8, out_scale=0.05, out_zp=-128, out_qmin=-128,
                      out_qmax=127)
    assert len(table) == 256
    # code 10 -> x = 1.0 -> gelu = 0.8413 -> /0.05 = 16.83 -> 17 - 128
    # code 127 -> 12.7 -> 254 -> 126; code -128 -> gelu(-12.8) ~ 0 -> the zero point
    assert apply_lut(np.array([10, 0, -128, 127]), table, 8).tolist() == [17 - 128, -128, -128, 126]
    with pytest.raises(ValueError, match="range"):
        apply_lut(np.array([128]), table, 8)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 62) - 1))
def test_isqrt_exact(n):
    assert int(isqrt(np.array([n]))[0]) == math.isqrt(n)


def test_div_half_up():
    assert div_half_up(np.array([5, 7, -5, -7, 6]), np.array([2, 2, 2, 2, 4])).tolist() == [3, 4, -2, -3, 2]


def _float_layernorm_codes(x_int, in_scale, gamma, beta, eps, out_scale, out_zp):
    x = x_int * in_scale
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps) * gamma + beta
    return np.clip(np.round(y / out_scale) + out_zp, -128, 127)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([16, 96, 192]))
def test_layernorm_within_one_code_of_float(seed, channels):
    rng = np.random.default_rng(seed)
    x = rng.integers(-3000, 3000, (4, channels)) + rng.integers(-500, 500, (4, 1))
    gamma, beta = rng.normal(1, 0.5, channels), rng.normal(0, 0.3, channels)
    ln = IntLayerNorm.build(gamma, beta, eps=1e-6, in_scale=0.01, out_scale=0.03, out_zp=3, qmin=-128, qmax=127)
    want = _float_layernorm_codes(x, 0.01, gamma, beta, 1e-6, 0.03, 3)
    assert np.abs(ln(x) - want).max() <= 1


def test_layernorm_constant_input_gives_beta():
    ln = IntLayerNorm.build(np.ones(8), np.full(8, 0.3), eps=1e-6, in_scale=0.1, out_scale=0.1, out_zp=0,
                            qmin=-128, qmax=127)
    assert ln(np.full((2, 8), 17)).tolist() == [[3] * 8] * 2


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([2, 3, 4, 8]))
def test_softmax_log2_codes_within_one_of_float(seed, bits):
    rng = np.random.default_rng(seed)
    scale = 0.02
    x = rng.integers(-400, 400, (3, 17))
    q, zero = IntSoftmaxLog2.build(scale, bits)(x)
    p = np.exp((x - x.max(-1, keepdims=True)) * scale)
    p /= p.sum(-1, keepdims=True)
    want = np.round(-np.log2(p))
    # away from the last code and from the kernel's floor of 2^-30 of the row maximum
    representable = want < min((1 << bits) - 1, 28)
    assert np.abs(q - want)[representable & ~zero].max(initial=0) <= 1
    assert not zero[want < min((1 << bits) - 2, 28)].any()
    assert (q >= 0).all() and (q <= (1 << bits) - 1).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([4, 8]), st.sampled_from([2, 4, 16]))
def test_softmax_log_fine_codes_within_one_of_float(seed, bits, per_octave):
    """P codes per octave: round(-P log2 p) within one code (the kernel's log is Q8, its 2^t Q30)."""
    rng = np.random.default_rng(seed)
    scale = 0.02
    x = rng.integers(-400, 400, (3, 17))
    q, zero = IntSoftmaxLog2.build(scale, bits, per_octave=per_octave)(x)
    p = np.exp((x - x.max(-1, keepdims=True)) * scale)
    p /= p.sum(-1, keepdims=True)
    want = np.round(-per_octave * np.log2(p))
    representable = want < min((1 << bits) - 1, 28 * per_octave)
    assert np.abs(q - want)[representable & ~zero].max(initial=0) <= 1
    assert (q >= 0).all() and (q <= (1 << bits) - 1).all()


def test_code_weights():
    """2^(L - q) for log2 codes; round(2^(L - q/2)) for log-sqrt2 ones, exact past float64's
    precision; a last 0 for every code past the table."""
    from intprog.nonlinear import code_weights

    assert code_weights(3, 4).tolist() == [8, 4, 2, 1, 0]
    assert code_weights(15, 2).tolist() == [1 << 15, 1 << 14, 1 << 13, 1 << 12, 0]  # 2^bits - 1 codes
    w = code_weights(15, 8, per_octave=2)
    assert len(w) == 32 and w[-1] == 0 and w[1] == 23170 and w[29] == 1
    np.testing.assert_array_equal(w[:-1], np.floor(2.0 ** (15 - np.arange(31) / 2) + 0.5))
    big = code_weights(62, 8, per_octave=2)
    with decimal.localcontext(decimal.Context(prec=60)):  # 2^61.5 to 60 digits, rounded half up
        want = int((decimal.Decimal(2) ** decimal.Decimal("61.5") + decimal.Decimal("0.5")).to_integral_value(
            decimal.ROUND_FLOOR))
    assert big[1] == want
    assert (np.diff(big[:-1]) <= 0).all() and big[-2] == 1  # 2^0.5 and 2^0 both round to 1
    for per_octave in (4, 8, 16):  # the P-th roots by nested integer square roots, against float64
        w = code_weights(15, 8, per_octave)
        last = min(15 * per_octave, 255)
        assert len(w) == last + 2 and w[-1] == 0 and w[0] == 1 << 15 and w[per_octave] == 1 << 14
        np.testing.assert_array_equal(w[:-1], np.floor(2.0 ** (15 - np.arange(last + 1) / per_octave) + 0.5))
    with pytest.raises(ValueError, match="codes per octave"):
        code_weights(15, 8, 3)


def test_softmax_log2_by_hand():
    sm = IntSoftmaxLog2.build(in_scale=math.log(2), bits=4)  # x * scale * log2(e) = x: powers of two
    q, zero = sm(np.array([[0, -1, -1, -40]]))  # p = 1/2, 1/4, 1/4, ~0
    assert q.tolist()[0][:3] == [1, 2, 2] and zero.tolist()[0] == [False, False, False, True]


def test_layernorm_channel_with_tiny_gamma_and_large_beta():
    """A channel whose beta dwarfs its gamma gets a smaller shift, not an overflow (found by hypothesis)."""
    gamma, beta = np.array([1e-6, 1.0, 0.0]), np.array([3.0, 0.5, -2.0])
    ln = IntLayerNorm.build(gamma, beta, 1e-6, 2.0**-10, 0.01, 0, -(1 << 15), (1 << 15) - 1)
    x = np.array([[100, -50, 7], [0, 0, 0]])
    out = ln(x)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True) * 2.0**-20
    ref = np.round((gamma * (x - mean) * 2.0**-10 / np.sqrt(var + 1e-6) + beta) / 0.01)
    assert np.abs(out - ref).max() <= 1 and out[0, 0] == 300 and out[0, 2] == -200
