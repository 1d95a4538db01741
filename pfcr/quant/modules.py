"""Quantized building blocks: Linear, Conv2d, MatMul, timm's ViT and Swin attention, and the
online Hadamard rotation of an MLP's fc1 input (RotatedLinear).

Every matrix multiplication quantizes both inputs: weights per output channel (AdaRound-capable),
activations per tensor, or per channel for post-LayerNorm inputs until they are reparameterized
into the LayerNorm. LayerNorm, softmax and GELU stay float (the fake-quant protocol of the PTQ
literature); the integer program replaces them with integer kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pfcr.quant.quantizers import AdaRoundQuantizer, Log2Quantizer, UniformQuantizer


class QuantLinear(nn.Module):
    """nn.Linear with a quantized input and per-output-channel quantized weight."""

    def __init__(self, linear: nn.Linear, w_bits: int, a_bits: int, input_channelwise: bool = False):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.w_quant = AdaRoundQuantizer(w_bits, axis=0)
        self.a_quant = UniformQuantizer(a_bits, axis=-1 if input_channelwise else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.a_quant(x), self.w_quant(self.weight), self.bias)


def rotation_block(n: int) -> int:
    """The Hadamard block of an n-wide rotation: the largest power of two dividing n, at most 128."""
    return min(n & -n, 128)


class Rotation(nn.Module):
    """x -> x Hᵀ / sqrt(b), H block-diagonal of b x b Sylvester Hadamard matrices of ±1: an
    orthonormal map whose integer form is a GEMM by ±1 codes (2-bit weights) and one scale, so the
    program computes it exactly. Its input (a LayerNorm's output) is quantized per tensor at
    `a_bits`; nothing here is trained but that step size."""

    def __init__(self, n: int, a_bits: int):
        super().__init__()
        from pfcr.quant.smooth import hadamard

        self.block = rotation_block(n)
        signs = torch.block_diag(*[hadamard(self.block) * math.sqrt(self.block)] * (n // self.block))
        self.register_buffer("signs", signs.round().to(torch.int8), persistent=False)
        self.a_quant = UniformQuantizer(a_bits)

    @property
    def weight_scale(self) -> float:
        return self.block ** -0.5

    def matrix(self) -> torch.Tensor:
        """The orthonormal matrix R (float64) with rotate(x) = x Rᵀ."""
        return self.signs.double() * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.a_quant(x), self.signs.to(x.dtype)) * self.weight_scale


class RotatedLinear(QuantLinear):
    """A QuantLinear reading its input through a Rotation: (x Rᵀ) W'ᵀ with the weight rotated once,
    W' = W Rᵀ, equals x Wᵀ in float (R orthonormal). Spreading each token's outlying
    channels over all the others (QuaRot's online Hadamard) lets one 4-bit grid fit the rotated
    input; `a_quant` quantizes it, `rotation.a_quant` the input before it."""

    def __init__(self, layer: QuantLinear, rotation_bits: int):
        nn.Module.__init__(self)
        self.rotation = Rotation(layer.in_features, rotation_bits)
        with torch.no_grad():
            rotated = layer.weight.double() @ self.rotation.matrix().T.to(layer.weight.device)
        self.weight = nn.Parameter(rotated.to(layer.weight.dtype))
        self.bias = layer.bias
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.w_quant = layer.w_quant
        # One scale for the rotated input: per channel, folded into the rotation as RepQ folds into
        # a LayerNorm, it cost the real ViT-S/14 at W4A4 0.008 (docs/real-model.md): the fold's
        # column scales land on fc1's 4-bit weights
        self.a_quant = UniformQuantizer(layer.a_quant.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.rotation(x))


class QuantConv2d(nn.Module):
    """The patch embedding's Conv2d with a quantized input (the image) and per-channel weights."""

    def __init__(self, conv: nn.Conv2d, w_bits: int, a_bits: int):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.w_quant = AdaRoundQuantizer(w_bits, axis=0)
        self.a_quant = UniformQuantizer(a_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.a_quant(x), self.w_quant(self.weight), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class QuantMatMul(nn.Module):
    """a @ b with both operands quantized (per tensor); `a_log2` for post-softmax probabilities."""

    def __init__(self, a_bits: int, b_bits: int, a_log2: bool = False, per_octave: int = 1):
        super().__init__()
        self.a_quant = Log2Quantizer(a_bits, per_octave) if a_log2 else UniformQuantizer(a_bits)
        self.b_quant = UniformQuantizer(b_bits)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a_quant(a) @ self.b_quant(b)


class QuantAttention(nn.Module):
    """Multi-head self-attention of timm's ViT and Swin with quantized q·kᵀ and attn·v.

    Swin's relative position bias and shifted-window mask are taken from the wrapped module.
    """

    def __init__(self, attn: nn.Module, w_bits: int, a_bits: int, attn_bits: int, channelwise_postln: bool,
                 log2_softmax: bool, per_octave: int = 1):
        super().__init__()
        self.num_heads = attn.num_heads
        self.scale = attn.scale
        self.qkv = QuantLinear(attn.qkv, w_bits, a_bits, input_channelwise=channelwise_postln)
        self.proj = QuantLinear(attn.proj, w_bits, a_bits)
        self.matmul_qk = QuantMatMul(a_bits, a_bits)
        self.matmul_av = QuantMatMul(attn_bits, a_bits, a_log2=log2_softmax, per_octave=per_octave)
        # Swin only: the bias table and its index live on the original module.
        self.rel_pos = attn if hasattr(attn, "_get_rel_pos_bias") else None
        if self.rel_pos is not None:
            self.rel_pos.qkv = self.rel_pos.proj = None  # owned here now

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.matmul_qk(q * self.scale, k.transpose(-2, -1))
        if self.rel_pos is not None:
            attn = attn + self.rel_pos._get_rel_pos_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(-1, nw, self.num_heads, n, n) + mask.view(1, nw, 1, n, n)).view(-1, self.num_heads, n, n)
        x = self.matmul_av(attn.softmax(dim=-1), v)
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))
