import pytest
import torch

from core.errors import SuiteError
from pfcr.quant.quantizers import AdaRoundQuantizer, Log2Quantizer, UniformQuantizer, check_bits, round_ste


def _uq(bits, s, z, **kw):
    q = UniformQuantizer(bits, **kw)
    q.set_params(torch.tensor([s]), torch.tensor([z]))
    return q.eval()


def test_asymmetric_grid_and_clipping():
    q = _uq(3, 0.5, 2.0)  # codes 0..7 -> values (code - 2) * 0.5 = -1.0 .. 2.5
    x = torch.tensor([-5.0, -1.0, -0.76, -0.74, 0.0, 0.24, 0.26, 2.5, 9.0])
    assert q(x).tolist() == [-1.0, -1.0, -1.0, -0.5, 0.0, 0.0, 0.5, 2.5, 2.5]
    assert q.integer(x).tolist() == [0, 0, 0, 1, 2, 2, 3, 7, 7]


def test_symmetric_signed_range():
    q = _uq(3, 1.0, 0.0, symmetric=True)
    assert (q.qmin, q.qmax) == (-4, 3)
    assert q(torch.tensor([-9.0, -4.0, 3.0, 9.0])).tolist() == [-4.0, -4.0, 3.0, 3.0]


def test_rounding_ties_follow_torch_round_half_even():
    q = _uq(8, 1.0, 0.0)
    assert q(torch.tensor([0.5, 1.5, 2.5])).tolist() == [0.0, 2.0, 2.0]


def test_per_channel_axis():
    q = UniformQuantizer(4, axis=0)
    q.set_params(torch.tensor([1.0, 0.1]), torch.tensor([0.0, 0.0]))
    out = q.eval()(torch.tensor([[0.26, 3.0], [0.26, 3.0]]))
    assert torch.allclose(out, torch.tensor([[0.0, 3.0], [0.3, 1.5]]))


def test_straight_through_gradients():
    q = _uq(3, 0.5, 2.0).train()
    x = torch.tensor([-3.0, 0.3, 0.9, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # identity inside the range, zero where clipped
    assert q.scale.grad is not None and q.scale.grad.abs().item() > 0
    y = torch.tensor([0.3, 1.7], requires_grad=True)
    round_ste(y).sum().backward()
    assert y.grad.tolist() == [1.0, 1.0]


def test_calibration_beats_min_max_with_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10000, generator=g), torch.tensor([40.0])])
    q = UniformQuantizer(4)
    q.calibrate(x)
    s_mm = (x.max() - x.min()) / 15
    naive = _uq(4, float(s_mm), float(torch.round(-x.min() / s_mm)))
    err = (q.eval()(x) - x).pow(2).mean()
    assert err < 0.5 * (naive(x) - x).pow(2).mean()
    assert q.scale.item() < s_mm  # it clipped the outlier


def test_calibration_per_channel_shapes():
    w = torch.randn(1, 10, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7)[:, None]
    q = AdaRoundQuantizer(4, axis=0)
    q.calibrate(w)
    assert q.scale.shape == (6,) and q.zero_point.shape == (6,)
    # The same row scaled by k gets k times the step: channels are searched independently.
    assert torch.allclose(q.scale / q.scale[0], torch.arange(1, 7).float(), rtol=1e-5)


def test_quantizer_is_identity_until_calibrated_or_when_disabled():
    x = torch.randn(5)
    assert torch.equal(UniformQuantizer(4)(x), x)
    q = _uq(2, 1.0, 0.0)
    q.enabled = False
    assert torch.equal(q(x), x)


def test_qdrop_keeps_float_values_at_drop_probability():
    q = _uq(2, 1.0, 1.0).train()
    q.drop_prob = 0.5
    torch.manual_seed(0)
    x = torch.full((20000,), 0.3)
    kept = (q(x) == x).float().mean().item()
    assert 0.47 < kept < 0.53
    q.eval()
    assert (q(x) == 0.0).all()


