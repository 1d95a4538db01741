"""The values: the integer program executed as the accelerator computes it, bit for bit.

GEMMs run tile by tile: the K dimension is cut into tiles of the array's depth (its rows), each
tile's partial sum is exact (the in-array adders are as wide as one tile needs), and the
accumulator (preloaded with the bias) adds one partial sum at a time in its configured width,
applying its overflow mode (AP_SAT / AP_WRAP) after every addition; each overflow is counted per
layer. Attention x V is done by the shift unit: V shifted left by (max_code - code) for each
log2 probability code and summed, `lanes` keys per step, in the same accumulator (log-sqrt2 codes:
an odd code's weight round(2^(max_code - code/2)) is a constant multiplication, which the model
counts as the same step: a second shift-and-add lane). Requantization
uses the configured ap_fixed rounding. Everything else (LayerNorm, softmax, lookup tables, adds,
layout) is the reference executor's own kernel: those units implement the program's kernels exactly.

Vectorized numpy over the whole batch; when the operands' magnitudes prove that no partial sum
can leave the accumulator's range, a GEMM is one exact matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwsim.accelerator.config import AccelConfig, ConfigError
from hwsim.accelerator.fixed import ap_requantize, overflow
from hwsim.accelerator.workload import Layer, describe, storage_widths
from intprog.arith import matmul_exact
from intprog.ops import value_ranges
from intprog.program import Program
from intprog.reference import KERNELS, attention, execute, linear_acc, linear_weights, token_bounds


@dataclass
class Trace:
    """Per-layer work (one image) and accumulator events (all images run so far)."""

    layers: list[Layer] = field(default_factory=list)
    overflows: dict[str, int] = field(default_factory=dict)  # accumulator additions that left the range
    updates: dict[str, int] = field(default_factory=dict)  # accumulator additions (incl. bias preload)
    images: int = 0

    def count(self, name: str, overflows: int, updates: int) -> None:
        self.overflows[name] = self.overflows.get(name, 0) + overflows
        self.updates[name] = self.updates.get(name, 0) + updates


def accumulate(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, depth: int, bits: int,
               mode: str) -> tuple[np.ndarray, int, int]:
    """a @ b (+ bias preloaded) summed `depth` products at a time in a `bits`-bit accumulator.

    Returns (result, overflow events, accumulator additions). Partial sums of one tile are exact;
    the overflow mode applies after the preload and after each tile's addition.
    """
    hi = (1 << (bits - 1)) - 1
    lo = -hi - 1
    k = a.shape[-1]
    tiles = -(-k // depth)
    start = np.zeros(1, np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    max_a, max_b = int(np.abs(a).max(initial=0)), int(np.abs(b).max(initial=0))
    if int(np.abs(start).max(initial=0)) + k * max_a * max_b <= hi:  # no partial sum can overflow
        out = matmul_exact(a, b) + start
        return out, 0, out.size * (tiles + (bias is not None))
    psums = [matmul_exact(a[..., s:s + depth], b[..., s:s + depth, :]) for s in range(0, k, depth)]
    total = np.broadcast_to(start, psums[0].shape).copy()
    bad = (total < lo) | (total > hi)
    for p in psums:
        total += p
        bad |= (total < lo) | (total > hi)
    updates = total.size * (tiles + (bias is not None))
    if not bad.any():
        return total, 0, updates
    where = np.nonzero(bad)
    acc = np.broadcast_to(start, total.shape)[where]
    events = 0
    for p in [None, *psums]:
        if p is not None:
            acc = acc + p[where]
        out_of_range = (acc < lo) | (acc > hi)
        events += int(out_of_range.sum())
        acc = overflow(acc, bits, mode)
    total[where] = acc
    return total, events, updates


class Accelerator:
    """Executes a program on a configured accelerator; `run` is a drop-in for the reference's run."""

    def __init__(self, program: Program, config: AccelConfig):
        self.program, self.config = program, config
        self.ranges = value_ranges(program)
        self.widths = storage_widths(program, self.ranges)
        self.trace = Trace()
        self._own = {"linear": self._linear, "attention": self._attention, "requantize": self._requantize}

    def _acc(self, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, depth: int, name: str) -> np.ndarray:
        out, events, updates = accumulate(a, b, bias, depth, self.config.acc_bits, self.config.overflow)
        self.trace.count(name, events, updates)
        return out

    def _requant(self, acc: np.ndarray, c: dict) -> np.ndarray:
        qmin, qmax = token_bounds(c, c["qmin"], c["qmax"], acc.shape)
        return ap_requantize(acc, c["multiplier"], c["shift"], c["out_zp"], qmin, qmax, self.config.rounding)

    def _linear(self, xs, attrs, c, name):
        """The array's GEMM in the configured accumulator; where no partial sum can leave it (the
        bound |bias| + K max|x - zp| max|W - W_zp|), the reference's exact product (`linear_acc`,
        its centered weights kept per constant), which sums to the same integers."""
        x, zp = xs[0], attrs["in_zp"]
        k, bias = x.shape[-1], c["bias"]
        w = linear_weights(c["weight"], c["weight_zp"])
        hi = (1 << (self.config.acc_bits - 1)) - 1
        mag_x = max(zp - int(x.min()), int(x.max()) - zp, 0) if x.size else 0
        mag_bias = int(np.abs(bias).max(initial=0)) if bias is not None else 0
        if mag_bias + k * mag_x * w["max"] <= hi:
            acc = linear_acc(x, zp, c)
            self.trace.count(name, 0, acc.size * (-(-k // self.config.rows) + (bias is not None)))
        else:
            acc = self._acc((x - zp).reshape(-1, k), w["int64"].T, bias, self.config.rows, name)
            acc = acc.reshape(*x.shape[:-1], -1)
        return self._requant(acc, c)

    def _requantize(self, xs, attrs, c, name):
        return self._requant(xs[0], c)

    def _attention(self, xs, attrs, c, name):
        """Q K^T on the array, the softmax unit's log2 codes, then V shifted by the codes and summed
        in the shift unit (intprog.reference.attention with this hardware's two products)."""
        return attention(xs, attrs, c,
                         qk=lambda a, b: self._acc(a, b, None, self.config.rows, name + ".qk"),
                         av=lambda a, b: self._acc(a, b, None, self.config.units["shift_av"].lanes, name + ".av"))

    def check_operands(self) -> None:
        """ConfigError naming the first GEMM whose operands need more bits than the multipliers have."""
        cfg = self.config
        for layer in self.trace.layers:
            if layer.unit == "array" and (layer.w_width > cfg.weight_bits or layer.a_width > cfg.activation_bits):
                raise ConfigError(
                    f"{cfg.source}: layer {layer.name} multiplies {layer.a_width}-bit activations by "
                    f"{layer.w_width}-bit weights (after zero-point subtraction), but the array takes "
                    f"{cfg.activation_bits} x {cfg.weight_bits} bits; raise operands.activation_bits / weight_bits")

    def run(self, x: np.ndarray) -> np.ndarray:
        """Execute on input codes x [B, ...]; accumulates overflow counts in `self.trace`."""
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError("the accelerator takes integer input codes; quantize images first")
        first = not self.trace.layers

        def kernel(op: dict, ins: list[np.ndarray], consts: dict[str, np.ndarray]) -> np.ndarray:
            own = self._own.get(op["op"])
            out = own(ins, op["attrs"], consts, op["out"]) if own else KERNELS[op["op"]](ins, op["attrs"], consts)
            if first:
                shapes = [v.shape for v in ins]
                self.trace.layers += describe(op, self.program, self.ranges, self.widths, shapes, out.shape)
                self.check_operands()
            return out

        out = execute(self.program, x, kernel)
        self.trace.images += len(x)
        return out
