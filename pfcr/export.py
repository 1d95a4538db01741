"""Export a quantized timm model to the integer program (intprog): the helpers the families share.

Beyond the fake-quant model's own quantizers, the integer program needs three scales that the
fake-quant protocol leaves float; they are measured on calibration images:
- the residual stream: int32 at scale max|x| / 2^20 (headroom 2^11 for the sum of branches);
- the GELU input: int8 over each block's fc1 output min..max (asymmetric; QuantConfig.gelu_range
  "block"), or one symmetric scale max|fc1 output| / 127 for all blocks ("global", the rule before);
- the logits: int32 at scale max|logits| / 2^20 (one scale for all classes, so argmax is exact).
LayerNorm, softmax and GELU become the integer kernels of intprog/nonlinear.py; attention
probabilities below 2^-15 are dropped in attention x V (documented approximations).

Each family module (pfcr/families/) writes its architecture's ops with the helpers here;
`export_program` is the one entry point and dispatches on the quantized model's family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from core.errors import ModelError
from intprog.arith import Rounding, quantize_multiplier
from intprog.nonlinear import IntLayerNorm, IntSoftmaxLog2, build_lut
from intprog.program import Program
from pfcr.quant.quantizers import Log2Quantizer, UniformQuantizer

if TYPE_CHECKING:  # a type only: the family modules, which pfcr.quant.model imports, import this module
    from pfcr.quant.model import QuantModel

STREAM_BITS = 20  # fraction of int32 used by the residual stream's largest calibration value
ROUNDING = Rounding.HALF_UP
BIAS_BITS = 8  # extra fraction bits of Swin's attention logits, for the relative position bias
_I32 = (-(1 << 31), (1 << 31) - 1)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _act(q: UniformQuantizer) -> tuple[float, int, int, int]:
    if q.scale.numel() != 1:
        raise ModelError("export needs per-tensor activation quantizers (reparameterize first)")
    return float(q.scale.detach()), int(q.zero_point), q.qmin, q.qmax


def _requant_consts(real: np.ndarray, out_zp, qmin, qmax, n: int) -> dict[str, np.ndarray]:
    m, s = quantize_multiplier(np.broadcast_to(np.asarray(real, dtype=np.float64), (n,)))
    full = np.ones(n, dtype=np.int64)
    return {"multiplier": m, "shift": s, "out_zp": full * np.asarray(out_zp, dtype=np.int64),
            "qmin": full * np.asarray(qmin, dtype=np.int64), "qmax": full * np.asarray(qmax, dtype=np.int64)}


def _token0(q: nn.Module, n: int) -> dict[str, np.ndarray]:
    """A class-token clipping quantizer's bounds for token 0 as an op's `qmin0`/`qmax0` over `n`
    channels (QuantConfig.cls_clip); none for any other quantizer."""
    if not getattr(q, "clips_token0", False):
        return {}
    return {role: np.broadcast_to(_np(b).astype(np.int64), (n,)).copy()
            for role, b in (("qmin0", q.token0_min), ("qmax0", q.token0_max))}


def _linear(p: Program, name: str, x: str, layer: nn.Module, in_q: tuple, out_scale, out_zp, qmin, qmax,
            pre_scale: np.ndarray | float = 1.0, token0: dict[str, np.ndarray] | None = None) -> str:
    """A QuantLinear/QuantConv2d as an integer linear op; outputs requantized to (out_scale, out_zp)
    (token 0 clamped to `token0`'s bounds where given)."""
    wq = layer.w_quant
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    w_int = wq.integer(w).to(torch.int64).numpy().astype(np.uint8 if wq.qmin >= 0 else np.int8)
    bias = _np(layer.bias) if layer.bias is not None else None
    return _gemm(p, name, x, w_int, _np(wq.zero_point).reshape(-1), _np(wq.scale).reshape(-1), wq.bits, bias,
                 in_q, out_scale, out_zp, qmin, qmax, pre_scale, token0)


def _gemm(p: Program, name: str, x: str, w_int: np.ndarray, w_zp: np.ndarray, s_w: np.ndarray, bits: int,
          bias: np.ndarray | None, in_q: tuple, out_scale, out_zp, qmin, qmax,
          pre_scale: np.ndarray | float = 1.0, token0: dict[str, np.ndarray] | None = None) -> str:
    """The linear op of integer weights `w_int` [out, in] on the grid (s_w, w_zp) per output channel."""
    s_in, z_in, _, _ = in_q
    n = len(w_int)
    s_w = np.broadcast_to(np.asarray(s_w, dtype=np.float64), (n,))
    acc_scale = s_in * s_w
    consts = {"weight": w_int, "weight_zp": np.broadcast_to(np.asarray(w_zp), (n,)).astype(np.int64),
              "bias": np.round((np.zeros(n) if bias is None else bias) / acc_scale).astype(np.int64),
              **_requant_consts(acc_scale * pre_scale / out_scale, out_zp, qmin, qmax, n), **(token0 or {})}
    return p.add("linear", [x], name, {"in_zp": z_in, "rounding": ROUNDING, "weight_bits": bits}, consts)


def _layernorm(p: Program, name: str, x: str, norm: nn.LayerNorm, s_stream: float, out_q: tuple,
               token0: dict[str, np.ndarray] | None = None) -> str:
    s_out, z_out, qmin, qmax = out_q
    ln = IntLayerNorm.build(_np(norm.weight), _np(norm.bias), norm.eps, s_stream, s_out, z_out, qmin, qmax)
    return p.add("layernorm", [x], name,
                 {"sqrt_c": ln.sqrt_c, "eps_term": ln.eps_term, "out_zp": z_out, "qmin": qmin, "qmax": qmax},
                 {"multiplier": ln.multiplier, "shift": ln.shift, "sign": ln.sign, "beta_fixed": ln.beta_fixed,
                  **(token0 or {})})


@torch.no_grad()
def _ranges(qm: QuantModel, images: torch.Tensor) -> dict:
    """max |x| of the fake-quant model on `images`: the residual stream, the fc1 outputs, the
    logits, and (Swin) the patch embedding's conv output and the final norm's output; and each
    block's fc1 output min and max ("fc1_ranges", by id of the block)."""
    seen = {"embed": 0.0, "norm": 0.0}
    fc1: dict[int, tuple[float, float]] = {}
    m = qm.model

    def watch(key: str):
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            seen[key] = max(seen[key], out.abs().max().item())
        return hook

    def watch_block(blk: nn.Module):
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            lo, hi = fc1.get(id(blk), (0.0, 0.0))
            fc1[id(blk)] = (min(lo, out.min().item()), max(hi, out.max().item()))
        return hook

    hooks = [blk.mlp.fc1.register_forward_hook(watch_block(blk)) for blk in qm.family.blocks(m)]
    hooks += [m.patch_embed.proj.register_forward_hook(watch("embed")), m.norm.register_forward_hook(watch("norm"))]
    stream, x = 0.0, images
    try:
        for unit in qm.units[:-1]:
            x = unit(x)
            stream = max(stream, x.abs().max().item())
        logits = qm.units[-1](x)
    finally:
        for h in hooks:
            h.remove()
    return {**seen, "stream": stream, "logits": logits.abs().max().item(), "fc1_ranges": fc1,
            "fc1": max((max(-lo, hi) for lo, hi in fc1.values()), default=0.0)}


class _Scales:
    """The scales the integer program adds to the fake-quant model's (see the module docstring),
    from the ranges of the model's float path on calibration images (`measure`) or as fixed in the
    model (`QuantModel.fix_scales`, in the order of FIELDS); `fc1`: each block's fc1 output (min,
    max) by id of the block, or None for the global GELU scale."""

    FIELDS = ("res", "gelu", "logit", "embed", "norm")

    def __init__(self, res: float, gelu: float, logit: float, embed: float, norm: float,
                 fc1: dict[int, tuple[float, float]] | None = None):
        self.res, self.gelu, self.logit, self.embed, self.norm = res, gelu, logit, embed, norm
        self.fc1 = fc1

    @classmethod
    def measure(cls, qm: QuantModel, images: torch.Tensor) -> _Scales:
        r = _ranges(qm, images)
        return cls(res=r["stream"] / (1 << STREAM_BITS), gelu=r["fc1"] / 127, logit=r["logits"] / (1 << STREAM_BITS),
                   embed=r["embed"] / (1 << STREAM_BITS),
                   norm=r["norm"] / (1 << 15),  # Swin's final norm, summed by the pool: int16-like codes
                   fc1=r["fc1_ranges"] if qm.cfg.gelu_range == "block" else None)

    def values(self) -> list[float]:
        return [getattr(self, f) for f in self.FIELDS]

    def gelu_input(self, blk: nn.Module) -> tuple[float, int, int, int]:
        """(scale, zero point, qmin, qmax) of the int8 codes between `blk`'s fc1 and its activation
        table: its own min..max (zero included), or the global symmetric scale."""
        if self.fc1 is None:
            return self.gelu, 0, -127, 127
        lo, hi = self.fc1[id(blk)]
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(hi - lo, 1e-12) / 255
        return scale, int(np.clip(round(-128 - lo / scale), -128, 127)), -128, 127


def _program(qm: QuantModel, shape: list[int], s: _Scales) -> tuple[Program, tuple]:
    conv = qm.model.patch_embed.proj
    in_q = _act(conv.a_quant)
    p = Program(input={"name": "image", "shape": list(shape), "scale": in_q[0], "zero_point": in_q[1],
                       "qmin": in_q[2], "qmax": in_q[3]},
                output={"name": "logits", "scale": s.logit},
                meta={"family": qm.family.name, "residual_scale": s.res, "gelu_scale": s.gelu})
    return p, in_q


def _attention(p: Program, t: str, h_: str, a: nn.Module, s_res: float, window: dict | None = None) -> str:
    """qkv -> heads -> integer softmax and attention x V -> merged heads -> proj, at the stream scale.

    `window` (Swin): {"size": tokens per window, "bias": [H, w, w] float, "mask": [nW, w, w] bool or None}.
    """
    if not isinstance(a.matmul_av.a_quant, Log2Quantizer):
        raise ModelError("the integer program's softmax emits log2 codes; a uniform post-softmax quantizer "
                         "(--uniform-softmax) has no exact integer form: quantize without --uniform-softmax")
    qkv_in = _act(a.qkv.a_quant)
    qq, kq, vq = _act(a.matmul_qk.a_quant), _act(a.matmul_qk.b_quant), _act(a.matmul_av.b_quant)
    dim = a.qkv.weight.shape[0] // 3
    # One GEMM; each third of the columns requantized to its own operand's quantization.
    per = [(qq, a.scale), (kq, 1.0), (vq, 1.0)]
    out_scale = np.concatenate([np.full(dim, q[0] / f) for q, f in per])
    zp, lo, hi = (np.concatenate([np.full(dim, q[j]) for q, _ in per]) for j in (1, 2, 3))
    clips = [_token0(q, dim) for q in (a.matmul_qk.a_quant, a.matmul_qk.b_quant, a.matmul_av.b_quant)]
    token0 = {role: np.concatenate([c.get(role, np.full(dim, q[j])) for c, (q, _) in zip(clips, per, strict=True)])
              for role, j in (("qmin0", 2), ("qmax0", 3))} if any(clips) else None
    qkv = _linear(p, t + "qkv", h_, a.qkv, qkv_in, out_scale, zp, lo, hi, token0=token0)
    heads = [p.add("split_heads", [qkv], t + n, {"start": j * dim, "dim": dim, "heads": a.num_heads})
             for j, n in enumerate(("q", "k", "v"))]
    # Swin's bias gets 2^BIAS_BITS finer steps than q.k (at 3-4 bits one q.k step is coarse).
    shift = BIAS_BITS if window is not None else 0
    sm = IntSoftmaxLog2.build(qq[0] * kq[0] / 2**shift, a.matmul_av.a_quant.bits, a.matmul_av.a_quant.per_octave)
    top = min((1 << sm.bits) - 1, 15)
    attrs = {"q_zp": qq[1], "k_zp": kq[1], "v_zp": vq[1], "sm_multiplier": sm.multiplier,
             "sm_shift": sm.shift, "bits": sm.bits, "max_code": top}
    if sm.per_octave != 1:  # log-sqrt2 codes; log2 programs keep the attrs they always had
        attrs["codes_per_octave"] = sm.per_octave
    consts = {}
    if window is not None:
        attrs.update(window=window["size"], logit_shift=shift)
        consts["bias"] = np.round(window["bias"] * 2**shift / (qq[0] * kq[0])).astype(np.int64)
        if window["mask"] is not None:
            consts["mask"] = window["mask"].astype(np.int8)
    att = p.add("attention", heads, t + "attn", attrs, consts)
    att = p.add("merge_heads", [att], t + "attn_merged")
    proj_in = _act(a.proj.a_quant)
    att = p.add("requantize", [att], t + "proj_in", {"rounding": ROUNDING},
                _requant_consts(vq[0] * 2.0**-top / proj_in[0], proj_in[1], proj_in[2], proj_in[3], 1))
    return _linear(p, t + "proj", att, a.proj, proj_in, s_res, 0, *_I32)


def _mlp(p: Program, t: str, x: str, blk: nn.Module, s: _Scales) -> str:
    """x + fc2(act(fc1(norm2(x)))): the activation (GELU, or whatever elementwise function the model
    uses) is a table of the model's own module from fc1's int8 output to fc2's input codes. A rotated
    fc1 (QuantConfig.fc1_rotation) reads norm2 through its ±1 Hadamard GEMM (2-bit weights)."""
    fc1 = blk.mlp.fc1
    fc1_in, token0 = _act(fc1.a_quant), _token0(fc1.a_quant, blk.norm2.weight.numel())
    rot = getattr(fc1, "rotation", None)  # QuantConfig.fc1_rotation: LayerNorm -> rotation -> fc1
    if rot is None:
        h_ = _layernorm(p, t + "ln2", x, blk.norm2, s.res, fc1_in, token0)
    else:
        rot_in = _act(rot.a_quant)
        h_ = _layernorm(p, t + "ln2", x, blk.norm2, s.res, rot_in)
        h_ = _gemm(p, t + "fc1_rot", h_, rot.signs.cpu().numpy(), np.zeros(1), rot.weight_scale, 2, None, rot_in,
                   *fc1_in, token0=token0)
    gelu_in = s.gelu_input(blk)
    h_ = _linear(p, t + "fc1", h_, fc1, fc1_in, *gelu_in)
    fc2_in = _act(blk.mlp.fc2.a_quant)
    table = build_lut(_elementwise(blk.mlp.act), *gelu_in[:2], 8, *fc2_in)
    h_ = p.add("lut", [h_], t + "gelu", {"in_bits": 8}, {"table": table})
    h_ = _linear(p, t + "fc2", h_, blk.mlp.fc2, fc2_in, s.res, 0, *_I32)
    return p.add("add", [x, h_], t + "stream")


def export_program(qm: QuantModel, images: torch.Tensor | None = None) -> Program:
    """The integer program of a quantized model: at the scales and input shape the model fixed
    (`QuantModel.fix_scales`), else measured on `images` (calibration)."""
    qm.eval()
    fixed = qm.fixed_scales()
    if fixed is None and images is None:
        raise ModelError("export needs calibration images, or a quantized model whose scales are fixed")
    s, shape = fixed or (_Scales.measure(qm, images), list(images.shape[1:]))
    p, in_q = _program(qm, shape, s)
    x = p.add("patchify", ["image"], "patches", {"patch": qm.model.patch_embed.proj.weight.shape[-1]})
    qm.family.export(p, qm.model, s, in_q, x)
    return p


def _elementwise(act: nn.Module):
    """An elementwise torch module as a numpy function (in float64), for build_lut."""
    def f(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _np(act(torch.from_numpy(x)))
    return f
