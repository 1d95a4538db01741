"""Accelerator values: bit-exact against the reference executor, overflow and rounding modes by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hwsim.accelerator.config import load_config
from hwsim.accelerator.execute import Accelerator, accumulate
from hwsim.accelerator.fixed import AP_TO_PROGRAM, ap_requantize, ap_round_shift, overflow, signed_bits
from intprog import reference
from intprog.arith import requantize


@pytest.mark.parametrize("model, bits", [("vit_fmnist", 8), ("vit_fmnist", 4), ("vit_fmnist", 3),
                                         ("swin_fmnist", 4)])
@pytest.mark.parametrize("preset", ["edge-npu", "mcu"])
def test_wide_accumulators_match_the_reference_bit_for_bit(zoo_program, model, bits, preset):
    program, codes, _ = zoo_program(bits, model)
    codes = codes[:16] if model == "swin_fmnist" else codes  # windows, bias, masks, merging: 16 images do
    ref = reference.run(program, codes)
    for cfg in (load_config(preset).replace(acc_bits=40), load_config(preset)):  # the preset's own width too
        acc = Accelerator(program, cfg)
        assert np.array_equal(acc.run(codes), ref)
        assert sum(acc.trace.overflows.values()) == 0
        assert sum(acc.trace.updates.values()) > 0


def test_narrow_accumulators_overflow_and_change_outputs(zoo_program):
    program, codes, _ = zoo_program(4)
    ref = reference.run(program, codes)
    narrow = Accelerator(program, load_config("edge-npu").replace(acc_bits=14))
    out = narrow.run(codes)
    assert sum(narrow.trace.overflows.values()) > 0
    assert not np.array_equal(out, ref)
    assert narrow.trace.overflows["embed"] > 0  # 8-bit image codes x 49 pixels: the first to overflow


def test_saturate_and_wrap_on_a_hand_made_sum():
    a = np.array([[100, 100, 100]])
    b = np.ones((3, 1), dtype=np.int64)
    out, events, updates = accumulate(a, b, None, 1, 8, "AP_SAT")
    assert out.tolist() == [[127]] and events == 2 and updates == 3  # 100, 200 -> 127, 227 -> 127
    out, events, _ = accumulate(a, b, None, 1, 8, "AP_WRAP")
    assert out.tolist() == [[44]] and events == 1  # 100, 200 -> -56, 44
    out, events, updates = accumulate(a, b, None, 3, 8, "AP_SAT")  # one tile: one addition of 300
    assert out.tolist() == [[127]] and events == 1 and updates == 1
    out, events, updates = accumulate(a, b, np.array([200]), 3, 8, "AP_SAT")  # bias preload saturates too
    assert out.tolist() == [[127]] and events == 2 and updates == 2
    out, events, _ = accumulate(-a, b, None, 1, 8, "AP_SAT")
    assert out.tolist() == [[-128]] and events == 2


def test_saturation_is_order_dependent_and_counted_per_element():
    a = np.array([[120, 120, -120], [1, 2, 3]])
    b = np.ones((3, 1), dtype=np.int64)
    out, events, _ = accumulate(a, b, None, 1, 8, "AP_SAT")
    assert out[:, 0].tolist() == [7, 6] and events == 1  # 120, 240 -> 127, 7; the second row never overflows
    out, events, _ = accumulate(a, b, None, 1, 8, "AP_WRAP")
    assert out[:, 0].tolist() == [120, 6] and events == 2  # 240 -> -16, -136 -> 120


def test_no_overflow_path_equals_the_tiled_path():
    rng = np.random.default_rng(0)
    a, b = rng.integers(-8, 8, (5, 37)), rng.integers(-8, 8, (37, 6))
    bias = rng.integers(-100, 100, 6)
    wide, events, _ = accumulate(a, b, bias, 4, 32, "AP_SAT")
    assert events == 0 and np.array_equal(wide, a @ b + bias)
    tiled, events, _ = accumulate(a, b, bias, 4, 13, "AP_WRAP")  # 13 bits: the bound fails, tiles run
    assert np.array_equal(tiled, overflow(a @ b + bias, 13, "AP_WRAP"))  # wrap is modular: order-free


# x / 2 for x = -5..5 under each ap_fixed mode (ties at odd x)
HALVES = {
    "AP_RND": [-2, -2, -1, -1, 0, 0, 1, 1, 2, 2, 3],
    "AP_RND_CONV": [-2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2],
    "AP_TRN": [-3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 2],
    "AP_RND_ZERO": [-2, -2, -1, -1, 0, 0, 0, 1, 1, 2, 2],
    "AP_RND_MIN_INF": [-3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 2],
    "AP_RND_INF": [-3, -2, -2, -1, -1, 0, 1, 1, 2, 2, 3],
    "AP_TRN_ZERO": [-2, -2, -1, -1, 0, 0, 0, 1, 1, 2, 2],
}


@pytest.mark.parametrize("mode", list(HALVES))
def test_rounding_modes_on_hand_made_halves(mode):
    assert ap_round_shift(np.arange(-5, 6), 1, mode).tolist() == HALVES[mode]


def test_rounding_modes_on_quarters():
    x = np.array([-7, -6, -5, 5, 6, 7])  # /4: -1.75 -1.5 -1.25 1.25 1.5 1.75
    assert ap_round_shift(x, 2, "AP_RND_ZERO").tolist() == [-2, -1, -1, 1, 1, 2]
    assert ap_round_shift(x, 2, "AP_RND_INF").tolist() == [-2, -2, -1, 1, 2, 2]
    assert ap_round_shift(x, 2, "AP_TRN_ZERO").tolist() == [-1, -1, -1, 1, 1, 1]


def test_requantization_unit_equals_the_program_arithmetic_for_its_modes():
    rng = np.random.default_rng(1)
    acc = rng.integers(-(1 << 20), 1 << 20, 1000)
    for mode, rounding in AP_TO_PROGRAM.items():
        if rounding is None:
            continue
        assert np.array_equal(ap_requantize(acc, 1 << 30, 36, 3, -8, 7, mode),
                              requantize(acc, 1 << 30, 36, 3, -8, 7, rounding))


def test_hardware_rounding_other_than_the_programs_changes_outputs(zoo_program):
    program, codes, _ = zoo_program(4)
    acc = Accelerator(program, load_config("edge-npu").replace(rounding="AP_TRN"))
    assert not np.array_equal(acc.run(codes), reference.run(program, codes))


def test_attention_v_is_shifts_of_v_by_the_log2_codes():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 6, (2, 3, 4))  # [heads, queries, keys]: probability 2^-code
    v = rng.integers(-8, 8, (2, 4, 5))
    top = 5
    expected = np.zeros((2, 3, 5), dtype=np.int64)
    for h, i, j in np.ndindex(2, 3, 4):
        expected[h, i] += np.left_shift(v[h, j], top - codes[h, i, j])
    weights = np.left_shift(np.int64(1), top - codes)
    out, events, _ = accumulate(weights, v, None, 2, 32, "AP_SAT")
    assert events == 0 and np.array_equal(out, expected)


def test_signed_bits():
    assert [signed_bits(-8, 7), signed_bits(-8, 8), signed_bits(0, 255), signed_bits(-73, 182)] == [4, 5, 9, 9]


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4, 3])
def test_whole_test_set_is_bit_exact_on_the_edge_npu(zoo_program, bits):
    from core import data
    from hwsim.accelerator.simulate import simulate

    program, _, _ = zoo_program(bits)
    test = data.fmnist("test")
    images, labels = test.tensors[0], test.tensors[1].numpy()
    batches = ((program.input_codes(images[s:s + 500]), labels[s:s + 500]) for s in range(0, len(labels), 500))
    metrics, _ = simulate(program, batches, load_config("edge-npu"))
    assert metrics["images"] == 10000 and metrics["bit_exact"] and metrics["overflows"] == 0
