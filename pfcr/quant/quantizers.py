"""Fake quantizers: uniform (with learnable step size and AdaRound rounding) and log2.

All round with straight-through gradients. A quantizer is off (identity) until it is
calibrated, and `enabled` switches it off again (e.g. float weights in the first POS stage).
QDrop: in training mode an activation quantizer keeps each element's float value with
probability `drop_prob`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.errors import SuiteError
from intprog.nonlinear import check_per_octave

# AdaRound's rectified sigmoid stretch (Nagel et al. 2020).
ZETA, GAMMA = 1.1, -0.1
# Candidate clipping ranges searched by MSE at calibration: quantiles of the data, and the min/max
# range shrunk by a factor. RepQ-ViT searches {0.999, 0.9999, 0.99999}; the shrink factors let
# low-bit weights trade clipping for resolution.
_QUANTILES = (0.99, 0.999, 0.9999, 0.99999, 1.0)
_SHRINK = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_MAX_SEARCH = 1 << 22  # elements per channel group kept for the quantile search


def check_bits(bits: int, what: str = "bits") -> int:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise SuiteError(f"{what}={bits!r} is outside the supported 2..8 bits; pick e.g. 3, 4 or 8")
    return bits


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() in the forward pass, identity in the backward pass."""
    return (x.round() - x).detach() + x


