"""The op table and the interval proof: what every executor knows about each op kind, said once.

`OPS` gives per op kind its number of inputs, its constant roles (required and optional), the
accelerator unit that runs it, its output shape and its output interval as functions of its
inputs' (with its attributes and constants). Validation (program.py), the TVM lowering (each
value's container, each sum's accumulator dtype) and the accelerator model (each op's unit,
operand and storage widths) all read it, so the executors cannot disagree about a value's range,
and a new op kind is one entry here plus one kernel per executor.

The proof (`infer`, `value_ranges`) pushes intervals through the program from its input's
[qmin, qmax] and its constants (clamps, tables, sums of bounded terms): every value any input can
produce lies in its interval. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from intprog.program import Program

Interval = tuple[int, int]
Shape = tuple[int, ...]  # batch first
Consts = dict[str, np.ndarray]  # role -> constant, as an op's kernel sees them
# Token 0's own clamp bounds per output channel (class-token clipping, QuantConfig.cls_clip): the
# output's token 0 (axis -2) is clamped to [qmin0, qmax0] instead of [qmin, qmax]
TOKEN0 = ("qmin0", "qmax0")


@dataclass(frozen=True)
class OpSpec:
    """One op kind. `unit`: the accelerator unit that runs it ("array" ops are GEMMs, attention's
    softmax and x V also use the softmax and shift_av units; "layout" ops only generate addresses).
    `shape(input shapes, attrs, consts)` and `interval(input intervals, input shapes, attrs,
    consts)` give its output's shape and an interval holding every value it can produce."""

    inputs: int
    consts: tuple[str, ...]
    unit: str
    shape: Callable[[list[Shape], dict, Consts], Shape]
    interval: Callable[[list[Interval], list[Shape], dict, Consts], Interval]
    optional: tuple[str, ...] = ()


def span(x: np.ndarray) -> Interval:
    """[min, max] of a constant."""
    return int(np.min(x)), int(np.max(x))


def magnitude(r: Interval) -> int:
    """The largest |x| for x in r."""
    return max(abs(int(r[0])), abs(int(r[1])))


def dot_bound(k: int, a: Interval, b: Interval) -> int:
    """A bound on |every partial sum| of k products a_i b_i with a_i in a, b_i in b: what an
    exact GEMM's accumulator must hold."""
    return k * magnitude(a) * magnitude(b)


def _minus(r: Interval, zero_point: int) -> Interval:
    return r[0] - zero_point, r[1] - zero_point


def attention_bounds(ins: list[Interval], shapes: list[Shape], attrs: dict) -> tuple[int, int]:
    """Bounds on attention's two products: |q·k| over the head dimension (before any bias), and
    |every partial sum of Σ_j 2^(L - code_j) (v_j - zv)| over the keys of a row (each weight is
    in [0, 2^L], L = max_code)."""
    q, k, v = (_minus(r, attrs[z]) for r, z in zip(ins, ("q_zp", "k_zp", "v_zp"), strict=True))
    keys = attrs.get("window") or shapes[1][-2]
    return dot_bound(shapes[0][-1], q, k), dot_bound(keys, (0, 1 << attrs["max_code"]), v)


def _attention(ins: list[Interval], shapes: list[Shape], a: dict, c: Consts) -> Interval:
    keys = a.get("window") or shapes[1][-2]
    lo, hi = _minus(ins[2], a["v_zp"])
    scale = keys << a["max_code"]  # nonnegative weights summing to at most keys * 2^L
    return scale * min(lo, 0), scale * max(hi, 0)


def _same(ins: list[Interval], shapes: list[Shape], a: dict, c: Consts) -> Interval:
    return ins[0]


def _with_token0(lo: int, hi: int, c: Consts) -> Interval:
    """A clamp's [lo, hi], widened by token 0's own bounds where the op has them (`qmin0`, `qmax0`)."""
    if "qmin0" in c:
        lo, hi = min(lo, span(c["qmin0"])[0]), max(hi, span(c["qmax0"])[1])
    return lo, hi


def _clamped(ins: list[Interval], shapes: list[Shape], a: dict, c: Consts) -> Interval:
    return _with_token0(span(c["qmin"])[0], span(c["qmax"])[1], c)


