"""The quantized model's eval forward is its own integer program (pfcr.quant.replay).

On the zoo the float fake-quant path and the program disagree on 3-5 % of top-1 decisions at
W4A4/W3A3; the eval forward must agree with the program to the bit, unit by unit and at the
logits, follow every change of the model's state, and leave the float path reachable for the
export's fidelity guard.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import ModelError, SuiteError
from core.models import load_model
from intprog import reference
from pfcr.export import export_program
from pfcr.quant.model import QuantConfig
from pfcr.quantize import QuantizeConfig, load_qmodel, quantize, save_qmodel


def _images() -> torch.Tensor:
    """The fixture's images: the first 32 calibrate, the rest are held out."""
    return torch.randn(48, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=["vit_fmnist", "swin_fmnist"])
def quantized(request):
    fp = load_model(request.param).module.eval()
    x = _images()
    qm, _ = quantize(fp, x[:32], QuantizeConfig(method="rtn", quant=QuantConfig(4, 4), init_size=32))
    return fp, qm, x[32:]


def _codes(qm, program, x) -> np.ndarray:
    with torch.no_grad():
        return np.round(qm(x).double().numpy() / program.output["scale"]).astype(np.int64)


def test_eval_forward_is_the_program_to_the_bit(quantized):
    _, qm, x = quantized
    program = export_program(qm)
    assert np.array_equal(_codes(qm, program, x), reference.run(program, program.input_codes(x)))
    # unit by unit too: every residual stream the program makes is the model's, in its units
    seen: dict[str, np.ndarray] = {}
    reference.execute(program, program.input_codes(x), on_value=lambda n, v: seen.__setitem__(n, v))
    with torch.no_grad():
        h = x
        for k, name in enumerate(program.units):
            h = qm.run_units(h, k, k + 1)
            got = np.round(h.double().numpy() / program.meta["residual_scale"]).reshape(seen[name].shape)
            assert np.array_equal(got, seen[name]), f"unit {k} ({name})"


def test_float_path_is_reachable_and_not_the_program(quantized):
    _, qm, x = quantized
    program = export_program(qm)
    with torch.no_grad(), qm.float_path():
        assert qm.replay() is None
        fake = qm(x).double().numpy() / program.output["scale"]
    assert not np.array_equal(np.round(fake), reference.run(program, program.input_codes(x)))


def test_eval_forward_follows_state_changes(quantized):
    fp, qm, x = quantized
    qm = load_qmodel_copy(qm, fp)
    before = export_program(qm)
    with torch.no_grad():
        qm.family.head(qm.model).weight.data.mul_(-1)  # an edit through .data bumps no version counter
    after = export_program(qm)
    assert not after.same_computation(before)
    assert np.array_equal(_codes(qm, after, x), reference.run(after, after.input_codes(x)))


def load_qmodel_copy(qm, fp):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = save_qmodel(qm, Path(d) / "q.safetensors", {"model": "zoo"})
        copy = load_qmodel(path, fp)
    assert export_program(copy).same_computation(export_program(qm)), "save/load changed the program"
    return copy


def test_training_mode_and_unfixed_scales_use_the_float_path(quantized):
    fp, qm, _ = quantized
    qm.train()
    try:
        assert qm.replay() is None
    finally:
        qm.eval()
    fresh = load_qmodel_copy(qm, fp)
    fresh.program_scales.zero_()
    assert fresh.replay() is None  # a file saved before the scales were fixed


def test_uniform_softmax_is_refused_by_export(quantized):
    fp, _, x = quantized
    qm, _ = quantize(fp, x, QuantizeConfig(method="rtn", quant=QuantConfig(8, 8, log2_softmax=False), init_size=16))
    with pytest.raises(ModelError, match="uniform post-softmax"):
        export_program(qm)
    with pytest.warns(UserWarning, match="float path"):
        assert qm.replay() is None


