"""A timm model with fake quantizers in place, split into reconstruction units (see pfcr.families).

Placement (configurable in QuantConfig, defaults after RepQ-ViT / I&S-ViT):
- weights of every Linear and of the patch-embedding conv, per output channel, at `w_bits`
  (`first_last_w_bits` overrides the patch embedding and the head, `qkv_w_bits` the attentions'
  qkv, `w8_blocks` every linear of the blocks named);
- inputs of every matmul at `a_bits`: qkv, q (or `q_a_bits`) and k (or `k_a_bits`), v, proj (or `proj_a_bits`),
  fc1, fc2 (or `fc2_a_bits`), head, Swin's reduction;
  the image entering the patch embedding at `input_bits` (8: it is an 8-bit image anyway);
- post-softmax probabilities with a log2 quantizer at `attn_bits` (`softmax_codes` codes per octave);
- post-LayerNorm inputs (qkv, fc1, reduction) channel-wise, later folded into the LayerNorm
  (`reparameterize`, RepQ-ViT's algebra) so that the deployed model has per-tensor activations;
  with `fc1_rotation`, fc1 reads its LayerNorm through an online Hadamard rotation, both quantized
  per tensor.

In eval mode, once every quantizer is on and the program's extra scales are fixed (`fix_scales`),
the model runs its own integer program (pfcr.quant.replay; `integer_eval`); otherwise, and in
training, the float path of the modules above.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from core.errors import ModelError, SuiteError
from intprog.nonlinear import check_per_octave
from pfcr.families import family_of
from pfcr.quant.modules import QuantAttention, QuantConv2d, QuantLinear, RotatedLinear
from pfcr.quant.quantizers import AdaRoundQuantizer, Log2Quantizer, UniformQuantizer, check_bits

# Finer log post-softmax codes must still reach this many octaves below 1 (2^bits / codes per
# octave): a uniform row over 257 tokens sits 8 octaves down. Even 8 cost the real ViT-S/14 at W6A6
# (8-bit fc2 and proj inputs) 0.891 feature cosine against 0.988 with 4 codes per octave (15 octaves)
MIN_SOFTMAX_OCTAVES = 8


@dataclass(frozen=True)
class QuantConfig:
    w_bits: int = 4
    a_bits: int = 4
    attn_bits: int | None = None  # post-softmax bits; None = a_bits
    input_bits: int = 8  # the image entering the patch embedding
    first_last_w_bits: int | None = None  # patch-embed and head weights; None = w_bits
    # Mixed precision: bits of every MLP's fc2 input (the GELU output), the most sensitive
    # activations of the real ViT-S/14 at W4A4 (docs/real-model.md); None = a_bits. The program
    # carries them as that input's code range.
    fc2_a_bits: int | None = None
    # The same for every attention's proj input (the heads' merged output), the most sensitive
    # group at W6A6 with 8-bit fc2 inputs (ablation-rtn-w6a6-softmax-sqrt2-fc2-a8-seed0.json)
    proj_a_bits: int | None = None
    # The same for every attention's keys (q·kᵀ's second operand), the most sensitive activation
    # group of the real ViT-S/14 at W4A4 with 8-bit fc2 and proj inputs and class-token clipping
    # (rtn: only k quantized 0.977, all but k 0.879 against 0.845 with all; benchmarks/results/real/
    # sensitivity-*cls-clip*). The keys' codes are an int8 operand of the product either way
    k_a_bits: int | None = None
    # The queries too (q·kᵀ's first operand): with 8-bit keys, rotated fc1 inputs and GPTQ, the
    # queries are the next group of the real ViT-S/14 at W4A4 (switched off: 0.9557 against 0.9510,
    # benchmarks/results/real/ablation-rtn-w4a4-*-rot-fc1-gptq-seed0.json)
    q_a_bits: int | None = None
    # The weights' counterpart: bits of every attention's qkv weights, the most sensitive weight
    # group of the real ViT-S/14 at W4A4 in the same sensitivity run (only they quantized 0.958,
    # all but them 0.883). The program carries each linear's weight bits (its packed size); the
    # codes are an int8 operand either way
    qkv_w_bits: int | None = None
    # Mixed precision by depth: the blocks (indices from 0, counted across Swin's stages; its
    # patch-merging reductions are not blocks) whose every linear keeps 8-bit weights.
    # The real ViT-S/14's last block carries the largest LayerScale gammas (up to ~10) and, by far,
    # the largest reconstruction error (10^4 against block 0's 10), yet 8-bit weights there add only
    # 0.004 at W4A4 rtn (docs/real-model.md): its error is scale, not sensitivity
    w8_blocks: tuple[int, ...] = ()
    channelwise_postln: bool = True
    log2_softmax: bool = True
    # Codes per octave of the log post-softmax quantizer: 1 log2, 2 log-sqrt2 (half-octave steps
    # near 1), 4, 8, 16 finer (the range shrinks to 2^bits / P octaves): on the real ViT-S/14 at
    # W8A8 log2's steps near 1 cost most of the error (docs/real-model.md); the program's
    # attention takes any of them (codes_per_octave)
    softmax_codes: int = 1
    integer_eval: bool = True  # eval mode runs the integer program (pfcr.quant.replay)
    # How activation ranges are chosen: "mse" (clipping search), "minmax", or "auto": minmax at
    # 6 bits and more, mse below (real ViT-S/14 feature cosine with minmax: W8A8 0.985 -> 0.992,
    # W6A6 0.865 -> 0.959; at W4A4 minmax collapses it, 0.65 -> 0.23: benchmarks/results/real/,
    # the clip-minmax records)
    act_range: str = "auto"
    # SmoothQuant migration strength alpha for the exact outlier migration folded into the float
    # weights before quantization (pfcr.quant.smooth); None: off
    smooth: float | None = None
    # The GELU (fc1 output) codes of the integer program: "block", int8 over each block's own
    # calibrated min..max (asymmetric); "global", one symmetric int8 scale, max|fc1 output| / 127
    # over all blocks (the rule before; real ViT-S/14 W8A8, 16 softmax codes, seed 0: the program's
    # feature cosine 0.9947 global vs 0.9977 block, where the fc1 outputs of block 0 reach -22 and
    # those of blocks 3-10 stay within -10..5)
    gelu_range: str = "block"
    # Class-token clipping (ViT/DeiT with a class token): the quantizers of the LayerNorm outputs
    # and of q, k, v calibrate their ranges without token 0, and token 0 is clamped on the same
    # grid to the range an MSE search picks for it alone (per channel after the LayerNorms), its
    # codes within 256 of the others' (one int8 operand). On the real ViT-S/14 at W4A4 (rtn, float
    # path, 2 seeds) +0.06-0.07 feature cosine: clipping the class token's massive activations, not
    # resolving them, is what helps (docs/real-model.md). For 4-bit activations: at 6 and 8 bits
    # the 256-code window leaves token 0 little room (W8A8 rtn 0.998 -> 0.897)
    cls_clip: bool = False
    # Online Hadamard rotation of every MLP's fc1 input (QuaRot's, pfcr.quant.modules.RotatedLinear):
    # the LayerNorm's output is quantized at `rotation_bits` (per tensor), rotated by block-diagonal
    # ±1 Hadamard matrices (an integer GEMM of the program, 2-bit weights), then quantized at the
    # fc1 input's bits; fc1's weight is rotated once to compensate. On the real ViT-S/14 at W4A4 the
    # fc1 inputs are the costliest 4-bit activations (the ablation with GPTQ); extra work: one
    # n x n GEMM per block before fc1's n x 4n
    fc1_rotation: bool = False
    rotation_bits: int = 8

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits", "input_bits", "rotation_bits"):
            check_bits(getattr(self, name), name)
        for name in ("attn_bits", "first_last_w_bits", "fc2_a_bits", "proj_a_bits", "q_a_bits", "k_a_bits",
                     "qkv_w_bits"):
            if getattr(self, name) is not None:
                check_bits(getattr(self, name), name)
        blocks = self.w8_blocks
        if not isinstance(blocks, tuple | list) or any(isinstance(b, bool) or not isinstance(b, int) or b < 0
                                                       for b in blocks):
            raise SuiteError(f"w8_blocks={blocks!r}: give a tuple of block indices, 0 for the first block")
        object.__setattr__(self, "w8_blocks", tuple(sorted(set(self.w8_blocks))))  # a list, read back from JSON
        try:
            check_per_octave(self.softmax_codes)
        except ValueError as err:
            raise SuiteError(f"softmax_codes={self.softmax_codes}: the log post-softmax quantizer's {err}") from None
        octaves = (1 << self.softmax_bits) // self.softmax_codes
        if self.softmax_codes > 1 and octaves < MIN_SOFTMAX_OCTAVES:
            raise SuiteError(f"softmax_codes={self.softmax_codes} at {self.softmax_bits}-bit post-softmax codes spans "
                             f"{octaves} octaves: every probability below 2^-{octaves} would be dropped; use at most "
                             f"{(1 << self.softmax_bits) // MIN_SOFTMAX_OCTAVES} codes per octave at "
                             f"{self.softmax_bits} bits, or more --attn-bits")
        if self.softmax_codes > 1 and not self.log2_softmax:
            raise SuiteError(f"softmax_codes={self.softmax_codes} is a logarithmic post-softmax quantizer; it cannot "
                             "go with a uniform one (log2_softmax=False, --uniform-softmax)")
        if self.act_range not in ("auto", "mse", "minmax"):
            raise SuiteError(f"act_range={self.act_range!r}: use 'auto', 'mse' or 'minmax'")
        if self.gelu_range not in ("block", "global"):
            raise SuiteError(f"gelu_range={self.gelu_range!r}: use 'block' or 'global'")
        if self.smooth is not None and not 0 < self.smooth < 1:
            raise SuiteError(f"smooth={self.smooth}: the migration strength alpha must lie strictly between 0 "
                             "and 1 (0.5 is SmoothQuant's)")

    def range_rule(self, bits: int) -> str:
        """The activation range rule for a quantizer of `bits`."""
        if self.act_range != "auto":
            return self.act_range
        return "minmax" if bits >= 6 else "mse"

    @property
    def softmax_bits(self) -> int:
        return self.attn_bits or self.a_bits

    @property
    def edge_w_bits(self) -> int:
        return self.first_last_w_bits or self.w_bits

    def to_dict(self) -> dict:
        return asdict(self)


def _swap_linears(module: nn.Module, cfg: QuantConfig, channelwise: set[int]) -> None:
    """Replace every nn.Linear below `module` (not inside attention) by a QuantLinear; those whose
    id is in `channelwise` quantize their inputs per channel."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, QuantLinear(child, cfg.w_bits, cfg.a_bits, id(child) in channelwise))
        elif not isinstance(child, QuantAttention):
            _swap_linears(child, cfg, channelwise)


