"""Initial scales (percentile/MSE search) and RepQ-ViT's reparameterization of post-LN scales."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from core.errors import SuiteError
from pfcr.quant.model import QuantModel
from pfcr.quant.quantizers import AdaRoundQuantizer, UniformQuantizer


@torch.no_grad()
def float_inputs(qmodel: QuantModel, images: torch.Tensor, modules: dict[str, nn.Module],
                 keep: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                 batch_size: int = 64) -> dict[str, torch.Tensor]:
    """What each of `modules` receives while the model runs in float (every quantizer off) on
    `images`, concatenated over batches; `keep(name, input)` may cut each batch's input first."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def hook(name: str):
        return lambda _m, inp: seen[name].append(inp[0].detach() if keep is None else keep(name, inp[0].detach()))

    hooks = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    was = [q.enabled for _, q in qmodel.quantizers()]
    qmodel.set_quant(weights=False, acts=False)
    qmodel.eval()
    try:
        for i in range(0, len(images), batch_size):
            qmodel(images[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        for (_, q), flag in zip(qmodel.quantizers(), was, strict=True):
            q.enabled = flag
    return {name: torch.cat(ts) for name, ts in seen.items()}


@torch.no_grad()
def calibrate(qmodel: QuantModel, images: torch.Tensor, batch_size: int = 64) -> None:
    """Search every quantizer's range: activations on the float model's inputs to them
    (as RepQ-ViT does; by the config's range rule), weights on the weights themselves (MSE)."""
    acts = {name: q for name, q in qmodel.quantizers() if isinstance(q, UniformQuantizer)
            and not isinstance(q, AdaRoundQuantizer)}

    def others(name: str, x: torch.Tensor) -> torch.Tensor:  # a class-token quantizer: every token but 0
        ax = acts[name].token_axis
        return x if ax is None else x.narrow(ax, 1, x.shape[ax] - 1)

    for name, x in float_inputs(qmodel, images, acts, others, batch_size).items():
        acts[name].calibrate(x, qmodel.cfg.range_rule(acts[name].bits))
    calibrate_weights(qmodel)


@torch.no_grad()
def calibrate_class_token(qmodel: QuantModel, images: torch.Tensor, batch_size: int = 64) -> int:
    """QuantConfig.cls_clip, after `reparameterize`: each class-token quantizer's bounds for token 0
    on its own grid, the range an MSE search picks on the float model's token-0 rows (per channel
    after the LayerNorms, as their quantizers were before the fold), cut so that every token's
    codes span at most 256. Returns how many quantizers clip."""
    qs = {name: q for name, q in qmodel.quantizers() if isinstance(q, UniformQuantizer) and q.token_axis is not None}
    postln = {id(linear.a_quant) for _, linear in qmodel.family.postln_pairs(qmodel.model)}

    def token0(name: str, x: torch.Tensor) -> torch.Tensor:
        first = x.narrow(qs[name].token_axis, 0, 1)
        return first.reshape(-1, first.shape[-1])

    for name, rows in float_inputs(qmodel, images, qs, token0, batch_size).items():
        q = qs[name]
        if q.scale.numel() != 1:
            raise SuiteError(f"{name}: the class token's bounds need a per-tensor grid (reparameterize first)")
        own = UniformQuantizer(q.bits, q.symmetric, axis=-1 if id(q) in postln else None)
        own.calibrate(rows, "mse")  # its clipping is the point (QuantConfig.cls_clip)
        q.token0_min, q.token0_max = int8_window(*bounds_on_grid(own, q.scale.detach(), q.zero_point), q.qmin, q.qmax)
    return len(qs)


def bounds_on_grid(own: UniformQuantizer, scale: torch.Tensor, zero_point: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`own`'s range [lo, hi] (per channel where it is) as codes on another grid (scale, zero_point)."""
    s0, z0 = own.scale.detach(), own.zero_point
    return (torch.round(s0 * (own.qmin - z0) / scale) + zero_point,
            torch.round(s0 * (own.qmax - z0) / scale) + zero_point)


def int8_window(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token 0's per-channel bounds [lo, hi] cut so that, with every other token's [qmin, qmax],
    all codes of the tensor span at most 256: what it reaches below qmin and above qmax (over all
    channels) shares the room left, in proportion."""
    below, above = max(qmin - int(lo.min()), 0), max(int(hi.max()) - qmax, 0)
    room = 255 - (qmax - qmin)
    if below + above > room:
        below, above = below * room // (below + above), room - below * room // (below + above)
    return lo.clamp(qmin - below, qmax + above), hi.clamp(qmin - below, qmax + above)


@torch.no_grad()
def calibrate_weights(qmodel: QuantModel) -> None:
    """Per-channel weight ranges by MSE; resets any learned rounding to round-to-nearest."""
    for _, layer in qmodel.weight_layers():
        layer.w_quant.alpha = None
        layer.w_quant.calibrate(layer.weight)


@torch.no_grad()
def reparameterize(qmodel: QuantModel) -> int:
    """Fold channel-wise post-LN activation scales into the LayerNorm and the next Linear.

    With r = s_c / s and b = s (z - z_c) (s, z: means of the channel parameters), LN' = LN / r - b
    and W' = W r, bias' = bias + W' b compute the same function, and LN' quantized per tensor with
    (s, z) gives exactly the integer codes LN quantized per channel did. Weight quantizers are
    recalibrated on W'. Returns how many layers were folded.
    """
    folded = 0
    for norm, linear in qmodel.family.postln_pairs(qmodel.model):
        aq = linear.a_quant
        if aq.axis is None or not bool(aq.calibrated):
            continue
        s_c, z_c = aq.scale.detach(), aq.zero_point
        s = s_c.mean()
        z = torch.round(z_c.mean()).clamp(aq.qmin, aq.qmax)
        r, b = s_c / s, s * (z - z_c)
        norm.weight.div_(r)
        norm.bias.div_(r).sub_(b)
        linear.weight.mul_(r[None, :])
        shift = linear.weight @ b
        if linear.bias is None:
            linear.bias = nn.Parameter(shift)
        else:
            linear.bias.add_(shift)
        aq.axis = None
        aq.set_params(s.reshape(1), z.reshape(1))
        linear.w_quant.alpha = None
        linear.w_quant.calibrate(linear.weight)
        folded += 1
    return folded