@pytest.mark.parametrize("per_octave", [2, 8])
def test_fine_softmax_codes_export_exactly_and_run_on_the_accelerator(per_octave):
    """Log-sqrt2 (and finer) post-softmax codes: the program carries them (codes_per_octave), computes what
    the float path computes up to the kernels' rounding, is the eval forward to the bit, and the
    accelerator model agrees with the reference executor."""
    from hwsim.accelerator.config import load_config
    from hwsim.accelerator.execute import Accelerator
    from pfcr import fidelity

    fp = load_model("vit_fmnist").module.eval()
    x = torch.randn(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    cfg = QuantizeConfig(method="rtn", quant=QuantConfig(8, 8, softmax_codes=per_octave), init_size=32)
    qm, _ = quantize(fp, x[:32], cfg)
    assert qm.model.blocks[0].attn.matmul_av.a_quant.per_octave == per_octave
    program = export_program(qm)
    attention = [op for op in program.ops if op["op"] == "attention"]
    assert attention and all(op["attrs"]["codes_per_octave"] == per_octave for op in attention)
    codes = program.input_codes(x[32:])
    want = reference.run(program, codes)
    assert np.array_equal(_codes(qm, program, x[32:]), want)
    assert fidelity.measure(qm, program, x[32:], 0.99).logit_cosine > 0.99  # vs the float path
    np.testing.assert_array_equal(Accelerator(program, load_config("edge-npu")).run(codes), want)


def _fc1_code_spans(program, x) -> list[tuple[int, int]]:
    """(min, max) of each block's fc1 output codes (the activation table's input) on images x."""
    seen: dict[str, np.ndarray] = {}
    reference.execute(program, program.input_codes(x), on_value=lambda n, v: seen.__setitem__(n, v))
    return [(int(seen[op["out"]].min()), int(seen[op["out"]].max())) for op in program.ops
            if op["op"] == "linear" and op["out"].endswith("fc1")]


def test_gelu_input_codes_span_each_blocks_own_range(quantized):
    """gelu_range "block": the int8 codes between fc1 and its table cover each block's calibrated
    min..max, where one symmetric scale for all blocks ("global") leaves most of them unused."""
    fp, qm, _ = quantized
    calib = _images()[:32]
    spans = _fc1_code_spans(export_program(qm), calib)
    assert spans and all(lo <= -128 + 12 and hi >= 127 - 12 for lo, hi in spans), spans  # the float path set them
    glob, _ = quantize(fp, calib, QuantizeConfig(method="rtn", quant=QuantConfig(4, 4, gelu_range="global"),
                                                 init_size=32))
    wide = _fc1_code_spans(export_program(glob), calib)
    assert max(hi - lo for lo, hi in wide) <= 254 and min(hi - lo for lo, hi in wide) < 200, wide


def test_quantized_files_from_before_block_gelu_ranges_export_as_they_did(quantized, tmp_path):
    """A file without `program_fc1_ranges` and `gelu_range` (written before them) loads with the
    global GELU scale it was made with, and exports the same program as then."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    fp, _, x = quantized
    old, _ = quantize(fp, x[:16], QuantizeConfig(method="rtn", quant=QuantConfig(4, 4, gelu_range="global"),
                                                 init_size=16))
    path = save_qmodel(old, tmp_path / "q.safetensors", {"model": "zoo"})
    with safe_open(str(path), framework="pt") as f:
        header, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if k != "program_fc1_ranges"}
    quant = json.loads(header["quant"])
    del quant["gelu_range"]
    save_file(state, str(path), metadata={**header, "quant": json.dumps(quant)})
    loaded = load_qmodel(path, fp)
    assert loaded.cfg.gelu_range == "global"
    assert export_program(loaded).same_computation(export_program(old))


def test_gelu_range_is_refused_by_name():
    with pytest.raises(SuiteError, match=r"gelu_range='layer'.*'block' or 'global'"):
        QuantConfig(gelu_range="layer")