def test_log2_levels_and_underflow():
    q = Log2Quantizer(3)  # levels 2^0 .. 2^-7; below -> 0
    x = torch.tensor([1.0, 0.5, 0.3, 0.2, 2.0 ** -7, 2.0 ** -8.6, 0.0])
    assert q(x).tolist() == [1.0, 0.5, 0.25, 0.25, 2.0 ** -7, 0.0, 0.0]


def test_adaround_starts_at_nearest_and_hardens():
    torch.manual_seed(0)
    w = torch.randn(4, 8)
    q = AdaRoundQuantizer(3, axis=0)
    q.calibrate(w)
    nearest = q.eval()(w)
    q.init_rounding(w)
    assert torch.equal(q.eval()(w), nearest)  # alpha >= 0 exactly where the fraction is >= 0.5
    s = q.scale[:, None]
    frac = (w / s - torch.floor(w / s)).clamp(0.01, 0.99)
    assert torch.allclose(q.soft(), frac, atol=1e-5)
    with torch.no_grad():
        q.alpha.copy_(torch.where(q.alpha >= 0, 50.0, -50.0))
    assert q.regularizer(2.0).item() == pytest.approx(0.0, abs=1e-4)
    assert torch.equal(q.harden(w), nearest)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0])
def test_bits_outside_range(bits):
    with pytest.raises(SuiteError, match=r"2\.\.8"):
        check_bits(bits)


def test_adaround_integer_codes_follow_the_learned_rounding():
    """The export reads integer(); before `harden` it must be the rounding eval mode applies."""
    from pfcr.quant.quantizers import AdaRoundQuantizer

    w = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    q = AdaRoundQuantizer(4, axis=0)
    q.calibrate(w)
    q.init_rounding(w)
    with torch.no_grad():
        q.alpha.copy_(torch.randn(q.alpha.shape, generator=torch.Generator().manual_seed(1)))
    q.eval()
    s, z = q.scale.reshape(-1, 1), q.zero_point.reshape(-1, 1)
    flat = w.reshape(6, -1)
    assert torch.equal((q.integer(flat) - z) * s, q(w).reshape(6, -1))
    assert not torch.equal(q.integer(flat), torch.clamp(torch.round(flat / s) + z, q.qmin, q.qmax))


def test_minmax_range_rule_clips_nothing_and_mse_clips_outliers():
    from pfcr.quant.quantizers import UniformQuantizer

    x = torch.randn(100000, generator=torch.Generator().manual_seed(0)) ** 3  # heavy tails
    mse, minmax = UniformQuantizer(8), UniformQuantizer(8)
    mse.calibrate(x)
    minmax.calibrate(x, "minmax")
    top = lambda q: float((q.qmax - q.zero_point) * q.scale.detach())  # noqa: E731
    big = float(x.max())
    assert top(minmax) >= big - float(minmax.scale.detach()) / 2 and top(mse) < 0.95 * big  # the zero point rounds
    with pytest.raises(Exception, match="range rule"):
        minmax.calibrate(x, "max")


def test_auto_range_rule_is_minmax_from_six_bits():
    """The default rule by width, as the real ViT-S/14's records chose it (docs/pfcr.md)."""
    from pfcr.quant.model import QuantConfig

    auto = QuantConfig()
    assert [auto.range_rule(b) for b in (3, 4, 5, 6, 8)] == ["mse", "mse", "mse", "minmax", "minmax"]
    assert QuantConfig(act_range="mse").range_rule(8) == "mse"
    assert QuantConfig(act_range="minmax").range_rule(4) == "minmax"


