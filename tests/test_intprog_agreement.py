"""Whole-model agreement, bit for bit, between the numpy reference executor and an independent torch
int64 implementation of the same specification (tests/intprog_torch.py)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intprog import arith, reference
from intprog.nonlinear import IntLayerNorm, IntSoftmaxLog2
from tests import intprog_torch


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_zoo_vit_reference_equals_torch_integer_executor(zoo_program, bits):
    program, codes, _ = zoo_program(bits)
    ours = reference.run(program, codes[:16])
    theirs = intprog_torch.run(program, codes[:16])
    assert ours.dtype == theirs.dtype == np.int64
    np.testing.assert_array_equal(ours, theirs)


@settings(max_examples=200, deadline=None)
@given(st.integers(-(1 << 40), 1 << 40), st.integers(0, 40), st.sampled_from(["half_up", "half_even", "floor"]))
def test_round_shift_two_implementations(x, s, rounding):
    theirs = intprog_torch.round_shift(torch.tensor(x), s, rounding)
    assert int(arith.round_shift(np.int64(x), s, rounding)) == int(theirs)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([4, 16, 96]))
def test_layernorm_two_implementations(seed, channels):
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << 20), 1 << 20, (3, channels)) * rng.integers(0, 2, (3, 1))  # some constant rows
    ln = IntLayerNorm.build(rng.normal(size=channels), rng.normal(size=channels), 1e-6, 2.0**-12, 0.05, 3, -128, 127)
    attrs = {"sqrt_c": ln.sqrt_c, "eps_term": ln.eps_term, "out_zp": 3, "qmin": -128, "qmax": 127}
    consts = {k: torch.from_numpy(np.asarray(getattr(ln, k), dtype=np.int64))
              for k in ("multiplier", "shift", "sign", "beta_fixed")}
    np.testing.assert_array_equal(ln(x), intprog_torch.layernorm(torch.from_numpy(x), attrs, consts).numpy())


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([2, 3, 4, 8]), st.sampled_from([1, 2, 4, 8, 16]))
def test_attention_two_implementations(seed, bits, per_octave):
    """log2, log-sqrt2 and finer codes (codes_per_octave P: the torch side rounds 2^(L - q/P) in float)."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.integers(-8, 8, (1, 2, 5, 4)) for _ in range(3))
    sm = IntSoftmaxLog2.build(float(rng.uniform(0.01, 2.0)), bits)
    attrs = {"q_zp": 1, "k_zp": -1, "v_zp": 0, "sm_multiplier": sm.multiplier, "sm_shift": sm.shift, "bits": bits,
             "max_code": min((1 << bits) - 1, 15), "codes_per_octave": per_octave}
    ours = reference.KERNELS["attention"]([q, k, v], attrs, {})
    theirs = intprog_torch.attention(*(torch.from_numpy(t) for t in (q, k, v)), attrs)
    np.testing.assert_array_equal(ours, theirs.numpy())


def test_zoo_swin_reference_equals_torch_integer_executor():
    """Windows, shift masks, relative position bias, patch merging: the torch executor computes
    windowed attention as dense block-diagonal attention, a different formulation of the spec."""
    from core import data, models
    from pfcr.export import export_program
    from pfcr.quant.model import QuantConfig
    from pfcr.quantize import QuantizeConfig, quantize

    torch.manual_seed(0)
    fp = models.load_model("swin_fmnist").module.eval()
    x = data.fmnist_calibration(64, seed=0)[0].tensors[0]
    qm, _ = quantize(fp, x, QuantizeConfig(method="rtn", quant=QuantConfig(4, 4), init_size=64))
    program = export_program(qm, x)
    codes = program.input_codes(data.fmnist("test", limit=8).tensors[0])
    np.testing.assert_array_equal(reference.run(program, codes), intprog_torch.run(program, codes))
