"""The fidelity guard: does an exported integer program compute the quantized model it came from?

Every executor reproduces the program bit for bit, so a program that is wrong (an option of the
model the export ignored) would pass every bit-exact check. `pfcr export` therefore runs the
program (reference executor) and the fake-quant model on a few calibration images, compares
their logits, and refuses the program below a threshold, naming where the two part: the residual
stream after each attention and MLP unit (program values `...stream_attn`, `...stream`, at the
program's residual scale) against the fake-quant model's unit outputs, in model order.

The model side is the quantized model's float path (`QuantModel.float_path`, the fake-quant
modules): its eval forward runs the exported program itself (pfcr.quant.replay), and a program
compared with itself proves nothing. The two are not equal even for a right program: the float
path keeps float LayerNorm, softmax, GELU and a float residual stream where the program has
integer kernels. On the zoo the mean logit cosine of a right program is 0.992 (ViT W3A3) to
0.9995 (Swin W8A8) in the export records of `python benchmarks/integer_accuracy.py`; on the real
ViT-S/14 at 224x224 it is 0.991 at W8A8 and 0.936 at W4A4, where sub-LSB differences cascade over
257 tokens (`python benchmarks/real_chain.py`); a program that drops a LayerScale or pools the
wrong token lands near 0 to 0.8. Hence `pfcr export --min-cosine`'s default, 0.9.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from core.evaluate import centred_cosine
from intprog import reference
from intprog.program import Program
from pfcr.quant.model import QuantModel


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return centred_cosine(torch.from_numpy(a), torch.from_numpy(b)).numpy()


@dataclass
class Fidelity:
    """Program vs fake-quant model on `images` calibration images."""

    images: int
    logit_cosine: float  # mean over images of the centred cosine of the dequantized logits
    logit_cosine_min: float
    top1_agreement: float
    divergence: str | None = None  # where the program first departs from the model, if it does

    def metrics(self) -> dict:
        return {f"fidelity_{k}": v for k, v in asdict(self).items()}


@torch.no_grad()
def measure(qm: QuantModel, program: Program, images: torch.Tensor, threshold: float) -> Fidelity:
    """Compare the program with the model; below `threshold`, locate the first unit that departs."""
    qm.eval()  # the units run their float modules: this never replays the program
    streams: list[np.ndarray] = []
    x = images
    for unit in qm.units[:-1]:
        x = unit(x)
        if unit.kind in ("attn", "mlp"):
            streams.append(x.reshape(len(images), -1).double().cpu().numpy())
    fake = qm.units[-1](x).double().cpu().numpy()
    adds = [op["out"] for op in program.ops if op["op"] == "add"]  # the residual adds, in model order
    seen: dict[str, np.ndarray] = {}
    out = reference.execute(program, program.input_codes(images.cpu()),
                            on_value=lambda name, v: seen.__setitem__(name, v) if name in adds else None)
    integer = out.astype(np.float64) * program.output["scale"]
    cos = _cosine(integer, fake)
    result = Fidelity(len(images), round(float(cos.mean()), 6), round(float(cos.min()), 6),
                      round(float((integer.argmax(1) == fake.argmax(1)).mean()), 6))
    if result.logit_cosine < threshold:
        result.divergence = _first_divergence(adds, seen, streams, program.meta["residual_scale"], threshold)
    return result


def _first_divergence(adds: list[str], seen: dict[str, np.ndarray], streams: list[np.ndarray], scale: float,
                      threshold: float) -> str:
    if len(adds) != len(streams):
        return f"the head or the stem (the program has {len(adds)} residual adds, the model {len(streams)} units)"
    for name, want in zip(adds, streams, strict=True):
        got = seen[name].reshape(len(want), -1).astype(np.float64) * scale
        cos = float(_cosine(got.reshape(1, -1), want.reshape(1, -1))[0])
        if cos < threshold:
            return f"op {name!r} (residual stream cosine {cos:.3f} with the quantized model's)"
    return f"the head (after op {adds[-1]!r} the residual streams agree)" if adds else "the head"
