"""Quantized model, granules, reparameterization, reconstruction and the quantize command."""

import json

import pytest
import torch

from cli.main import main
from core import models
from core.errors import CheckpointError, ModelError, SuiteError
from pfcr.families import family_of
from pfcr.quant.calibrate import calibrate, reparameterize
from pfcr.quant.model import QuantConfig, QuantModel, build_units
from pfcr.quantize import QuantizeConfig, load_qmodel, quantize, save_qmodel
from pfcr.reconstruct.granules import schedule
from pfcr.reconstruct.loop import ReconConfig, Streams, granule_loss, reconstruct
from tests.test_models import TINY


def _fp(fam):
    torch.manual_seed(0)
    arch, kw = TINY[fam]
    return models.build(arch, **kw).eval()


def _images(n=32, seed=0):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fam", ["vit", "deit", "swin"])
def test_units_chain_to_the_model(fam):
    fp, x = _fp(fam), _images(4)
    y = x
    for unit in build_units(fp):
        y = unit(y)
    assert torch.allclose(y, fp(x), atol=1e-5)


def test_quantizer_placement_vit():
    qm = QuantModel(_fp("vit"), QuantConfig(3, 4))
    names = dict(qm.quantizers())
    blk = "blocks.0."
    for part in ("attn.qkv.a_quant", "attn.qkv.w_quant", "attn.matmul_qk.a_quant", "attn.matmul_qk.b_quant",
                 "attn.matmul_av.a_quant", "attn.matmul_av.b_quant", "attn.proj.a_quant", "mlp.fc1.a_quant",
                 "mlp.fc2.a_quant", "mlp.fc2.w_quant"):
        assert blk + part in names, part
    assert names["patch_embed.proj.a_quant"].bits == 8  # the image
    assert names["head.a_quant"].bits == 4 and names["head.w_quant"].bits == 3
    assert type(names["blocks.0.attn.matmul_av.a_quant"]).__name__ == "Log2Quantizer"
    assert names["blocks.0.attn.qkv.a_quant"].axis == -1 and names["blocks.0.attn.proj.a_quant"].axis is None
    edge = QuantModel(_fp("vit"), QuantConfig(3, 4, first_last_w_bits=8))
    assert dict(edge.quantizers())["head.w_quant"].bits == 8


def test_unsupported_models_and_bits():
    with pytest.raises(ModelError, match="VisionTransformer"):
        family_of(torch.nn.Linear(2, 2))
    with pytest.raises(SuiteError, match="w_bits=9"):
        QuantConfig(w_bits=9)
    with pytest.raises(SuiteError, match="a_bits=1"):
        QuantConfig(a_bits=1)


def test_granules_vit_zoo_shape():
    entry = models.ZOO["vit_fmnist"]
    qm = QuantModel(models.build(entry.arch, **entry.kwargs), QuantConfig())
    g = schedule(qm, coarsest=4)
    assert [x.name for x in g[:9]] == ["stem", "s0.b0.attn", "s0.b0.mlp", "s0.b0", "s0.b1.attn", "s0.b1.mlp",
                                      "s0.b1", "s0.b0-1", "s0.b2.attn"]
    assert len(g) == 2 + 24 + 12 + 6 + 3 and g[-1].name == "tail"
    quads = [x for x in g if x.level == 3]
    assert quads[0].units == tuple(range(1, 9))
    assert len(schedule(qm, coarsest=0)) == 26
    assert [x.level for x in schedule(qm, finest=False, coarsest=1)] == [0] + [1] * 12 + [0]
    lw = schedule(qm, coarsest=4, levelwise=True)
    assert [x.level for x in lw[1:-1]] == sorted(x.level for x in lw[1:-1]) and lw[-1].name == "tail"


def test_granules_swin_stay_within_stages():
    entry = models.ZOO["swin_fmnist"]
    qm = QuantModel(models.build(entry.arch, **entry.kwargs), QuantConfig())
    g = schedule(qm, coarsest=4)
    kinds = [u.kind for u in qm.units]
    merge = kinds.index("merge")
    assert qm.units[merge].block == (1, 0)
    for x in g:
        stages = {qm.units[i].block[0] for i in x.units if qm.units[i].block is not None}
        assert len(stages) <= 1, x.name
    s1_b0 = next(x for x in g if x.name == "s1.b0")
    assert s1_b0.units[0] == merge  # patch merging joins its stage's first block
    assert any(x.name == "s1.b0-3" for x in g) and not any(x.name.startswith("s0.b0-3") for x in g)


@pytest.mark.parametrize("fam", ["vit", "swin"])
def test_reparameterization_is_lossless_with_float_weights(fam):
    fp, x = _fp(fam), _images(32)
    qm = QuantModel(fp, QuantConfig(4, 4))
    calibrate(qm, x)
    qm.set_quant(weights=False)
    before = qm(x)
    assert reparameterize(qm) == (5 if fam == "swin" else 4)
    assert all(q.axis is None for n, q in qm.quantizers() if n.endswith("a_quant") and hasattr(q, "axis"))
    assert torch.allclose(qm(x), before, atol=1e-5)
    assert not torch.allclose(before, fp(x), atol=1e-3)  # the activations really are quantized


