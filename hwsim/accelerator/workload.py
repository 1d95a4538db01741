"""What each op of an integer program asks of the accelerator: GEMM shapes, unit work, value widths.

One description serves both halves of the simulator: the values (execute.py) check operand widths
against it, the timing model (timing.py) turns it into cycles, traffic and energy. Widths come
from intprog's interval proof (`intprog.ops.value_ranges`, the one TVM's containers come from too),
so a width check holds for every input, not only the images seen; each op's unit comes from
intprog's op table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hwsim.accelerator.fixed import signed_bits
from intprog.ops import OPS
from intprog.program import Program


@dataclass
class Layer:
    """One unit of work for one image. GEMM: `count` products of [m, k] x [k, n] operands of
    `w_width` / `a_width` signed bits (weights stored at `w_bits`), outputs stored at `out_bits`;
    other units: `elements` processed in `passes` passes over the data."""

    name: str
    op: str
    unit: str
    m: int = 0
    k: int = 0
    n: int = 0
    count: int = 1
    w_width: int = 0
    w_bits: int = 0
    a_width: int = 0
    in_bits: int = 0
    out_bits: int = 0
    elements: int = 0
    passes: int = 1

    @property
    def macs(self) -> int:
        return self.count * self.m * self.k * self.n

    def to_dict(self) -> dict:
        return asdict(self)


def storage_bits(lo: int, hi: int) -> int:
    """Bits a value of range [lo, hi] is stored in (unsigned when it cannot be negative; at most int32)."""
    bits = max(1, int(hi).bit_length()) if lo >= 0 else signed_bits(lo, hi)
    return min(bits, 32)  # the program's widest values are int32 (its residual stream)


# Sums (attention x V, sum_tokens) leave the accumulators as 32-bit words, the width the requantize
# that follows reads, whatever interval the proof gives them (narrower for attention; for
# sum_tokens over int32 values, wider).
SUM_STORAGE_BITS = 32
_SUMS = ("attention", "sum_tokens")


def storage_widths(program: Program, ranges: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Bits each value is stored in: its proven interval's (`storage_bits`), except that sums are
    stored at SUM_STORAGE_BITS and layout ops keep at least their input's storage width."""
    name = program.input["name"]
    widths = {name: storage_bits(*ranges[name])}
    for op in program.ops:
        bits = storage_bits(*ranges[op["out"]])
        if op["op"] in _SUMS:
            bits = SUM_STORAGE_BITS
        elif OPS[op["op"]].unit == "layout":
            bits = max(bits, widths[op["in"][0]])
        widths[op["out"]] = bits
    return widths


def operand_width(lo: int, hi: int, zero_point: int | np.ndarray) -> int:
    """Signed bits of (x - zero_point) for x in [lo, hi]: what enters the multiplier."""
    zp = np.asarray(zero_point, dtype=np.int64)
    return signed_bits(int(lo - zp.max()), int(hi - zp.min()))


def describe(op: dict, program: Program, ranges: dict[str, tuple[int, int]], widths: dict[str, int],
             shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]) -> list[Layer]:
    """The accelerator work of `op` for one image, given the proven value ranges, the storage widths
    (`storage_widths`) and its input and output shapes (batch first)."""
    name, kind, a = op["out"], op["op"], op["attrs"]
    per_image = int(np.prod(out_shape[1:]))
    out_bits, in_bits = widths[name], widths[op["in"][0]]
    if kind == "linear":
        w = program.consts[op["consts"]["weight"]].astype(np.int64)
        w = w - program.consts[op["consts"]["weight_zp"]].astype(np.int64)[:, None]
        n, k = w.shape
        return [Layer(name, kind, "array", m=per_image // n, k=k, n=n,
                      w_width=signed_bits(int(w.min()), int(w.max())), w_bits=a["weight_bits"],
                      a_width=operand_width(*ranges[op["in"][0]], a["in_zp"]), in_bits=in_bits, out_bits=out_bits)]
    if kind == "attention":
        _, h, t, d = shapes[0]
        if a.get("window"):  # Swin: h x (t / w) independent windows of w tokens
            h, t = h * (t // a["window"]), a["window"]
        qk = [operand_width(*ranges[n], a[z]) for n, z in zip(op["in"], ("q_zp", "k_zp", "v_zp"), strict=True)]
        return [Layer(name + ".qk", kind, "array", m=t, k=d, n=t, count=h, w_width=qk[1], a_width=qk[0],
                      in_bits=in_bits, out_bits=SUM_STORAGE_BITS),
                Layer(name + ".softmax", kind, "softmax", elements=h * t * t, passes=3,
                      in_bits=SUM_STORAGE_BITS, out_bits=a["bits"]),
                Layer(name + ".av", kind, "shift_av", m=t, k=t, n=d, count=h, a_width=qk[2], w_bits=a["bits"],
                      elements=h * t * t * d, in_bits=widths[op["in"][2]],
                      out_bits=out_bits)]
    unit = OPS[kind].unit
    passes = 2 if kind == "layernorm" else 1  # statistics, then normalization
    return [Layer(name, kind, unit, elements=per_image if unit != "layout" else 0, passes=passes,
                  in_bits=in_bits, out_bits=out_bits)]
