"""A timm ViT/DeiT/Swin with fake quantizers in place, split into reconstruction units.

Placement (configurable in QuantConfig, defaults after RepQ-ViT / I&S-ViT):
- weights of every Linear and of the patch-embedding conv, per output channel, at `w_bits`
  (`first_last_w_bits` overrides the patch embedding and the head);
- inputs of every matmul at `a_bits`: qkv, q and k, v, proj, fc1, fc2, head, Swin's reduction;
  the image entering the patch embedding at `input_bits` (8: it is an 8-bit image anyway);
- post-softmax probabilities with a log2 quantizer at `attn_bits`;
- post-LayerNorm inputs (qkv, fc1, reduction) channel-wise, later folded into the LayerNorm
  (`reparameterize`, RepQ-ViT's algebra) so that the deployed model has per-tensor activations.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from core.errors import ModelError
from pfcr.quant.modules import QuantAttention, QuantConv2d, QuantLinear
from pfcr.quant.quantizers import AdaRoundQuantizer, Log2Quantizer, UniformQuantizer, check_bits


@dataclass(frozen=True)
class QuantConfig:
    w_bits: int = 4
    a_bits: int = 4
    attn_bits: int | None = None  # post-softmax bits; None = a_bits
    input_bits: int = 8  # the image entering the patch embedding
    first_last_w_bits: int | None = None  # patch-embed and head weights; None = w_bits
    channelwise_postln: bool = True
    log2_softmax: bool = True

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits", "input_bits"):
            check_bits(getattr(self, name), name)
        for name in ("attn_bits", "first_last_w_bits"):
            if getattr(self, name) is not None:
                check_bits(getattr(self, name), name)

    @property
    def softmax_bits(self) -> int:
        return self.attn_bits or self.a_bits

    @property
    def edge_w_bits(self) -> int:
        return self.first_last_w_bits or self.w_bits

    def to_dict(self) -> dict:
        return asdict(self)


def family(model: nn.Module) -> str:
    """'vit' for timm VisionTransformer (ViT, DeiT), 'swin' for SwinTransformer; else an error."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        if model.reg_token is not None or not isinstance(model.head, (nn.Linear, QuantLinear)):
            raise ModelError("ViTs with register tokens or non-linear heads are not supported yet")
        return "vit"
    if isinstance(model, SwinTransformer):
        return "swin"
    raise ModelError(
        f"{type(model).__name__} is not supported: quantization handles timm VisionTransformer "
        "(ViT, DeiT) and SwinTransformer models"
    )


class Unit(nn.Module):
    """The finest reconstruction unit: a function of the residual stream, run in model order.

    `block` is (stage, block index) for grouping into coarser granules; None for stem and tail.
    `owned` are the model's modules whose quantizers this unit trains.
    """

    def __init__(self, kind: str, block: tuple[int, int] | None, target: nn.Module, owned: list[nn.Module]):
        super().__init__()
        self.kind, self.block = kind, block
        self.target = [target]  # a list hides it from nn.Module registration (no duplicate params)
        self._owned = owned

    def owned(self) -> list[nn.Module]:
        return self._owned


class VitStem(Unit):
    def __init__(self, m: nn.Module):
        super().__init__("stem", None, m, [m.patch_embed])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.target[0]
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


class SwinStem(VitStem):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target[0].patch_embed(x)


class Tail(Unit):
    """Final norm and classifier head (pooling included)."""

    def __init__(self, m: nn.Module, head: nn.Module):
        super().__init__("tail", None, m, [head])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target[0].forward_head(self.target[0].norm(x))


class AttnUnit(Unit):
    """MHSA with its shortcut: x + attn(norm1(x)) (Swin: windowed, shifted)."""

    def __init__(self, blk: nn.Module, block: tuple[int, int], swin: bool):
        super().__init__("attn", block, blk, [blk.attn])
        self.swin = swin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.target[0]
        if self.swin:
            return x + b.drop_path1(b._attn(b.norm1(x)))
        return x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))


