"""GPTQ (Frantar et al., ICLR 2023): weight rounding chosen by the layer's output error.

Each layer's input features are rounded in turn, largest Hessian diagonal first ("act order"), on
the weight quantizer's own per-channel grid; the error of each is spread over the features not yet
rounded, through the inverse Hessian H = XᵀX of the layer's quantized inputs X over the calibration
tokens. The grid (step size, zero point) stays the calibrated one, so the integer program carries
the result as it carries round-to-nearest codes: only which code each weight takes changes. Layers
go in the model's order, each on inputs through every earlier layer already rounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pfcr.quant.model import QuantModel
from pfcr.quant.modules import QuantConv2d, QuantLinear
from pfcr.quant.quantizers import AdaRoundQuantizer

DAMP = 0.01  # of the Hessian's mean diagonal, added to it (the paper's default)
BLOCK = 128  # features per lazy update (the paper's)
GPTQ_TARGETS = ("quantized", "float")  # QuantizeConfig.gptq: whose output each layer matches


def _patches(conv: QuantConv2d) -> bool:
    """A patch embedding: a conv that is a Linear over non-overlapping patches."""
    return (conv.groups == 1 and conv.padding in ((0, 0), 0) and conv.dilation in ((1, 1), 1)
            and tuple(conv.stride) == tuple(conv.weight.shape[2:]))


def _rows(layer: nn.Module, x: torch.Tensor, quantized: bool = True) -> torch.Tensor:
    """The input of `layer` (through its input quantizer, or raw) as rows [tokens, features]
    matching its weight's columns."""
    if quantized:
        x = layer.a_quant(x)
    if isinstance(layer, QuantConv2d):
        cols = F.unfold(x, layer.weight.shape[2:], stride=layer.stride)  # [N, C*kh*kw, patches]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def round_weights(w: torch.Tensor, h: torch.Tensor, q: AdaRoundQuantizer) -> torch.Tensor:
    """GPTQ on one weight [out, in] with Hessian h [in, in] (float64): the rounded weight, on q's grid."""
    w = w.double().clone()
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    order = torch.argsort(torch.diag(h), descending=True)
    w, h = w[:, order], h[order][:, order]
    h += DAMP * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s, z = q.scale.detach().double()[:, None], q.zero_point.double()[:, None]
    out = torch.empty_like(w)
    for a in range(0, w.shape[1], BLOCK):
        b = min(a + BLOCK, w.shape[1])
        wb, errs = w[:, a:b].clone(), torch.empty_like(w[:, a:b])
        for i in range(b - a):
            col = wb[:, i:i + 1]
            qcol = (torch.clamp(torch.round(col / s) + z, q.qmin, q.qmax) - z) * s
            out[:, a + i:a + i + 1] = qcol
            err = (col - qcol) / u[a + i, a + i]
            wb[:, i:] -= err @ u[a + i:a + i + 1, a + i:b]
            errs[:, i:i + 1] = err
        w[:, b:] -= errs @ u[a:b, b:]
    return out[:, torch.argsort(order)]


@contextlib.contextmanager
def _all_quantizers_off(qmodel: QuantModel) -> Iterator[None]:
    was = [q.enabled for _, q in qmodel.quantizers()]
    qmodel.set_quant(weights=False, acts=False)
    try:
        yield
    finally:
        for (_, q), flag in zip(qmodel.quantizers(), was, strict=True):
            q.enabled = flag


def _inputs(unit: nn.Module, layer: nn.Module, x: torch.Tensor, quantized: bool) -> torch.Tensor:
    """What `layer` receives when `unit` runs on x, as float64 rows (`_rows`)."""
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_pre_hook(lambda _m, inp: seen.append(_rows(layer, inp[0], quantized)))
    try:
        unit(x)
    finally:
        hook.remove()
    return seen[0].double()


@torch.no_grad()
def gptq(qmodel: QuantModel, images: torch.Tensor, float_target: bool = False, batch_size: int = 16) -> int:
    """Round every Linear's (and the patch embedding's) weights by GPTQ on `images`, in place; the
    weights are left on their grids (round-to-nearest on them is then exact). Returns how many.

    `float_target`: match the float model's output W·X instead of W·X̃ on the quantized model's own
    inputs X̃ (GPTAQ's asymmetric calibration: the error that reached the layer is corrected too).
    ||W·X - Ŵ·X̃||² = ||(W* - Ŵ)·X̃||² + const with W* = W·XᵀX̃·(X̃ᵀX̃)⁻¹, so GPTQ rounds W* instead."""
    was = qmodel.training
    qmodel.eval()
    done = 0
    xs = list(images.split(batch_size))
    fs = list(xs) if float_target else []
    with qmodel.float_path():
        for unit in qmodel.units:
            layers = [m for owned in unit.owned() for m in owned.modules() if isinstance(m, QuantLinear)
                      or (isinstance(m, QuantConv2d) and _patches(m))]
            for layer in layers:
                if not layer.w_quant.enabled or not bool(layer.w_quant.calibrated):
                    continue
                w = layer.weight.reshape(len(layer.weight), -1).double()
                h = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64)
                cross = torch.zeros_like(h) if float_target else None
                for i, x in enumerate(xs):
                    r = _inputs(unit, layer, x, quantized=True)
                    h.addmm_(r.T, r)
                    if cross is not None:
                        with _all_quantizers_off(qmodel):
                            cross.addmm_(_inputs(unit, layer, fs[i], quantized=False).T, r)
                if cross is not None:
                    damped = h + DAMP * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
                    w = torch.linalg.solve(damped, cross.T @ w.T).T
                w = round_weights(w, h, layer.w_quant)
                layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight.dtype))
                layer.w_quant.alpha = None
                done += 1
            xs = [unit(x) for x in xs]
            if float_target:
                with _all_quantizers_off(qmodel):
                    fs = [unit(f) for f in fs]
    qmodel.train(was)
    return done