def _channel_view(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """x as [channels, everything else] (one row when per-tensor)."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _lsq_grad_scale(s: torch.Tensor, n: int, qmax: int) -> torch.Tensor:
    """LSQ's gradient scaling 1/sqrt(n*qmax) keeps step-size updates in proportion to the weights'."""
    g = 1.0 / math.sqrt(max(n, 1) * max(qmax, 1))
    return (s - s * g).detach() + s * g


class UniformQuantizer(nn.Module):
    """Uniform affine quantizer, per tensor or per channel (`axis`), symmetric or asymmetric.

    x_int = clamp(round(x / s) + z, qmin, qmax); x_hat = (x_int - z) * s. The step size s is a
    parameter (LSQ); the zero point z is an integer buffer fixed at calibration.

    Class-token clipping (`token_axis` set, `token0_min`/`token0_max` calibrated): token 0 along
    `token_axis` is clamped to its own code bounds on the same grid (per last-axis channel, or one
    pair) instead of [qmin, qmax], the other tokens as usual (QuantConfig.cls_clip).
    """

    def __init__(self, bits: int, symmetric: bool = False, axis: int | None = None, signed: bool | None = None):
        super().__init__()
        self.bits = check_bits(bits)
        self.symmetric = symmetric
        self.axis = axis
        signed = symmetric if signed is None else signed
        self.qmin = -(1 << (bits - 1)) if signed else 0
        self.qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))
        self.register_buffer("calibrated", torch.tensor(False))
        self.enabled = True
        self.drop_prob = 0.0
        self.token_axis: int | None = None
        self.register_buffer("token0_min", torch.zeros(0))
        self.register_buffer("token0_max", torch.zeros(0))

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"bits={self.bits}, {kind}, axis={self.axis}"

    @property
    def clips_token0(self) -> bool:
        return self.token_axis is not None and self.token0_min.numel() > 0

    def _clamp(self, codes: torch.Tensor) -> torch.Tensor:
        """codes clamped to [qmin, qmax], token 0 to its own bounds where it has them."""
        if not self.clips_token0:
            return torch.clamp(codes, self.qmin, self.qmax)
        ax, n = self.token_axis, codes.shape[self.token_axis]
        first = torch.clamp(codes.narrow(ax, 0, 1), self.token0_min, self.token0_max)
        return torch.cat([first, torch.clamp(codes.narrow(ax, 1, n - 1), self.qmin, self.qmax)], ax)

    def _shape(self, x: torch.Tensor) -> list[int]:
        if self.axis is None:
            return [1] * x.dim()
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return shape

    def params_for(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step size and zero point that map [lo, hi] (per row) onto the integer grid."""
        if self.symmetric:
            bound = torch.maximum(lo.abs(), hi.abs()).clamp(min=1e-8)
            return bound / self.qmax, torch.zeros_like(bound)
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        s = ((hi - lo) / (self.qmax - self.qmin)).clamp(min=1e-8)
        return s, (self.qmin - torch.round(lo / s)).clamp(self.qmin, self.qmax)

    def _fake(self, rows: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(torch.round(rows / s) + z, self.qmin, self.qmax) - z) * s

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, rule: str = "mse") -> None:
        """Choose the range per channel: by minimizing the quantization MSE over candidates
        ("mse"), or the whole min..max ("minmax": nothing clipped; at 8 bits the rare large
        activations the MSE search clips are the ones that matter downstream)."""
        rows = _channel_view(x.detach().float(), self.axis)
        lo_all, hi_all = rows.min(dim=1).values, rows.max(dim=1).values  # of every element, not a sample
        if rule == "minmax":
            self.set_params(*self.params_for(lo_all, hi_all))
            return
        if rule != "mse":
            raise SuiteError(f"unknown range rule {rule!r}; use 'mse' or 'minmax'")
        if rows.shape[1] > _MAX_SEARCH:
            idx = torch.randperm(rows.shape[1], generator=torch.Generator().manual_seed(0))[:_MAX_SEARCH]
            rows = rows[:, idx]
        candidates = [(lo_all * c, hi_all * c) for c in _SHRINK]
        qs = torch.tensor([1 - q for q in _QUANTILES] + list(_QUANTILES), device=rows.device)
        qv = torch.quantile(rows, qs, dim=1) if rows.shape[1] <= 1 << 24 else None
        if qv is not None:
            n = len(_QUANTILES)
            candidates += [(qv[i], qv[n + i]) for i in range(n)]
        best_err = torch.full_like(lo_all, float("inf"))
        best_s, best_z = self.params_for(lo_all, hi_all)
        for lo, hi in candidates:
            s, z = self.params_for(lo, hi)
            err = (self._fake(rows, s[:, None], z[:, None]) - rows).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        self.set_params(best_s, best_z)

    @torch.no_grad()
    def set_params(self, s: torch.Tensor, z: torch.Tensor) -> None:
        self.scale = nn.Parameter(s.reshape(-1).clone().to(self.scale.device))
        self.zero_point = z.reshape(-1).clone().to(self.scale.device)
        self.calibrated.fill_(True)

    def integer(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes of x (float tensor holding integers)."""
        s, z = self.scale.reshape(self._shape(x)), self.zero_point.reshape(self._shape(x))
        return self._clamp(torch.round(x / s) + z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not bool(self.calibrated):
            return x
        shape = self._shape(x)
        s = _lsq_grad_scale(self.scale, x.numel() // self.scale.numel(), self.qmax).reshape(shape)
        z = self.zero_point.reshape(shape)
        xq = (self._clamp(round_ste(x / s) + z) - z) * s
        if self.training and self.drop_prob > 0:
            return torch.where(torch.rand_like(x) < self.drop_prob, x, xq)
        return xq


class AdaRoundQuantizer(UniformQuantizer):
    """Weight quantizer with learnable rounding (AdaRound): each weight rounds down or up.

    While training, the rounding is the soft h(alpha) in [0, 1]; in eval mode (and once hardened)
    it is the hard decision alpha >= 0. Without `init_rounding()` it is round-to-nearest.
    """

    def __init__(self, bits: int, symmetric: bool = False, axis: int | None = 0):
        super().__init__(bits, symmetric, axis, signed=symmetric)
        self.alpha: nn.Parameter | None = None

    @torch.no_grad()
    def init_rounding(self, w: torch.Tensor) -> None:
        """Start alpha where the soft rounding equals the fractional part (= round-to-nearest's input)."""
        s = self.scale.reshape(self._shape(w))
        rest = (w / s - torch.floor(w / s)).clamp(0.01, 0.99)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def integer(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes of w with the learned rounding decision where there is one (what
        eval mode computes), so a program exported before `harden` matches the model."""
        if self.alpha is None:
            return super().integer(w)
        shape = self._shape(w)
        s, z = self.scale.reshape(shape), self.zero_point.reshape(shape)
        up = (self.alpha >= 0).reshape(w.shape).to(w.dtype)
        return torch.clamp(torch.floor(w / s) + up + z, self.qmin, self.qmax)

    def soft(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def regularizer(self, beta: float) -> torch.Tensor:
        """AdaRound's term pushing every soft rounding to 0 or 1 as beta anneals."""
        return (1 - (2 * self.soft() - 1).abs().pow(beta)).sum()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not bool(self.calibrated):
            return w
        if self.alpha is None:
            return super().forward(w)
        shape = self._shape(w)
        s, z = self.scale.reshape(shape), self.zero_point.reshape(shape)
        h = self.soft() if self.training else (self.alpha >= 0).to(w.dtype)
        return (torch.clamp(torch.floor(w / s) + h + z, self.qmin, self.qmax) - z) * s

    @torch.no_grad()
    def harden(self, w: torch.Tensor) -> torch.Tensor:
        """The hard-rounded float weight; callers store it and drop alpha."""
        was = self.training
        self.eval()
        out = self.forward(w)
        self.train(was)
        return out


class Log2Quantizer(nn.Module):
    """Power-of-two quantizer for post-softmax values in [0, 1]: x_hat = s * 2^-q, q in 0..2^b-1;
    with `per_octave` = P > 1, x_hat = s * 2^(-q/P) (P = 2: log-sqrt2, half-octave steps near 1).

    Values below the smallest level (q >= 2^b after rounding) become 0, as in RepQ-ViT. With s = 1
    attention x V reduces to shifts, which the integer program and the accelerator exploit.
    """

    def __init__(self, bits: int, per_octave: int = 1):
        super().__init__()
        check_per_octave(per_octave)
        self.per_octave = per_octave
        self.bits = check_bits(bits)
        self.levels = 1 << bits
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("calibrated", torch.tensor(True))
        self.enabled = True
        self.drop_prob = 0.0

    def extra_repr(self) -> str:
        kind = {1: "log2", 2: "log-sqrt2"}.get(self.per_octave, f"{self.per_octave} codes per octave")
        return f"bits={self.bits}, {kind}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        q = round_ste(-self.per_octave * torch.log2((x / self.scale).clamp(min=1e-30)))
        xq = torch.where(q < self.levels, self.scale * torch.pow(2.0, -q.clamp(min=0) / self.per_octave),
                         torch.zeros_like(x))
        if self.training and self.drop_prob > 0:
            return torch.where(torch.rand_like(x) < self.drop_prob, x, xq)
        return xq

    def calibrate(self, x: torch.Tensor) -> None:
        """Nothing to search: the scale stays 1, the largest possible softmax value."""