def build_units(m: nn.Module) -> nn.ModuleList:
    """The units of a timm model (float or quantized), in the order the model runs them.

    Chaining them equals the model's forward; the float model's units give the targets.
    """
    return nn.ModuleList(family_of(m).units(m))


class QuantModel(nn.Module):
    """A fake-quantized copy of a timm model. The float model given is left untouched."""

    def __init__(self, fp_model: nn.Module, cfg: QuantConfig):
        super().__init__()
        self.family = family_of(fp_model)
        self.cfg = cfg
        self.model = m = copy.deepcopy(fp_model).eval()
        self.family.prepare(m)
        cw = cfg.channelwise_postln
        for blk in self.family.blocks(m):
            blk.attn = QuantAttention(blk.attn, cfg.w_bits, cfg.a_bits, cfg.softmax_bits, cw, cfg.log2_softmax,
                                      cfg.softmax_codes)
        # QuantAttention quantizes qkv's input; the other Linears reading a LayerNorm are swapped here
        postln = {id(linear) for _, linear in self.family.postln_pairs(m)} if cw else set()
        _swap_linears(m, cfg, postln)
        for blk in self.family.blocks(m) if cfg.fc1_rotation else ():
            blk.mlp.fc1 = RotatedLinear(blk.mlp.fc1, cfg.rotation_bits)
        for blk in self.family.blocks(m):  # mixed precision: wider inputs for the sensitive Linears
            if cfg.fc2_a_bits is not None:
                blk.mlp.fc2.a_quant = UniformQuantizer(cfg.fc2_a_bits)
            if cfg.proj_a_bits is not None:
                blk.attn.proj.a_quant = UniformQuantizer(cfg.proj_a_bits)
            if cfg.q_a_bits is not None:
                blk.attn.matmul_qk.a_quant = UniformQuantizer(cfg.q_a_bits)
            if cfg.k_a_bits is not None:
                blk.attn.matmul_qk.b_quant = UniformQuantizer(cfg.k_a_bits)
            if cfg.qkv_w_bits is not None:
                blk.attn.qkv.w_quant = AdaRoundQuantizer(cfg.qkv_w_bits, axis=0)
        blocks = self.family.blocks(m)
        if cfg.w8_blocks and cfg.w8_blocks[-1] >= len(blocks):
            raise SuiteError(f"w8_blocks={list(cfg.w8_blocks)}: the model has blocks 0..{len(blocks) - 1}")
        for b in cfg.w8_blocks:
            for layer in blocks[b].modules():
                if isinstance(layer, QuantLinear):
                    layer.w_quant = AdaRoundQuantizer(8, axis=0)
        if cfg.cls_clip:
            for q, axis in self.family.class_token_quantizers(m):
                q.token_axis = axis
        m.patch_embed.proj = QuantConv2d(m.patch_embed.proj, cfg.edge_w_bits, cfg.input_bits)
        self.family.head(m).w_quant = AdaRoundQuantizer(cfg.edge_w_bits, axis=0)
        self.units = nn.ModuleList(self.family.units(m))
        # The program's extra scales (pfcr.export._Scales.FIELDS) and input shape [C, H, W];
        # zeros until `fix_scales`.
        self.register_buffer("program_scales", torch.zeros(5, dtype=torch.float64))
        self.register_buffer("program_input", torch.zeros(3, dtype=torch.int64))
        # Each block's fc1 output min and max (cfg.gelu_range "block"; zeros with "global").
        self.register_buffer("program_fc1_ranges", torch.zeros(len(self.family.blocks(m)), 2, dtype=torch.float64))
        self._float_only = False
        self._replay: tuple[tuple, object] | None = None  # (state key, Replay or the export's refusal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_units(x, 0, len(self.units))

    def run_units(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Units start..end-1 on x: the integer program's segments when `replay()` has one."""
        replay = self.replay()
        for k in range(start, end):
            x = replay.run(k, x) if replay is not None else self.units[k](x)
        return x

    @contextlib.contextmanager
    def float_path(self) -> Iterator[None]:
        """Evaluate with the float fake-quant modules (the fidelity guard's independent side)."""
        was, self._float_only = self._float_only, True
        try:
            yield
        finally:
            self._float_only = was

    @torch.no_grad()
    def fix_scales(self, images: torch.Tensor) -> None:
        """Measure the program's extra scales on calibration images and keep them (and the input
        shape), so that the eval forward, `export_program` and the saved model all use these."""
        from pfcr.export import _Scales

        was = self.training
        self.eval()
        with self.float_path():
            s = _Scales.measure(self, images)
        self.train(was)
        self.program_scales.copy_(torch.tensor(s.values(), dtype=torch.float64))
        self.program_input.copy_(torch.tensor(list(images.shape[1:])))
        self.program_fc1_ranges.zero_()
        if s.fc1 is not None:
            ranges = [s.fc1[id(blk)] for blk in self.family.blocks(self.model)]
            self.program_fc1_ranges.copy_(torch.tensor(ranges, dtype=torch.float64).reshape(-1, 2))

    def fixed_scales(self):
        """(pfcr.export._Scales, input shape) as fixed by `fix_scales`, or None."""
        from pfcr.export import _Scales

        if not bool(self.program_scales.all()):
            return None
        fc1 = None
        if self.cfg.gelu_range == "block":
            fc1 = {id(blk): tuple(r) for blk, r in zip(self.family.blocks(self.model),
                                                       self.program_fc1_ranges.tolist(), strict=True)}
        return _Scales(*self.program_scales.tolist(), fc1=fc1), self.program_input.tolist()

    @torch.no_grad()
    def _unit_shapes(self) -> list[tuple[int, ...]]:
        """Each unit's output shape without the batch, from the float path on one blank image."""
        x = torch.zeros(1, *self.program_input.tolist(), device=self.program_scales.device)
        shapes = []
        for unit in self.units:
            x = unit(x)
            shapes.append(tuple(x.shape[1:]))
        return shapes

    def _state_key(self) -> tuple:
        """What the program depends on. The sums catch edits through `.data`, which bump no
        version counter."""
        tensors = tuple((k, v.data_ptr(), v._version, float(v.detach().double().sum()))
                        for k, v in self.state_dict(keep_vars=True).items())
        flags = tuple((q.enabled, getattr(q, "axis", None)) for _, q in self.quantizers())
        return tensors, flags

    def replay(self):
        """The integer program of the model's current state, cut into units (re-exported after
        any change), or None where the eval forward is the float path: in training, without fixed
        scales, with a quantizer off or not yet calibrated or per channel, or where the export
        refuses the model (warned once)."""
        from pfcr.export import export_program
        from pfcr.quant.replay import Replay

        if self.training or self._float_only or not self.cfg.integer_eval or self.fixed_scales() is None:
            return None
        for _, q in self.quantizers():
            if not q.enabled or not bool(q.calibrated) or getattr(q, "axis", None) not in (None, 0):
                return None
        key = self._state_key()
        if self._replay is None or self._replay[0] != key:
            try:
                program = export_program(self)
                made: object = Replay(program, self._unit_shapes())
            except ModelError as err:
                warnings.warn(f"the quantized model is evaluated with its float path: {err}", stacklevel=2)
                made = None
            self._replay = (key, made)
        return self._replay[1]

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
