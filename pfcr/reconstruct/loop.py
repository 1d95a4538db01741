"""One training loop for every granule: match the float model's output of the granule.

Inputs are the quantized model's own activations at the granule's start (so errors of the
prefix are compensated), targets the float model's activations at its end. Trained: AdaRound
rounding variables (Adam, regularizer 0.01 with beta 20 -> 2 after a 20% warm-up) and activation
step sizes (Adam, cosine), with QDrop dropping activation quantization at probability 0.5: the
QDrop/APHQ-ViT conventions, kept as knobs. The rounding lr is 1e-2 rather than their 1e-3 and the
step sizes' 1e-3 rather than their 4e-5: theirs assume 20000 iterations per granule (measured:
docs/pfcr.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pfcr.quant.model import QuantModel, build_units
from pfcr.quant.quantizers import AdaRoundQuantizer, UniformQuantizer
from pfcr.reconstruct.config import ReconConfig
from pfcr.reconstruct.granules import Granule

LOSS_REPORT_SIZE = 256  # images on which each granule's loss before/after is reported


def granule_loss(out: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Squared error summed over each sample's features, averaged over the batch (BRECQ/QDrop).

    "token": each token's squared error divided by the FP32 token's mean square, which is what the
    next LayerNorm sees of it: tokens with massive activations (a ViT's class token in its middle
    blocks) no longer outweigh the rest by their magnitude. Outputs without tokens take "mse".
    """
    err = (out - target).pow(2)
    if kind == "token" and out.dim() == 3:
        err = err / target.pow(2).mean(-1, keepdim=True).clamp_min(1e-12)
    return err.flatten(1).sum(1).mean()


class Streams:
    """Activations of the calibration set at every unit boundary, float model and quantized model.

    fp[k] / q[k] is the input of unit k (index n: the logits). fp is computed once; q[k] is
    valid for k <= `fresh` and is recomputed lazily after granules change the units behind it,
    with the quantized model's eval forward: its integer program once its scales are fixed, so
    every granule trains on the inputs the deployed program gives it.
    """

    def __init__(self, qmodel: QuantModel, fp_model: nn.Module, images: torch.Tensor, batch_size: int = 128):
        self.qmodel, self.batch_size = qmodel, batch_size
        self.fp = self._run(build_units(fp_model), images, 0, len(qmodel.units))
        self.q: list[torch.Tensor] = [images] + [torch.empty(0)] * len(qmodel.units)
        self.fresh = 0

    @torch.no_grad()
    def _run(self, units: nn.ModuleList, x: torch.Tensor, start: int, end: int) -> list[torch.Tensor]:
        out = [x]
        for k in range(start, end):
            out.append(torch.cat([units[k](xb) for xb in out[-1].split(self.batch_size)]))
        return out

    def ensure(self, k: int) -> torch.Tensor:
        """q[k], recomputed from the last valid boundary with the quantized units (eval mode)."""
        if k > self.fresh:
            self.qmodel.eval()
            with torch.no_grad():
                for j in range(self.fresh, k):
                    self.q[j + 1] = torch.cat([self.qmodel.run_units(xb, j, j + 1)
                                               for xb in self.q[j].split(self.batch_size)])
            self.fresh = k
        return self.q[k]

    def changed(self, first: int) -> None:
        """Units from `first` on were retrained: boundaries after it are stale."""
        self.fresh = min(self.fresh, first)


def _granule_params(qmodel: QuantModel, g: Granule, cfg: ReconConfig) -> tuple[list, list, list]:
    """(rounding variables, activation step sizes, their AdaRound quantizers) that `g` trains."""
    rounding, scales, adaround = [], [], []
    for i in g.units:
        for mod in qmodel.units[i].owned():
            for layer in mod.modules():
                wq = getattr(layer, "w_quant", None)
                if isinstance(wq, AdaRoundQuantizer) and wq.enabled and bool(wq.calibrated) and cfg.learn_rounding:
                    if wq.alpha is None:
                        wq.init_rounding(layer.weight)
                    rounding.append(wq.alpha)
                    adaround.append(wq)
                if (isinstance(layer, UniformQuantizer) and not isinstance(layer, AdaRoundQuantizer)
                        and layer.enabled and bool(layer.calibrated) and cfg.learn_scales):
                    scales.append(layer.scale)
    return rounding, scales, adaround


def reconstruct(qmodel: QuantModel, streams: Streams, g: Granule, cfg: ReconConfig,
                generator: torch.Generator) -> dict:
    """Train granule `g`; returns its loss before and after (on the whole calibration set)."""
    units = [qmodel.units[i] for i in g.units]
    x_in, target = streams.ensure(g.first), streams.fp[g.end]

    def run(x: torch.Tensor) -> torch.Tensor:
        for u in units:
            x = u(x)
        return x

    @torch.no_grad()
    def full_loss() -> float:
        """Hard-rounded loss on the first LOSS_REPORT_SIZE calibration images (a fixed subset)."""
        qmodel.eval()
        xs, ts = x_in[:LOSS_REPORT_SIZE], target[:LOSS_REPORT_SIZE]
        total = sum(granule_loss(run(xb), tb, cfg.loss).item() * len(xb)
                    for xb, tb in zip(xs.split(128), ts.split(128), strict=True))
        return total / len(xs)

    before = full_loss()
    rounding, scales, adaround = _granule_params(qmodel, g, cfg)
    groups = [{"params": p, "lr": lr} for p, lr in ((rounding, cfg.round_lr), (scales, cfg.scale_lr)) if p]
    if not groups or cfg.iters <= 0:
        return {"granule": g.name, "level": g.level, "loss_before": before, "loss_after": before, "iters": 0}
    for p in qmodel.parameters():
        p.requires_grad_(False)
    for grp in groups:
        for p in grp["params"]:
            p.requires_grad_(True)
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / cfg.iters)))
    qmodel.set_drop_prob(cfg.drop_prob)
    qmodel.train()
    warm = int(cfg.warmup * cfg.iters)
    try:
        for t in range(cfg.iters):
            idx = torch.randint(0, len(x_in), (min(cfg.batch_size, len(x_in)),), generator=generator)
            loss = granule_loss(run(x_in[idx]), target[idx], cfg.loss)
            if adaround and t >= warm:
                frac = (t - warm) / max(1, cfg.iters - warm)
                beta = cfg.beta[0] + (cfg.beta[1] - cfg.beta[0]) * frac
                loss = loss + cfg.reg_weight * sum(q.regularizer(beta) for q in adaround)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for s in scales:
                s.data.clamp_(min=1e-8)
    finally:
        streams.changed(g.first)
        qmodel.set_drop_prob(0.0)
        qmodel.eval()
        for p in qmodel.parameters():
            p.requires_grad_(False)
    return {"granule": g.name, "level": g.level, "loss_before": before, "loss_after": full_loss(),
            "iters": cfg.iters}
