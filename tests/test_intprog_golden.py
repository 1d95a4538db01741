"""Golden cases computed by hand for the ops of the integer program (the derivation is in each
comment): rounding ties, saturation at both ends, zero points, extreme shifts."""

import numpy as np
import pytest

from intprog import arith, reference
from intprog.nonlinear import isqrt


def _linear(rounding, qmin=-128, qmax=127):
    # x - in_zp = [2, 4]; W - W_zp = [[1, 2], [2, -2]]; acc = [10, -4] + bias [3, 0] = [13, -4];
    # M / 2^S = 2^30 / 2^31 = 1/2: [6.5, -2] -> rounded, + out_zp 2.
    consts = {"weight": np.array([[1, 2], [3, -1]]), "weight_zp": np.array([0, 1]), "bias": np.array([3, 0]),
              "multiplier": np.array([1 << 30, 1 << 30]), "shift": np.array([31, 31]), "out_zp": np.array(2),
              "qmin": np.array(qmin), "qmax": np.array(qmax)}
    return reference.KERNELS["linear"]([np.array([[3, 5]])], {"in_zp": 1, "rounding": rounding}, consts)


@pytest.mark.parametrize("rounding, expected", [("half_up", [9, 0]), ("half_even", [8, 0]), ("floor", [8, 0])])
def test_linear_zero_points_and_rounding_ties(rounding, expected):
    np.testing.assert_array_equal(_linear(rounding), [expected])


def test_linear_saturates_at_both_ends():
    np.testing.assert_array_equal(_linear("half_up", qmin=1, qmax=8), [[8, 1]])


def test_extreme_shifts():
    big = 1 << 61  # exactly half of 2^62
    assert arith.round_shift(np.int64(big), 62, "half_up") == 1
    assert arith.round_shift(np.int64(big - 1), 62, "half_up") == 0
    assert arith.round_shift(np.int64(-big), 62, "half_up") == 0  # tie toward +inf
    assert arith.round_shift(np.int64(-big), 62, "half_even") == 0  # tie to even
    assert arith.round_shift(np.int64(-big), 62, "floor") == -1
    assert arith.round_shift(np.int64(-7), 0, "half_up") == -7  # no shift, no rounding term
    # the largest accumulator requantize takes, times the largest multiplier: rounding must not overflow int64
    top = arith.requantize(np.int64((1 << 32) - 1), np.int64((1 << 31) - 1), np.int64(62), 0, -(1 << 31), 1 << 31)
    assert top == 2  # (2^32 - 1)(2^31 - 1) / 2^62 = 1.99999... -> 2


def test_layernorm_by_hand():
    # x = [0, 200], C = 2: c = 2x - 200 = [-200, 200], S2 = 80000, isqrt = 282 (282^2 = 79524);
    # sqrt_c = round(sqrt(2) 2^15) = 46341; n = round_half_up(-200 * 46341 / 282) = -32866 (Q15, ~ -1.003);
    # gamma / out_scale = 2^12 -> M = 2^30, S = 18; beta / out_scale = 5.5 codes -> B = 5.5 * 2^33;
    # y = round_half_up((n M + B) / 2^33) = round(-4108.25 + 5.5) = -4103 and round(4108.25 + 5.5) = 4114;
    # out = clamp(zp 1 + y, -5000, 4000) = [-4102, 4000 (4115 saturates)]. Rounding beta apart (to 6)
    # would give -4101.
    assert int(isqrt(np.int64(80000))) == 282
    consts = {"multiplier": np.array([1 << 30, 1 << 30]), "shift": np.array([18, 18]), "sign": np.array([1, 1]),
              "beta_fixed": np.array([11 << 32, 11 << 32])}
    attrs = {"sqrt_c": 46341, "eps_term": 0, "out_zp": 1, "qmin": -5000, "qmax": 4000}
    out = reference.KERNELS["layernorm"]([np.array([[0, 200]])], attrs, consts)
    np.testing.assert_array_equal(out, [[-4102, 4000]])


def test_attention_by_hand():
    # logits q.k = [0, 2]; sm scale M / 2^S = 2^30 / 2^31 = 1/2 (log2 units per logit): t = [-1, 0] (Q8: -256, 0)
    # -> 2^t in Q30 = [2^29, 2^30], sum 3 * 2^29; -log2 p = log2(3 * 2^29) - log2(e):
    # ilog2 gives 30 + 149/256 for the sum (log2 3 = 1.58496: 149.75 truncated by squaring), 29 and 30 for e,
    # so [405, 149] / 256 = [1.58, 0.58] -> codes [2, 1]. With 4 bits the top code is 15: weights
    # 2^(15-2) = 8192 and 2^(15-1) = 16384; v - zp = [3, -1] -> 8192 * 3 - 16384 = 8192.
    attrs = {"q_zp": 0, "k_zp": 0, "v_zp": 1, "sm_multiplier": 1 << 30, "sm_shift": 31, "bits": 4, "max_code": 15}
    q, k, v = np.array([[[[1]]]]), np.array([[[[0], [2]]]]), np.array([[[[4], [0]]]])
    np.testing.assert_array_equal(reference.KERNELS["attention"]([q, k, v], attrs, {}), [[[[8192]]]])


def test_data_movement_by_hand():
    image = np.arange(16).reshape(1, 1, 4, 4)
    patches = reference.KERNELS["patchify"]([image], {"patch": 2}, {})
    np.testing.assert_array_equal(patches, [[[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]])
    heads = reference.KERNELS["split_heads"]([patches], {"start": 0, "dim": 4, "heads": 2}, {})
    assert heads.shape == (1, 2, 4, 2) and heads[0, 1, 2].tolist() == [12, 13]
    np.testing.assert_array_equal(reference.KERNELS["merge_heads"]([heads], {}, {}), patches)
    lut = reference.KERNELS["lut"]([np.array([-2, 1])], {"in_bits": 2}, {"table": np.array([7, 8, 9, 10])})
    np.testing.assert_array_equal(lut, [7, 10])  # code -2 is entry 0, code 1 is entry 3