@pytest.mark.parametrize("kwargs, message", [
    ({"softmax_codes": 3}, "must be one of 1, 2, 4, 8, 16"),
    ({"w_bits": 6, "a_bits": 6, "softmax_codes": 16}, r"spans 4 octaves.*at most 8 codes per octave at 6 bits"),
    ({"softmax_codes": 4}, r"spans 4 octaves.*at most 2 codes per octave at 4 bits"),
    ({"softmax_codes": 2, "log2_softmax": False}, "cannot go with a uniform one"),
])
def test_softmax_codes_are_refused_by_name(kwargs, message):
    """Codes per octave the kernel has no shift for, or so many that small probabilities are dropped."""
    from pfcr.quant.model import QuantConfig

    with pytest.raises(SuiteError, match=message):
        QuantConfig(**kwargs)


@pytest.mark.parametrize("old, codes", [(True, 2), (False, 1)])
def test_quantized_files_from_before_softmax_codes_still_load(tmp_path, old, codes):
    """A file written when the config had `sqrt2_softmax` (a bool) reads back as `softmax_codes`."""
    import json
    from dataclasses import asdict

    from safetensors.torch import save_file

    from pfcr.quant.model import QuantConfig
    from pfcr.quantize import QMODEL_FORMAT, read_qmodel_meta

    quant = asdict(QuantConfig(8, 8))
    del quant["softmax_codes"]
    quant["sqrt2_softmax"] = old
    path = tmp_path / "q.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": QMODEL_FORMAT, "quant": json.dumps(quant),
                                                          "meta": json.dumps({})})
    cfg, _ = read_qmodel_meta(path)
    assert cfg.softmax_codes == codes and cfg.w_bits == 8


def test_class_token_window_keeps_every_code_within_256():
    """cls_clip's bounds for token 0: where its own range reaches far both ways (or lies wholly
    above the others'), the tensor's codes still span at most 256 (one int8 operand), the room
    shared in proportion; where they fit, the bounds are kept as they are."""
    from pfcr.quant.calibrate import int8_window

    for lo, hi in (([-300.0, 2.0], [20.0, 700.0]), ([300.0, 310.0], [400.0, 500.0]), ([-5.0, 0.0], [30.0, 12.0])):
        a, b = int8_window(torch.tensor(lo), torch.tensor(hi), 0, 15)
        assert (a <= b).all()
        assert max(float(b.max()), 15) - min(float(a.min()), 0) <= 255
    a, b = int8_window(torch.tensor([-5.0, 0.0]), torch.tensor([30.0, 12.0]), 0, 15)
    assert a.tolist() == [-5.0, 0.0] and b.tolist() == [30.0, 12.0]


def test_w8_blocks_widen_every_linear_of_the_blocks_named_and_read_back_from_json():
    """Mixed precision by depth (QuantConfig.w8_blocks): the named block's linears take 8-bit
    weights, the others keep the W bits; a block past the model's is refused by name; the list that
    JSON gives back is the same config."""
    import json

    from core.models import load_model
    from pfcr.quant.model import QuantConfig, QuantModel
    from pfcr.quant.modules import QuantLinear

    fp = load_model("vit_fmnist").module.eval()
    qm = QuantModel(fp, QuantConfig(4, 4, w8_blocks=(1,)))
    bits = [{m.w_quant.bits for m in blk.modules() if isinstance(m, QuantLinear)} for blk in qm.model.blocks]
    assert bits[1] == {8} and all(b == {4} for i, b in enumerate(bits) if i != 1)
    with pytest.raises(SuiteError, match=r"w8_blocks=\[1, 12\]: the model has blocks 0\.\.11"):
        QuantModel(fp, QuantConfig(4, 4, w8_blocks=(12, 1)))
    for bad in ((-1,), (True,), 11):
        with pytest.raises(SuiteError, match="block indices"):
            QuantConfig(w8_blocks=bad)
    again = QuantConfig(**json.loads(json.dumps(QuantConfig(w8_blocks=(3, 1, 3)).to_dict())))
    assert again == QuantConfig(w8_blocks=(1, 3))
