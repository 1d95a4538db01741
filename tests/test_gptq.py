"""GPTQ weight rounding (QuantizeConfig.gptq, pfcr.quant.gptq): codes on the calibrated grid, a
smaller layer output error than round-to-nearest on correlated inputs, and a model that exports to
its program to the bit on the zoo's families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import SuiteError
from core.models import load_model
from intprog import reference
from pfcr.export import export_program
from pfcr.quant.gptq import round_weights
from pfcr.quant.model import QuantConfig
from pfcr.quant.quantizers import AdaRoundQuantizer
from pfcr.quantize import QuantizeConfig, quantize
from tests.test_replay import _codes


def _layer(bits: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, AdaRoundQuantizer]:
    """A weight [32, 64], correlated inputs [512, 64] with a few strong features, and its quantizer."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(32, 64, generator=g)
    x = torch.randn(512, 16, generator=g) @ torch.randn(16, 64, generator=g) + 0.1 * torch.randn(512, 64, generator=g)
    x[:, :4] *= 6
    q = AdaRoundQuantizer(bits)
    q.calibrate(w)
    return w, x, q


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_gptq_codes_are_on_the_grid_and_beat_nearest_on_the_output(bits):
    w, x, q = _layer(bits)
    h = x.double().T @ x.double()
    got = round_weights(w, h, q).float()
    codes = q.integer(got)
    assert codes.min() >= q.qmin and codes.max() <= q.qmax
    s, z = q.scale.detach()[:, None], q.zero_point[:, None]
    assert torch.allclose((codes - z) * s, got, atol=1e-6)  # on the grid: rtn on it is exact
    nearest = q(w)
    err_gptq = (x @ (got - w).T).pow(2).sum()
    err_nearest = (x @ (nearest - w).T).pow(2).sum()
    assert err_gptq < 0.8 * err_nearest
    assert not torch.equal(got, nearest)


def test_a_feature_never_seen_rounds_to_nearest():
    w, x, q = _layer(4)
    x[:, 10] = 0  # a dead input: no error to weigh, and none spread onto it from the others
    got = round_weights(w, x.double().T @ x.double(), q).float()
    assert torch.isfinite(got).all()
    assert torch.equal(q.integer(got)[:, 10], q.integer(w)[:, 10])


@pytest.mark.parametrize("model", ["vit_fmnist", "swin_fmnist"])
def test_a_gptq_model_exports_exactly_and_its_weights_change(model):
    fp = load_model(model).module.eval()
    x = torch.randn(48, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    cfg = QuantizeConfig(method="rtn", quant=QuantConfig(4, 4), init_size=32)
    plain, _ = quantize(fp, x[:32], cfg)
    qm, _ = quantize(fp, x[:32], QuantizeConfig(method="rtn", quant=QuantConfig(4, 4), init_size=32, gptq=True))
    changed = [name for (name, a), (_, b) in zip(plain.weight_layers(), qm.weight_layers(), strict=True)
               if not torch.equal(a.w_quant.integer(a.weight), b.w_quant.integer(b.weight))]
    assert len(changed) >= len(list(qm.weight_layers())) - 1  # every Linear and the patch embedding
    program = export_program(qm)
    assert np.array_equal(_codes(qm, program, x[32:]), reference.run(program, program.input_codes(x[32:])))


def test_a_hessian_that_damping_cannot_mend_is_refused_by_name():
    w, _, q = _layer(4)
    with pytest.raises(SuiteError, match="--gptq"):
        round_weights(w, -torch.eye(64, dtype=torch.float64), q)
