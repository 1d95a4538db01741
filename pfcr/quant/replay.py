"""The quantized model's eval forward is its own integer program: what PTQ evaluates is what deploys.

The fake-quant modules keep LayerNorm, softmax, GELU, the biases and the residual stream in float
where the program has integer kernels (intprog), so a float evaluation misses what the board
computes by sub-LSB differences that flip codes and cascade through the blocks: on the zoo at
W4A4, 3 % of top-1 decisions (no single kernel is to blame; aligning softmax, GELU, LayerNorm,
bias and rounding one by one in float still leaves 2.4 %). So in eval mode, once the program's
extra scales are fixed (`QuantModel.fix_scales`), the quantized model exports itself and runs
the program, unit by unit, with the reference executor: its logits, every unit's output and the
accuracy `quantize` reports are the program's, to the bit. Reconstruction takes its inputs at
every granule boundary from this forward, and trains through the float path (gradients only).

The float path stays the independent check of the export: `pfcr export`'s fidelity guard compares
the program with it (`QuantModel.float_path()`), since a program compared with itself proves
nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from intprog import reference
from intprog.program import Program


class Replay:
    """A program cut at its units' outputs (`program.units`): segment k runs unit k. `shapes[k]`
    is unit k's output shape in the float model without the batch (Swin's stream is [H, W, C]
    where the program's is [H * W, C], in the same token order)."""

    def __init__(self, program: Program, shapes: list[tuple[int, ...]]):
        self.program, self.scale, self.shapes = program, program.meta["residual_scale"], shapes
        cuts = [*program.units, program.output["name"]]
        where = {op["out"]: i for i, op in enumerate(program.ops)}
        self.segments: list[Program] = []
        start, source = 0, program.input["name"]
        for name in cuts:
            end = where[name] + 1
            self.segments.append(Program(input={"name": source}, output={"name": name},
                                         ops=program.ops[start:end], consts=program.consts))
            start, source = end, name

    def run(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Unit k on a float input (the image for k = 0, else the residual stream), as float."""
        if k == 0:
            codes = self.program.input_codes(x.detach().cpu())
        else:
            # A stream this class produced is codes * scale in float32: exact below 2^23 codes
            # (8x the calibration maximum, which maps to 2^20).
            codes = np.round(x.detach().cpu().double().numpy() / self.scale).astype(np.int64)
            codes = codes.reshape(len(codes), -1, codes.shape[-1])
        out = reference.execute(self.segments[k], codes).reshape(len(x), *self.shapes[k])
        last = k == len(self.segments) - 1
        scale = self.program.output["scale"] if last else self.scale
        return torch.from_numpy(out.astype(np.float64) * scale).to(x.device, torch.float32)
