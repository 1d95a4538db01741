"""Every option of timm's ViT/DeiT and Swin is exported exactly or refused by name.

Each variant is built from timm with small random weights (norms and biases perturbed so nothing is
trivially 1 or 0), quantized at W8A8 by calibration alone and exported. Where the family exports it,
the integer program must compute the quantized model: its dequantized logits have cosine >= 0.999
with the fake-quant model's float path (a program that drops a LayerScale, pools the wrong token or
skips a norm lands far below; before the families handled these options, LayerScale gave ~0.8),
and the quantized model's eval forward, which runs its own program unit by unit (pfcr.quant.replay),
equals the program's logits to the bit. Where it does not, export is refused with a ModelError
naming the option.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from core.errors import ModelError
from intprog import reference
from pfcr.export import export_program
from pfcr.quant.model import QuantConfig
from pfcr.quantize import QuantizeConfig, quantize

VIT = ("vit_tiny_patch16_224",
       {"img_size": 32, "patch_size": 8, "in_chans": 3, "num_classes": 10, "embed_dim": 32, "depth": 2,
        "num_heads": 2})
SWIN = ("swin_tiny_patch4_window7_224",
        {"img_size": 56, "patch_size": 4, "in_chans": 3, "num_classes": 10, "embed_dim": 16, "depths": (2, 2),
         "num_heads": (2, 2), "window_size": 7})

EXPORTED = {
    "vit": (VIT, {}),
    "layerscale": (VIT, {"init_values": 0.5}),
    "layerscale negative": (VIT, {"init_values": -0.7}),
    "no class token, avg pool": (VIT, {"class_token": False, "global_pool": "avg"}),
    "avg pool + fc_norm": (VIT, {"global_pool": "avg"}),
    "avg pool, no fc_norm": (VIT, {"global_pool": "avg", "fc_norm": False}),
    "avg pool with prefix": (VIT, {"global_pool": "avg", "pool_include_prefix": True}),
    "no_embed_class": (VIT, {"no_embed_class": True}),
    "register tokens": (VIT, {"reg_tokens": 2}),
    "registers, no_embed_class, layerscale": (VIT, {"reg_tokens": 2, "no_embed_class": True, "init_values": 0.3}),
    "qkv_bias off": (VIT, {"qkv_bias": False}),
    "proj_bias off": (VIT, {"proj_bias": False}),
    "pre_norm": (VIT, {"pre_norm": True}),
    "no position embedding": (VIT, {"pos_embed": "none"}),
    "final_norm off": (VIT, {"final_norm": False}),
    "dynamic_img_size": (VIT, {"dynamic_img_size": True}),
    "quick_gelu": (VIT, {"act_layer": "quick_gelu"}),
    "swin": (SWIN, {}),
    "swin qkv_bias off": (SWIN, {"qkv_bias": False}),
    "swin head_dim": (SWIN, {"head_dim": 12}),
    "swin always_partition": (SWIN, {"always_partition": True}),
}
REFUSED = {
    "qk_norm": (VIT, {"qk_norm": True}, "qk_norm"),
    "swiglu": (VIT, {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": "silu"}, "gated MLPs such as SwiGLU"),
    "attention pooling (map)": (VIT, {"global_pool": "map"}, "global_pool='map'"),
    "max pool": (VIT, {"global_pool": "max"}, "global_pool='max'"),
    "no pooling": (VIT, {"global_pool": ""}, "global_pool=''"),
    "rms norm": (VIT, {"norm_layer": "rmsnorm"}, "only LayerNorm"),
    "scale_mlp_norm": (VIT, {"scale_mlp_norm": True}, "scale_mlp_norm"),
    "res-post blocks": (VIT, {"block_fn": timm.models.vision_transformer.ResPostBlock}, "ResPostBlock"),
    "no head": (VIT, {"num_classes": 0}, "Identity head"),
    "distilled deit": (("deit_tiny_distilled_patch16_224", {k: v for k, v in VIT[1].items()}), {},
                       "distillation token"),
    "swin without pooling": (SWIN, {"global_pool": ""}, "global_pool=''"),
}


def _model(spec: tuple, kw: dict) -> torch.nn.Module:
    (arch, base) = spec
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **{**base, **kw}).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _quantize_export(model: torch.nn.Module, x: torch.Tensor):
    qm, _ = quantize(model, x, QuantizeConfig(method="rtn", quant=QuantConfig(8, 8), init_size=len(x)))
    return qm, export_program(qm, x)


@pytest.mark.parametrize("name", EXPORTED)
def test_option_is_exported_exactly(name):
    spec, kw = EXPORTED[name]
    model = _model(spec, kw)
    size = spec[1]["img_size"]
    x = torch.randn(40, 3, size, size, generator=torch.Generator().manual_seed(1))
    qm, program = _quantize_export(model, x[:24])
    codes = reference.run(program, program.input_codes(x[24:]))
    with torch.no_grad():
        with qm.float_path():
            fake = qm(x[24:]).double().numpy()
        replayed = qm(x[24:]).double().numpy() / program.output["scale"]
    integer = codes.astype(np.float64) * program.output["scale"]
    a, b = integer - integer.mean(1, keepdims=True), fake - fake.mean(1, keepdims=True)
    cosine = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cosine >= 0.999, f"{name}: program vs fake-quant logit cosine {cosine:.4f}"
    # top-1 must agree wherever the float path's decision is not a near tie (a random model's
    # logits put a third of the images within 2.5 % of a logit std of the runner-up)
    top2 = np.sort(fake, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05 * fake.std()
    assert clear.sum() >= len(fake) // 2, f"{name}: too few clear decisions to compare top-1"
    assert (integer.argmax(1) == fake.argmax(1))[clear].all(), f"{name}: a clear top-1 decision changed"
    assert np.array_equal(np.round(replayed), codes), f"{name}: the quantized model's eval forward is not its program"


@pytest.mark.parametrize("name", REFUSED)
def test_option_is_refused_by_name(name):
    spec, kw, words = REFUSED[name]
    model = _model(spec, kw)
    size = spec[1]["img_size"]
    with pytest.raises(ModelError, match="cannot be exported") as err:
        _quantize_export(model, torch.randn(8, 3, size, size))
    assert words in str(err.value)


def test_class_token_clipping_is_exported_exactly():
    """QuantConfig.cls_clip at W4A4 on a ViT whose class token is massive: the other tokens' ranges
    leave it out, token 0 gets its own bounds on the same grid, and the program carries them
    (qmin0/qmax0 on the LayerNorms and the qkv GEMMs): its eval forward is its program, bit for
    bit, the accelerator model and TVM compute the same integers, and the program follows the float
    path."""
    from hwsim.accelerator.config import load_config
    from hwsim.accelerator.execute import Accelerator

    model = _model(VIT, {})
    with torch.no_grad():
        model.cls_token.mul_(30)
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    qm, _ = quantize(model, x[:24], QuantizeConfig(method="rtn", quant=QuantConfig(4, 4, cls_clip=True), init_size=24))
    clipping = [q for _, q in qm.quantizers() if getattr(q, "clips_token0", False)]
    assert len(clipping) == 5 * 2  # qkv and fc1 inputs, q, k, v in each of the 2 blocks
    program = export_program(qm)
    carrying = [op["op"] for op in program.ops if "qmin0" in op["consts"]]
    assert carrying == ["layernorm", "linear", "layernorm"] * 2
    wider = [program.consts[op["consts"]["qmax0"]].max() > program.consts[op["consts"]["qmax"]].max()
             if op["op"] == "linear" else program.consts[op["consts"]["qmax0"]].max() > op["attrs"]["qmax"]
             for op in program.ops if "qmin0" in op["consts"]]
    assert any(wider), "no class-token bound leaves the other tokens' range: the test would not see one"
    codes = program.input_codes(x[24:])
    out = reference.run(program, codes)
    with torch.no_grad():
        replayed = qm(x[24:]).double().numpy() / program.output["scale"]
        with qm.float_path():
            fake = qm(x[24:]).double().numpy()
    assert np.array_equal(np.round(replayed), out)
    integer = out.astype(np.float64) * program.output["scale"]
    a, b = integer - integer.mean(1, keepdims=True), fake - fake.mean(1, keepdims=True)
    assert float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.99
    np.testing.assert_array_equal(Accelerator(program, load_config("edge-npu")).run(codes), out)
    tvm = pytest.importorskip("tvm")
    from tests.test_tvm_lower import build
    from tvm_backends.lower import lower

    for vnni in (False, True):  # the VNNI form's u8 x s8 products take token 0's codes in their window
        vm = build(lower(program, batch=len(codes), vnni=vnni).mod)
        np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(codes.astype("uint8"))).numpy(), out)
    # token 0's codes below 0 take the LayerNorm outputs out of uint8: every GEMM but the head's
    # still runs on VNNI, its activations copied once as x - lo
    from tvm_backends.schedules import gemm_kernels, schedule

    vnni_cpu = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})
    assert gemm_kernels(schedule(lower(program, vnni=True).mod, vnni_cpu)) == {"vnni": 9, "generic": 1}


def test_class_token_clipping_needs_a_class_token():
    from pfcr.quant.model import QuantModel

    for spec, kw in ((SWIN, {}), (VIT, {"class_token": False, "global_pool": "avg"})):
        with pytest.raises(ModelError, match=r"has no class token.*--cls-clip"):
            QuantModel(_model(spec, kw), QuantConfig(4, 4, cls_clip=True))
