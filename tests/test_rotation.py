"""The online Hadamard rotation of fc1's input (QuantConfig.fc1_rotation): an orthonormal ±1 map
that leaves the float function unchanged, a model that exports to its program to the bit (with
GPTQ too) on every executor, the rotation as a 2-bit ±1 GEMM in the program, and a saved model
that reloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.models import load_model
from intprog import reference
from pfcr.export import export_program
from pfcr.quant.model import QuantConfig, QuantModel
from pfcr.quant.modules import RotatedLinear, Rotation, rotation_block
from pfcr.quantize import QuantizeConfig, load_qmodel, quantize, save_qmodel
from tests.test_replay import _codes


@pytest.mark.parametrize(("n", "block"), [(384, 128), (192, 64), (96, 32), (768, 128), (48, 16)])
def test_the_rotation_is_orthonormal_block_hadamard(n, block):
    rot = Rotation(n, 8)
    assert rot.block == rotation_block(n) == block
    r = rot.matrix()
    assert torch.allclose(r @ r.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert set(rot.signs.unique().tolist()) == {-1, 0, 1}
    assert int(rot.signs.abs().sum()) == n * block  # dense ±1 blocks on the diagonal, zeros elsewhere


def _images(n: int = 48) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model", ["vit_fmnist", "swin_fmnist"])
def test_the_rotated_model_computes_the_float_function(model):
    fp = load_model(model).module.eval()
    qm = QuantModel(fp, QuantConfig(4, 4, fc1_rotation=True))
    assert all(isinstance(blk.mlp.fc1, RotatedLinear) for blk in qm.family.blocks(qm.model))
    qm.set_quant(weights=False, acts=False)
    x = _images(8)
    with torch.no_grad():
        assert torch.allclose(qm.model(x), fp(x), atol=1e-4)


@pytest.mark.parametrize(("model", "gptq"), [("vit_fmnist", False), ("vit_fmnist", True), ("swin_fmnist", True)])
def test_a_rotated_model_exports_exactly(model, gptq):
    fp = load_model(model).module.eval()
    x = _images()
    cfg = QuantizeConfig(method="rtn", quant=QuantConfig(4, 4, fc1_rotation=True), init_size=32, gptq=gptq)
    qm, _ = quantize(fp, x[:32], cfg)
    program = export_program(qm)
    rots = [op for op in program.ops if op["out"].endswith("fc1_rot")]
    assert len(rots) == len(qm.family.blocks(qm.model))
    for op in rots:
        assert op["attrs"]["weight_bits"] == 2
        assert {-1, 1} <= set(np.unique(program.consts[op["consts"]["weight"]]).tolist()) <= {-1, 0, 1}
    assert np.array_equal(_codes(qm, program, x[32:]), reference.run(program, program.input_codes(x[32:])))


def test_a_saved_rotated_model_reloads_to_the_same_outputs(tmp_path):
    fp = load_model("vit_fmnist").module.eval()
    x = _images()
    qm, _ = quantize(fp, x[:32], QuantizeConfig(method="rtn", quant=QuantConfig(4, 4, fc1_rotation=True),
                                                init_size=32))
    path = save_qmodel(qm, tmp_path / "q.safetensors", {"model": "vit_fmnist"})
    again = load_qmodel(path, fp)
    with torch.no_grad():
        assert torch.equal(qm(x[32:]), again(x[32:]))


def test_every_executor_computes_the_rotated_program():
    """The rotation's ±1 GEMM with class-token clipping on the rotated fc1 input, at W4A4: the
    accelerator model and TVM (plain and VNNI) compute the reference's integers."""
    from hwsim.accelerator.config import load_config
    from hwsim.accelerator.execute import Accelerator
    from tests.test_export_variants import VIT, _model

    model = _model(VIT, {"init_values": 0.5})
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = QuantConfig(4, 4, cls_clip=True, fc1_rotation=True)
    qm, _ = quantize(model, x[:24], QuantizeConfig(method="rtn", quant=cfg, init_size=24, gptq=True))
    program = export_program(qm)
    rots = [op for op in program.ops if op["out"].endswith("fc1_rot")]
    assert rots and all("qmin0" in op["consts"] for op in rots)  # token 0 clamped apart on the rotated grid
    codes = program.input_codes(x[24:])
    out = reference.run(program, codes)
    with torch.no_grad():
        assert np.array_equal(np.round(qm(x[24:]).double().numpy() / program.output["scale"]), out)
    np.testing.assert_array_equal(Accelerator(program, load_config("edge-npu")).run(codes), out)
    tvm = pytest.importorskip("tvm")
    from tests.test_tvm_lower import build
    from tvm_backends.lower import lower

    for vnni in (False, True):
        vm = build(lower(program, batch=len(codes), vnni=vnni).mod)
        np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(codes.astype("uint8"))).numpy(), out)