def test_reconstruction_lowers_the_granule_loss():
    # Smooth images: with white-noise pixels round-to-nearest is already optimal for the patch
    # embedding, and there would be nothing to learn.
    fp = _fp("vit")
    x = torch.nn.functional.interpolate(_images(64)[:, :, :7, :7], size=28, mode="bilinear")
    qm = QuantModel(fp, QuantConfig(3, 8))
    calibrate(qm, x)
    reparameterize(qm)
    streams = Streams(qm, fp, x)
    # The stem sees the exact images, so all of its loss is its own 3-bit weights' doing.
    granule = schedule(qm)[0]
    out = reconstruct(qm, streams, granule, ReconConfig(iters=100, round_lr=1e-2, drop_prob=0.0),
                      torch.Generator().manual_seed(0))
    assert out["granule"] == "stem"
    assert out["loss_after"] < 0.8 * out["loss_before"]


def test_token_loss_weighs_each_token_by_its_own_magnitude():
    """"token": a token's error counts relative to its FP32 mean square, so a massive token (x100)
    with the same relative error weighs like the others; plain MSE lets it dominate."""
    target = torch.ones(2, 3, 4)
    target[:, 0] *= 100
    out = target * 1.1
    assert granule_loss(out, target, "token").item() == pytest.approx(3 * 4 * 0.01, rel=1e-5)
    assert granule_loss(out, target).item() == pytest.approx((1e4 + 2) * 4 * 0.01, rel=1e-5)
    logits = torch.ones(2, 5)  # no token axis: plain squared error
    assert granule_loss(logits * 2, logits, "token").item() == granule_loss(logits * 2, logits).item()
    with pytest.raises(ValueError, match=r"ReconConfig\.loss"):
        ReconConfig(loss="l1")


@pytest.mark.parametrize("method, model, cls_clip", [("rtn", "vit", False), ("block", "vit", False),
                                                     ("pfcr", "swin", False), ("pfcr", "vit", True)])
def test_quantize_save_reload_exact(tmp_path, method, model, cls_clip):
    fp, x = _fp(model), _images(16)
    cfg = QuantizeConfig(method=method, quant=QuantConfig(4, 4, cls_clip=cls_clip),
                         recon=ReconConfig(iters=3, batch_size=8), coarsest=2, init_size=16)
    qm, log = quantize(fp, x, cfg)
    assert (len(log) == 0) == (method == "rtn")
    assert all(q.alpha is None for _, q in qm.quantizers() if hasattr(q, "alpha"))  # hardened
    assert any(getattr(q, "clips_token0", False) for _, q in qm.quantizers()) == cls_clip
    path = save_qmodel(qm, tmp_path / "q.safetensors", {"model": "tiny"})
    again = load_qmodel(path, fp)
    assert torch.equal(again(x), qm(x))


def test_quantize_is_deterministic():
    fp, x = _fp("vit"), _images(16)
    cfg = QuantizeConfig(method="pfcr", recon=ReconConfig(iters=4, batch_size=8), coarsest=1, init_size=16)
    a, _ = quantize(fp, x, cfg)
    b, _ = quantize(fp, x, cfg)
    assert torch.equal(a(x), b(x))


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(plain))
    with pytest.raises(CheckpointError, match="not a quantized model"):
        load_qmodel(plain, _fp("vit"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_qmodel(junk, _fp("vit"))


def test_quantize_command_real_user_path(tmp_path, results, capsys):
    """timm name + local checkpoint + ImageNet-layout folder (train/ for calibration, val/ for eval)."""
    from tests.conftest import image_folder, user_model

    ckpt, kwargs = user_model(tmp_path, num_classes=2)
    for split in ("train", "val"):
        image_folder(tmp_path / "data" / split, ("x", "y"), per_class=4)
    out = tmp_path / "q.safetensors"
    argv = ["quantize", "vit_tiny_patch16_224", "--checkpoint", str(ckpt), "--model-kwargs", json.dumps(kwargs),
            "--data", str(tmp_path / "data"), "--bits", "W3A3", "--method", "pfcr", "--calib-size", "6",
            "--iters", "2", "--coarsest", "2", "--first-last-w-bits", "8", "--out", str(out)]
    assert main(argv) == 0
    rec = json.loads(next(results.glob("quantize_*.json")).read_text())
    assert rec["config"]["w_bits"] == 3 and rec["config"]["method"] == "pfcr" and rec["data"]["size"] == 8
    assert rec["config"]["quant"]["first_last_w_bits"] == 8
    assert {"top1", "agreement", "kl", "fp_top1", "seconds", "peak_rss_mb"} <= set(rec["metrics"])
    assert rec["artifact"] == str(out) and out.exists()
    # The saved model, evaluated on its own, gives the very same predictions.
    evaluate = ["eval", "vit_tiny_patch16_224", "--checkpoint", str(ckpt), "--model-kwargs", json.dumps(kwargs),
                "--data", str(tmp_path / "data"), "--quantized", str(out)]
    assert main(evaluate) == 0
    again = json.loads(next(results.glob("eval_*reloaded*.json")).read_text())
    assert again["metrics"]["confusion"] == rec["metrics"]["confusion"]
    assert again["config"]["method"] == "pfcr" and again["config"]["w_bits"] == 3
    assert main(["eval", "vit_fmnist", "--quantized", str(out)]) == 2
    assert "quantizes 'vit_tiny_patch16_224', not 'vit_fmnist'" in capsys.readouterr().err


def test_quantize_command_rejects_bad_bits(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", "vit_fmnist", "--bits", "4bit"])
    assert exit_.value.code == 2 and "W<bits>A<bits>" in capsys.readouterr().err
    assert main(["quantize", "vit_fmnist", "--bits", "W1A4", "--calib-size", "4"]) == 2
    assert "outside the supported 2..8 bits" in capsys.readouterr().err
