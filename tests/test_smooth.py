"""Outlier migration folded into the weights (QuantConfig.smooth, pfcr.quant.smooth): the float
function is kept, the weights do change, and a smoothed quantized model exports to its program to
the bit and reloads from its file around the original float model. And mixed precision on top
(QuantConfig.fc2_a_bits, proj_a_bits): exact on every executor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import SuiteError
from core.models import load_model
from intprog import reference
from pfcr import fidelity
from pfcr.export import export_program
from pfcr.families import family_of
from pfcr.quant.model import QuantConfig
from pfcr.quant.smooth import smoothed
from pfcr.quantize import QuantizeConfig, load_qmodel, quantize, save_qmodel
from tests.test_families import EXAMPLES
from tests.test_replay import _codes


@pytest.mark.parametrize("build", [b for bs in EXAMPLES.values() for b in bs],
                         ids=[f"{n}{i}" for n, bs in EXAMPLES.items() for i in range(len(bs))])
def test_smoothing_keeps_the_float_function_and_moves_the_ranges(build):
    fp = build()
    before = {k: v.clone() for k, v in fp.state_dict().items()}
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x[:, :, 3:6] *= 8  # a few strong inputs, so the ranges are uneven
    sm = smoothed(fp, x, 0.5)
    with torch.no_grad():
        want, got = fp(x), sm(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert all(torch.equal(v, fp.state_dict()[k]) for k, v in before.items())  # a copy was changed
    blk, ref = family_of(sm).blocks(sm)[0], family_of(fp).blocks(fp)[0]
    assert not torch.allclose(blk.norm1.weight, ref.norm1.weight)
    assert not torch.allclose(blk.attn.qkv.weight, ref.attn.qkv.weight)


def test_a_smoothed_model_exports_exactly_and_reloads(tmp_path):
    fp = load_model("vit_fmnist").module.eval()
    x = torch.randn(48, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    qm, _ = quantize(fp, x[:32], QuantizeConfig(method="rtn", quant=QuantConfig(4, 4, smooth=0.5), init_size=32))
    program = export_program(qm)
    assert np.array_equal(_codes(qm, program, x[32:]), reference.run(program, program.input_codes(x[32:])))
    assert fidelity.measure(qm, program, x[32:], 0.9).logit_cosine > 0.9  # the float path agrees too
    again = load_qmodel(save_qmodel(qm, tmp_path / "q.safetensors", {}), fp)
    assert again.cfg.smooth == 0.5
    with torch.no_grad():
        assert torch.equal(again.eval()(x[32:]), qm(x[32:]))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5])
def test_a_strength_outside_zero_to_one_is_refused(alpha):
    with pytest.raises(SuiteError, match="smooth"):
        QuantConfig(smooth=alpha)


def test_8_bit_fc2_and_proj_inputs_keys_and_qkv_weights_in_a_4_bit_model_run_exactly_on_every_executor():
    """Mixed precision (QuantConfig.fc2_a_bits, proj_a_bits, k_a_bits, qkv_w_bits): the program carries
    the wider codes (the GELU table's outputs, proj's input requantization and the keys' third of qkv's
    requantization reach past 4 bits, q's and v's do not; qkv's weights are 8-bit codes and say so,
    the other linears' stay 4-bit), the eval forward is the program, and TVM and the accelerator
    model agree with the reference executor to the bit."""
    pytest.importorskip("tvm")
    import tvm

    from hwsim.accelerator.config import load_config
    from hwsim.accelerator.execute import Accelerator
    from tests.test_tvm_lower import build
    from tvm_backends.lower import lower

    fp = load_model("vit_fmnist").module.eval()
    x = torch.randn(48, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    cfg = QuantConfig(4, 4, fc2_a_bits=8, proj_a_bits=8, k_a_bits=8, qkv_w_bits=8, smooth=0.5)
    qm, _ = quantize(fp, x[:32], QuantizeConfig(method="rtn", quant=cfg, init_size=32))
    assert {b.mlp.fc2.a_quant.bits for b in qm.model.blocks} == {8}
    assert {b.attn.proj.a_quant.bits for b in qm.model.blocks} == {8}
    assert {b.attn.matmul_qk.b_quant.bits for b in qm.model.blocks} == {8}
    assert {b.mlp.fc1.a_quant.bits for b in qm.model.blocks} == {4}
    assert {b.attn.matmul_qk.a_quant.bits for b in qm.model.blocks} == {4}
    program = export_program(qm)
    gelu = [op for op in program.ops if op["op"] == "lut"]
    assert gelu and max(int(program.consts[op["consts"]["table"]].max()) for op in gelu) > 15
    proj_in = [op for op in program.ops if op["op"] == "requantize" and op["out"].endswith("proj_in")]
    assert proj_in and all(int(program.consts[op["consts"]["qmax"]].max()) > 15 for op in proj_in)
    qkv = [op for op in program.ops if op["op"] == "linear" and op["out"].endswith("qkv")]
    assert qkv and {op["attrs"]["weight_bits"] for op in qkv} == {8}
    assert all(np.abs(program.consts[op["consts"]["weight"]].astype(int)).max() > 8 for op in qkv)
    others = [op for op in program.ops if op["op"] == "linear" and op not in qkv]
    assert others and {op["attrs"]["weight_bits"] for op in others} == {4}
    for op in qkv:  # q | k | v columns: only the keys' codes are 8-bit
        q_, k_, v_ = np.split(program.consts[op["consts"]["qmax"]].reshape(-1), 3)
        assert k_.max() > 15 and max(q_.max(), v_.max()) <= 15
    codes = program.input_codes(x[32:])
    want = reference.run(program, codes)
    assert np.array_equal(_codes(qm, program, x[32:]), want)
    np.testing.assert_array_equal(Accelerator(program, load_config("edge-npu")).run(codes), want)
    vm = build(lower(program, batch=16).mod)
    tvm_out = vm["main"](tvm.runtime.tensor(codes.astype("uint8"))).numpy()
    np.testing.assert_array_equal(tvm_out, want)


def test_8_bit_queries_in_a_4_bit_model_are_the_queries_third_of_qkv():
    """QuantConfig.q_a_bits: only the queries' third of qkv's requantization reaches past 4 bits, and
    the eval forward is the program."""
    fp = load_model("vit_fmnist").module.eval()
    x = torch.randn(40, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    qm, _ = quantize(fp, x[:24], QuantizeConfig(method="rtn", quant=QuantConfig(4, 4, q_a_bits=8), init_size=24))
    assert {b.attn.matmul_qk.a_quant.bits for b in qm.model.blocks} == {8}
    assert {b.attn.matmul_qk.b_quant.bits for b in qm.model.blocks} == {4}
    program = export_program(qm)
    for op in (op for op in program.ops if op["op"] == "linear" and op["out"].endswith("qkv")):
        q_, k_, v_ = np.split(program.consts[op["consts"]["qmax"]].reshape(-1), 3)
        assert q_.max() > 15 and max(k_.max(), v_.max()) <= 15
    assert np.array_equal(_codes(qm, program, x[24:]), reference.run(program, program.input_codes(x[24:])))
