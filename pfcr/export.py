"""Export a quantized timm ViT/DeiT to the integer program (intprog).

Beyond the fake-quant model's own quantizers, the integer program needs three scales that the
fake-quant protocol leaves float; they are measured on calibration images:
- the residual stream: int32 at scale max|x| / 2^20 (headroom 2^11 for the sum of branches);
- the GELU input: int8, symmetric, scale max|fc1 output| / 127;
- the logits: int32 at scale max|logits| / 2^20 (one scale for all classes, so argmax is exact).
LayerNorm, softmax and GELU become the integer kernels of intprog/nonlinear.py; attention
probabilities below 2^-15 are dropped in attention x V (documented approximations).
Swin is not exported yet.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from intprog.arith import Rounding, quantize_multiplier
from intprog.nonlinear import IntLayerNorm, IntSoftmaxLog2, build_lut
from intprog.program import Program
from pfcr.errors import ModelError
from pfcr.quant.model import QuantModel
from pfcr.quant.quantizers import UniformQuantizer

STREAM_BITS = 20  # fraction of int32 used by the residual stream's largest calibration value
ROUNDING = Rounding.HALF_UP
_I32 = (-(1 << 31), (1 << 31) - 1)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _act(q: UniformQuantizer) -> tuple[float, int, int, int]:
    if q.scale.numel() != 1:
        raise ModelError("export needs per-tensor activation quantizers (reparameterize first)")
    return float(q.scale), int(q.zero_point), q.qmin, q.qmax


def _requant_consts(real: np.ndarray, out_zp, qmin, qmax, n: int) -> dict[str, np.ndarray]:
    m, s = quantize_multiplier(np.broadcast_to(np.asarray(real, dtype=np.float64), (n,)))
    full = np.ones(n, dtype=np.int64)
    return {"multiplier": m, "shift": s, "out_zp": full * np.asarray(out_zp, dtype=np.int64),
            "qmin": full * np.asarray(qmin, dtype=np.int64), "qmax": full * np.asarray(qmax, dtype=np.int64)}


def _linear(p: Program, name: str, x: str, layer: nn.Module, in_q: tuple, out_scale, out_zp, qmin, qmax,
            pre_scale: np.ndarray | float = 1.0) -> str:
    """A QuantLinear/QuantConv2d as an integer linear op; outputs requantized to (out_scale, out_zp)."""
    s_in, z_in, _, _ = in_q
    wq = layer.w_quant
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    w_int = wq.integer(w).to(torch.int64).numpy()
    s_w = _np(wq.scale).reshape(-1)
    bias = _np(layer.bias) if layer.bias is not None else np.zeros(len(s_w))
    acc_scale = s_in * s_w
    n = len(s_w)
    consts = {"weight": w_int.astype(np.uint8 if wq.qmin >= 0 else np.int8),
              "weight_zp": _np(wq.zero_point).astype(np.int64).reshape(-1),
              "bias": np.round(bias / acc_scale).astype(np.int64),
              **_requant_consts(acc_scale * pre_scale / out_scale, out_zp, qmin, qmax, n)}
    return p.add("linear", [x], name, {"in_zp": z_in, "rounding": ROUNDING, "weight_bits": wq.bits}, consts)


def _layernorm(p: Program, name: str, x: str, norm: nn.LayerNorm, s_stream: float, out_q: tuple) -> str:
    s_out, z_out, qmin, qmax = out_q
    ln = IntLayerNorm.build(_np(norm.weight), _np(norm.bias), norm.eps, s_stream, s_out, z_out, qmin, qmax)
    return p.add("layernorm", [x], name,
                 {"sqrt_c": ln.sqrt_c, "eps_term": ln.eps_term, "out_zp": z_out, "qmin": qmin, "qmax": qmax},
                 {"multiplier": ln.multiplier, "shift": ln.shift, "sign": ln.sign, "beta_q": ln.beta_q})


@torch.no_grad()
def _ranges(qm: QuantModel, images: torch.Tensor) -> tuple[float, float, float]:
    """max |residual stream|, max |fc1 output|, max |logits| of the fake-quant model on `images`."""
    fc1_max = [0.0]

    def watch(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        fc1_max[0] = max(fc1_max[0], out.abs().max().item())

    hooks = [blk.mlp.fc1.register_forward_hook(watch) for blk in qm.model.blocks]
    stream_max, x = 0.0, images
    try:
        for unit in qm.units[:-1]:
            x = unit(x)
            stream_max = max(stream_max, x.abs().max().item())
        logits = qm.units[-1](x)
    finally:
        for h in hooks:
            h.remove()
    return stream_max, fc1_max[0], logits.abs().max().item()


@torch.no_grad()
def export_vit(qm: QuantModel, images: torch.Tensor) -> Program:
    """The integer program of a quantized ViT/DeiT; `images` (calibration) fix the extra scales."""
    if qm.family != "vit":
        raise ModelError("integer export supports ViT/DeiT for now; Swin export is not implemented yet")
    m = qm.model.eval()
    qm.eval()
    stream_max, fc1_max, logit_max = _ranges(qm, images)
    s_res = stream_max / (1 << STREAM_BITS)
    s_gelu = fc1_max / 127
    s_logit = logit_max / (1 << STREAM_BITS)
    conv = m.patch_embed.proj
    in_q = _act(conv.a_quant)
    c, h, w = images.shape[1:]
    p = Program(input={"name": "image", "shape": [c, h, w], "scale": in_q[0], "zero_point": in_q[1],
                       "qmin": in_q[2], "qmax": in_q[3]},
                output={"name": "logits", "scale": s_logit},
                meta={"family": "vit", "residual_scale": s_res, "gelu_scale": s_gelu})
    x = p.add("patchify", ["image"], "patches", {"patch": conv.weight.shape[-1]})
    x = _linear(p, "embed", x, conv, in_q, s_res, 0, *_I32)
    cls_token = np.round(_np(m.cls_token).reshape(-1) / s_res).astype(np.int64)
    x = p.add("prepend", [x], "tokens", consts={"token": cls_token})
    x = p.add("add_const", [x], "stream0", consts={"value": np.round(_np(m.pos_embed)[0] / s_res).astype(np.int64)})
    for i, blk in enumerate(m.blocks):
        a, t = blk.attn, f"b{i}."
        qkv_in = _act(a.qkv.a_quant)
        h_ = _layernorm(p, t + "ln1", x, blk.norm1, s_res, qkv_in)
        qq, kq, vq = _act(a.matmul_qk.a_quant), _act(a.matmul_qk.b_quant), _act(a.matmul_av.b_quant)
        dim = a.qkv.weight.shape[0] // 3
        # One GEMM; each third of the columns requantized to its own operand's quantization.
        per = [(qq, a.scale), (kq, 1.0), (vq, 1.0)]
        out_scale = np.concatenate([np.full(dim, q[0] / f) for q, f in per])
        zp, lo, hi = (np.concatenate([np.full(dim, q[j]) for q, _ in per]) for j in (1, 2, 3))
        qkv = _linear(p, t + "qkv", h_, a.qkv, qkv_in, out_scale, zp, lo, hi)
        heads = [p.add("split_heads", [qkv], t + n, {"start": j * dim, "dim": dim, "heads": a.num_heads})
                 for j, n in enumerate(("q", "k", "v"))]
        sm = IntSoftmaxLog2.build(qq[0] * kq[0], a.matmul_av.a_quant.bits)
        top = min((1 << sm.bits) - 1, 15)
        att = p.add("attention", heads, t + "attn",
                    {"q_zp": qq[1], "k_zp": kq[1], "v_zp": vq[1], "sm_multiplier": sm.multiplier,
                     "sm_shift": sm.shift, "bits": sm.bits, "max_code": top})
        att = p.add("merge_heads", [att], t + "attn_merged")
        proj_in = _act(a.proj.a_quant)
        att = p.add("requantize", [att], t + "proj_in", {"rounding": ROUNDING},
                    _requant_consts(vq[0] * 2.0**-top / proj_in[0], proj_in[1], proj_in[2], proj_in[3], 1))
        att = _linear(p, t + "proj", att, a.proj, proj_in, s_res, 0, *_I32)
        x = p.add("add", [x, att], t + "stream_attn")
        fc1_in = _act(blk.mlp.fc1.a_quant)
        h_ = _layernorm(p, t + "ln2", x, blk.norm2, s_res, fc1_in)
        h_ = _linear(p, t + "fc1", h_, blk.mlp.fc1, fc1_in, s_gelu, 0, -127, 127)
        fc2_in = _act(blk.mlp.fc2.a_quant)
        table = build_lut(_gelu, s_gelu, 0, 8, *fc2_in)
        h_ = p.add("lut", [h_], t + "gelu", {"in_bits": 8}, {"table": table})
        h_ = _linear(p, t + "fc2", h_, blk.mlp.fc2, fc2_in, s_res, 0, *_I32)
        x = p.add("add", [x, h_], t + "stream")
    x = p.add("take_token", [x], "cls", {"index": 0})
    head_in = _act(m.head.a_quant)
    x = _layernorm(p, "norm", x, m.norm, s_res, head_in)
    _linear(p, "logits", x, m.head, head_in, s_logit, 0, *_I32)
    return p


def _gelu(x: np.ndarray) -> np.ndarray:
    return _np(nn.functional.gelu(torch.from_numpy(x)))


def quantize_images(program: Program, images: torch.Tensor) -> np.ndarray:
    """Images in the model's float input space -> the program's input codes (what a sensor/ISP
    delivers directly)."""
    spec = program.input
    codes = torch.round(images.double() / spec["scale"]) + spec["zero_point"]
    return codes.clamp(spec["qmin"], spec["qmax"]).to(torch.int64).numpy()