class MlpUnit(Unit):
    """MLP with its shortcut: x + mlp(norm2(x))."""

    def __init__(self, blk: nn.Module, block: tuple[int, int]):
        super().__init__("mlp", block, blk, [blk.mlp])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.target[0]
        return x + b.drop_path2(getattr(b, "ls2", nn.Identity())(b.mlp(b.norm2(x))))


class MergeUnit(Unit):
    """Swin's patch merging at the start of a stage; grouped with that stage's first block."""

    def __init__(self, merging: nn.Module, stage: int):
        super().__init__("merge", (stage, 0), merging, [merging])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target[0](x)


def _swap_linears(module: nn.Module, cfg: QuantConfig, channelwise: set[str]) -> None:
    """Replace every nn.Linear below `module` (not inside attention) by a QuantLinear."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, QuantLinear(child, cfg.w_bits, cfg.a_bits, name in channelwise))
        elif not isinstance(child, QuantAttention):
            _swap_linears(child, cfg, channelwise)


def blocks_of(m: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a timm ViT/DeiT, or of every Swin stage, in order."""
    return [blk for stage in m.layers for blk in stage.blocks] if family(m) == "swin" else list(m.blocks)


def build_units(m: nn.Module) -> nn.ModuleList:
    """The units of a timm ViT/Swin (float or quantized), in the order the model runs them.

    Chaining them equals the model's forward; the float model's units give the targets.
    """
    swin = family(m) == "swin"
    units: list[Unit] = [SwinStem(m) if swin else VitStem(m)]
    if swin:
        for si, stage in enumerate(m.layers):
            if not isinstance(stage.downsample, nn.Identity):
                units.append(MergeUnit(stage.downsample, si))
            for bi, blk in enumerate(stage.blocks):
                units += [AttnUnit(blk, (si, bi), True), MlpUnit(blk, (si, bi))]
    else:
        for bi, blk in enumerate(m.blocks):
            units += [AttnUnit(blk, (0, bi), False), MlpUnit(blk, (0, bi))]
    units.append(Tail(m, m.head.fc if swin else m.head))
    return nn.ModuleList(units)


class QuantModel(nn.Module):
    """A fake-quantized copy of a timm model. The float model given is left untouched."""

    def __init__(self, fp_model: nn.Module, cfg: QuantConfig):
        super().__init__()
        self.family = family(fp_model)
        self.cfg = cfg
        self.model = copy.deepcopy(fp_model).eval()
        m, swin = self.model, self.family == "swin"
        blocks = blocks_of(m)
        cw = cfg.channelwise_postln
        for blk in blocks:
            blk.attn = QuantAttention(blk.attn, cfg.w_bits, cfg.a_bits, cfg.softmax_bits, cw, cfg.log2_softmax)
        _swap_linears(m, cfg, {"fc1", "reduction"} if cw else set())
        m.patch_embed.proj = QuantConv2d(m.patch_embed.proj, cfg.edge_w_bits, cfg.input_bits)
        (m.head.fc if swin else m.head).w_quant = AdaRoundQuantizer(cfg.edge_w_bits, axis=0)
        self.units = build_units(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def quantizers(self) -> Iterator[tuple[str, nn.Module]]:
        for name, mod in self.model.named_modules():
            if isinstance(mod, (UniformQuantizer, Log2Quantizer)):
                yield name, mod

    def weight_layers(self) -> Iterator[tuple[str, nn.Module]]:
        """Every layer with a weight quantizer (QuantLinear, QuantConv2d, the head)."""
        for name, mod in self.model.named_modules():
            if isinstance(getattr(mod, "w_quant", None), AdaRoundQuantizer):
                yield name, mod

    def set_quant(self, weights: bool | None = None, acts: bool | None = None) -> None:
        """Switch weight and/or activation quantization on or off."""
        for _, q in self.quantizers():
            is_weight = isinstance(q, AdaRoundQuantizer)
            flag = weights if is_weight else acts
            if flag is not None:
                q.enabled = flag

    def set_drop_prob(self, p: float) -> None:
        for _, q in self.quantizers():
            if not isinstance(q, AdaRoundQuantizer):
                q.drop_prob = p
