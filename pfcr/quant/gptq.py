"""GPTQ (Frantar et al., ICLR 2023): weight rounding chosen by the layer's output error.

Each layer's input features are rounded in turn, largest Hessian diagonal first ("act order"), on
the weight quantizer's own per-channel grid; the error of each is spread over the features not yet
rounded, through the inverse Hessian H = XᵀX of the layer's quantized inputs X over the calibration
tokens. The grid (step size, zero point) stays the calibrated one, so the integer program carries
the result as it carries round-to-nearest codes: only which code each weight takes changes. Layers
go in the model's order, each on inputs through every earlier layer already rounded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SuiteError
from pfcr.quant.model import QuantModel
from pfcr.quant.modules import QuantConv2d, QuantLinear
from pfcr.quant.quantizers import AdaRoundQuantizer

DAMP = 0.01  # of the Hessian's mean diagonal, added to it (the paper's default)
BLOCK = 128  # features per lazy update (the paper's)


def _patches(conv: QuantConv2d) -> bool:
    """A patch embedding: a conv that is a Linear over non-overlapping patches."""
    return (conv.groups == 1 and conv.padding in ((0, 0), 0) and conv.dilation in ((1, 1), 1)
            and tuple(conv.stride) == tuple(conv.weight.shape[2:]))


def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer`'s quantized input x (its input quantizer's output) as rows [tokens, features] matching
    its weight's columns."""
    if isinstance(layer, QuantConv2d):
        cols = F.unfold(x, layer.weight.shape[2:], stride=layer.stride)  # [N, C*kh*kw, patches]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor of the damped Hessian's inverse; the damping grows tenfold (at most
    twice) where rounding errors leave the matrix not positive definite."""
    eye = torch.eye(len(h), dtype=h.dtype)
    for damp in (DAMP, 10 * DAMP, 100 * DAMP):
        factor, info = torch.linalg.cholesky_ex(h + damp * torch.diag(h).mean() * eye)
        if int(info) == 0:
            inverse, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(factor), upper=True)
            if int(info) == 0:
                return inverse
    raise SuiteError("GPTQ: a layer's input Hessian is not positive definite even with 100x damping "
                     "(calibration inputs all but constant?); quantize without --gptq")


@torch.no_grad()
def round_weights(w: torch.Tensor, h: torch.Tensor, q: AdaRoundQuantizer) -> torch.Tensor:
    """GPTQ on one weight [out, in] with Hessian h [in, in] (float64): the rounded weight, on q's grid."""
    w = w.double().clone()
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    order = torch.argsort(torch.diag(h), descending=True)
    w, h = w[:, order], h[order][:, order]
    u = _inverse_cholesky(h)
    s, z = q.scale.detach().double()[:, None], q.zero_point.double()[:, None]
    out = torch.empty_like(w)
    for a in range(0, w.shape[1], BLOCK):
        b = min(a + BLOCK, w.shape[1])
        wb, errs = w[:, a:b].clone(), torch.empty_like(w[:, a:b])
        for i in range(b - a):
            col = wb[:, i:i + 1]
            qcol = q._fake(col, s, z)
            out[:, a + i:a + i + 1] = qcol
            err = (col - qcol) / u[a + i, a + i]
            wb[:, i:] -= err @ u[a + i:a + i + 1, a + i:b]
            errs[:, i:i + 1] = err
        w[:, b:] -= errs @ u[a:b, b:]
    return out[:, torch.argsort(order)]


@torch.no_grad()
def gptq(qmodel: QuantModel, images: torch.Tensor, batch_size: int = 16) -> int:
    """Round every Linear's (and the patch embedding's) weights by GPTQ on `images`, in place; the
    weights are left on their grids (round-to-nearest on them is then exact). Returns how many."""
    was = qmodel.training
    qmodel.eval()
    done = 0
    xs = list(images.split(batch_size))
    with qmodel.float_path():
        for unit in qmodel.units:
            layers = [m for owned in unit.owned() for m in owned.modules() if isinstance(m, QuantLinear)
                      or (isinstance(m, QuantConv2d) and _patches(m))]
            for layer in layers:
                if not layer.w_quant.enabled or not bool(layer.w_quant.calibrated):
                    continue
                n = layer.weight[0].numel()
                h = torch.zeros(n, n, dtype=torch.float64)

                def add(_m: nn.Module, _inp: tuple, out: torch.Tensor, h: torch.Tensor = h,
                        layer: nn.Module = layer) -> None:
                    r = _rows(layer, out).double()
                    h.addmm_(r.T, r)

                hook = layer.a_quant.register_forward_hook(add)  # after a RotatedLinear's rotation
                try:
                    for x in xs:
                        unit(x)
                finally:
                    hook.remove()
                w = round_weights(layer.weight.reshape(len(layer.weight), -1), h, layer.w_quant)
                layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight.dtype))
                layer.w_quant.alpha = None
                done += 1
            xs = [unit(x) for x in xs]
    qmodel.train(was)
    return done