def _patchify_shape(s: list[Shape], a: dict, c: Consts) -> Shape:
    (b, ch, h, w), p = s[0], a["patch"]
    return b, (h // p) * (w // p), ch * p * p


def _split_heads_shape(s: list[Shape], a: dict, c: Consts) -> Shape:
    b, n, _ = s[0]
    return b, a["heads"], n, a["dim"] // a["heads"]


def _merge_heads_shape(s: list[Shape], a: dict, c: Consts) -> Shape:
    b, h, n, d = s[0]
    return b, n, h * d


def _same_shape(s: list[Shape], a: dict, c: Consts) -> Shape:
    return s[0]


def _drop_tokens(s: list[Shape], a: dict, c: Consts) -> Shape:
    return s[0][0], s[0][2]


_REQUANT = ("multiplier", "shift", "out_zp", "qmin", "qmax")

OPS: dict[str, OpSpec] = {
    "patchify": OpSpec(1, (), "layout", _patchify_shape, _same),
    "linear": OpSpec(1, ("weight", "weight_zp", "bias", *_REQUANT), "array",
                     lambda s, a, c: (*s[0][:-1], c["weight"].shape[0]), _clamped, optional=TOKEN0),
    "prepend": OpSpec(1, ("token",), "layout", lambda s, a, c: (s[0][0], s[0][1] + 1, s[0][2]),
                      lambda r, s, a, c: (min(r[0][0], span(c["token"])[0]), max(r[0][1], span(c["token"])[1]))),
    "add_const": OpSpec(1, ("value",), "vector", _same_shape,
                        lambda r, s, a, c: (r[0][0] + span(c["value"])[0], r[0][1] + span(c["value"])[1])),
    "add": OpSpec(2, (), "vector", _same_shape, lambda r, s, a, c: (r[0][0] + r[1][0], r[0][1] + r[1][1])),
    "layernorm": OpSpec(1, ("multiplier", "shift", "sign", "beta_fixed"), "layernorm", _same_shape,
                        lambda r, s, a, c: _with_token0(a["qmin"], a["qmax"], c), optional=TOKEN0),
    "split_heads": OpSpec(1, (), "layout", _split_heads_shape, _same),
    "attention": OpSpec(3, (), "array", _same_shape, _attention, optional=("bias", "mask")),
    "merge_heads": OpSpec(1, (), "layout", _merge_heads_shape, _same),
    "requantize": OpSpec(1, _REQUANT, "vector", _same_shape, _clamped),
    "lut": OpSpec(1, ("table",), "lut", _same_shape, lambda r, s, a, c: span(c["table"])),
    "take_token": OpSpec(1, (), "layout", _drop_tokens, _same),
    "gather_tokens": OpSpec(1, ("index",), "layout",
                            lambda s, a, c: (s[0][0], c["index"].shape[0], c["index"].shape[1] * s[0][2]), _same),
    "sum_tokens": OpSpec(1, (), "vector", _drop_tokens, lambda r, s, a, c: (s[0][1] * r[0][0], s[0][1] * r[0][1])),
}


def infer(inputs: dict[str, tuple[Shape, Interval]], ops: list[dict], consts: dict[str, np.ndarray]
          ) -> tuple[dict[str, Shape], dict[str, Interval]]:
    """Every value's shape and proven interval, from the graph inputs' (name -> (shape, interval))
    through `ops` (the program format's op dicts) with the program's constants."""
    shapes = {name: tuple(int(d) for d in shape) for name, (shape, _) in inputs.items()}
    ranges = {name: (int(lo), int(hi)) for name, (_, (lo, hi)) in inputs.items()}
    for op in ops:
        spec, attrs = OPS[op["op"]], op["attrs"]
        roles = {role: consts[key] for role, key in op["consts"].items()}
        in_shapes, in_ranges = [shapes[n] for n in op["in"]], [ranges[n] for n in op["in"]]
        shapes[op["out"]] = tuple(int(d) for d in spec.shape(in_shapes, attrs, roles))
        lo, hi = spec.interval(in_ranges, in_shapes, attrs, roles)
        ranges[op["out"]] = int(lo), int(hi)
    return shapes, ranges


def value_ranges(program: Program) -> dict[str, Interval]:
    """The proven interval [lo, hi] of every value of `program`, for every input in [qmin, qmax]."""
    spec = program.input
    inputs = {spec["name"]: ((1, *spec["shape"]), (spec["qmin"], spec["qmax"]))}
    return infer(inputs, program.ops, program.consts)[1]
