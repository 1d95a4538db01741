"""Integer program -> Relax module of integer ops only, bit-exact with intprog.reference.

Each op kind of intprog.ops.OPS becomes one fused TE kernel (linear with its requantization,
requantize, layernorm, and attention as logits / log2 softmax / weighted sum) or Relax data-movement
ops (reshape, permute, slice, concat, take, add). No float and no float scale is used. The reference
computes in int64; here every value carries its interval from intprog's proof (`intprog.ops.infer`,
the one the accelerator model's widths come from too), which picks the narrowest container that
holds it, and the proof's product bounds (`dot_bound`, `attention_bounds`) pick the width of every
sum: int32 where the bound proves it exact, int64 otherwise. 3/4-bit values sit in int8/uint8
containers (TVM's int4 is broken in 0.27).

Linear layers are lowered as 8-bit GEMMs where possible: weights minus their zero points become
int8 constants, activations (at most 256 codes wide) are shifted to start at 0 (uint8: the operand
form of x86 VNNI) or, with `signed_activations`, to start at -128 (int8: ARM's sdot takes s8 x s8
only), and the shift and the input zero point are folded into the bias with the weight row sums.
Both are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax import op as R

from intprog.arith import Rounding
from intprog.nonlinear import (
    EXP_FRAC_BITS,
    LOG_FRAC_BITS,
    NORM_FRAC_BITS,
    IntSoftmaxLog2,
    _exp2_lookup,
    _exp2_table,
    code_weights,
)
from intprog.ops import TOKEN0, Interval, attention_bounds, dot_bound, infer, span
from intprog.program import Program

_I32 = 1 << 31
# containers in the order they are tried: the first that holds a value's interval is used
_CONTAINERS = (("uint8", 0, 255), ("int8", -128, 127), ("int16", -(1 << 15), (1 << 15) - 1),
               ("int32", -_I32, _I32 - 1), ("int64", -(1 << 63), (1 << 63) - 1))


def container(lo: int, hi: int) -> str:
    """The narrowest integer dtype holding every value in [lo, hi]."""
    for dtype, a, b in _CONTAINERS:
        if a <= lo and hi <= b:
            return dtype
    raise OverflowError(f"values in [{lo}, {hi}] exceed int64")


def acc_dtype(bound: int) -> str:
    """int32 when every partial sum is proven below 2^31 in magnitude, else int64."""
    return "int32" if bound < _I32 else "int64"


@dataclass(frozen=True)
class Lowered:
    """A lowered program: mod["main"](input codes) -> output integers, with their shapes and dtypes."""

    mod: tvm.IRModule
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str


@dataclass(frozen=True)
class Value:
    """A lowered tensor and the interval [lo, hi] that every one of its elements lies in (the proof's)."""

    expr: relax.Expr
    lo: int
    hi: int

    @property
    def dtype(self) -> str:
        return self.expr.ty.dtype

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.expr.ty.shape]

    @property
    def mag(self) -> int:
        return max(abs(self.lo), abs(self.hi))


def _c(value: np.ndarray | int, dtype: str = "int64") -> relax.Constant:
    return relax.const(np.asarray(value).astype(dtype), dtype)


def _i64(value: int) -> tirx.PrimExpr:
    return tirx.const(int(value), "int64")


# --- integer kernels on int64 TIR (intprog.arith / intprog.nonlinear) ---
# Iterative kernels (msb, isqrt, ilog2) are staged: one te.compute per step, so that no step's
# expression repeats the previous one (inlined Selects would grow exponentially, and TIR's
# simplifier substitutes let-bound values back).

MATERIALIZE = "intprog.materialize"  # block annotation: a step of an iterative kernel, never inline it


def stage(like: te.Tensor, fn: Callable[[tuple], tirx.PrimExpr], name: str, dtype: str = "int64") -> te.Tensor:
    """A tensor of like's shape, element i = fn(i) (int64 unless the values are known to fit a
    narrower `dtype`): one step of an iterative kernel."""
    return te.compute(like.shape, lambda *i: fn(i).astype(dtype), name=name, attrs={MATERIALIZE: 1})


def round_shift(x: tirx.PrimExpr, shift: tirx.PrimExpr, rounding: str) -> tirx.PrimExpr:
    """intprog.arith.round_shift: the bit below the cut decides (no x + 2^(S-1) that could overflow)."""
    rounding = Rounding(rounding)
    floor = x >> shift
    if rounding is Rounding.FLOOR:
        return floor
    below = tirx.max(shift - 1, _i64(0))
    half_bit = tirx.Select(shift > 0, (x >> below) & 1, _i64(0))
    up = floor + half_bit
    if rounding is Rounding.HALF_UP:
        return up
    tie = tirx.all(half_bit == 1, (x & ((_i64(1) << below) - 1)) == 0, (up & 1) == 1)
    return tirx.Select(tie, up - 1, up)


def requantize(acc: tirx.PrimExpr, m, s, zp, qmin, qmax, rounding: str) -> tirx.PrimExpr:
    """intprog.arith.requantize on an int64 accumulator: clamp(zp + round_shift(acc * M, S), qmin, qmax)."""
    return tirx.min(tirx.max(round_shift(acc * m, s, rounding) + zp, qmin), qmax)


def floor_div_small(n: tirx.PrimExpr, d: tirx.PrimExpr, reciprocal: tirx.PrimExpr) -> tirx.PrimExpr:
    """floor(n / d) for int64 n and d > 0 whose quotient is below 2^49 in magnitude, without an
    int64 division (there is no vector one): fl(fl(n) fl(1 / d)), with d's `reciprocal` (float64
    1 / d, computed once per divisor: a multiply per element), is within |n / d| 4 2^-53 < 1 of
    n / d, so its floor is floor(n / d) or one off either way, which one test each way of q d
    against n (exact in int64: |q d| <= |n| + 2 d) puts right. LayerNorm's quotient
    (2 c sqrt(C) + r) / 2r is at most sqrt(C) + 1/2, as |c| <= r = isqrt(sum c^2)."""
    estimate = n.astype("float64") * reciprocal
    q = tirx.floor(estimate).astype("int64")
    q = tirx.Select(q * d > n, q - 1, q)
    return tirx.Select((q + 1) * d <= n, q + 1, q)


def msb(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """Index of the highest set bit of int64 v >= 1 (0 for v = 0): count leading zeros."""
    return tirx.Select(v == 0, _i64(0), 63 - tirx.clz(v).astype("int64"))


def isqrt(n: te.Tensor) -> te.Tensor:
    """intprog.nonlinear.isqrt, exact for 0 <= n < 2^62: floor(sqrt(fl(n))) in float64 (relative
    error below 2^-52, so within 2^-21 of sqrt(n) < 2^31: floor(sqrt(n)) or one off either way;
    vector square roots, where Newton steps would need an int64 division each, which no vector unit
    has), then the reference's +-1 correction (r^2 exact in int64)."""
    r = stage(n, lambda i: tirx.floor(tirx.sqrt(n[i].astype("float64"))).astype("int64"), "isqrt")
    r = stage(n, lambda i, r=r: tirx.Select(r[i] * r[i] > n[i], r[i] - 1, r[i]), "isqrt_down")
    return stage(n, lambda i: tirx.Select((r[i] + 1) * (r[i] + 1) <= n[i], r[i] + 1, r[i]), "isqrt_up")


def ilog2_fixed(v: te.Tensor) -> te.Tensor:
    """intprog.nonlinear._ilog2_fixed: log2(v) with LOG_FRAC_BITS fraction bits, for int64 v >= 1."""
    def square(mant: te.Tensor, i: tuple) -> tirx.PrimExpr:
        return (mant[i] * mant[i]) >> 30  # < 2^32: its bit 31 is the next fraction bit

    def step(mant: te.Tensor, frac: te.Tensor, bit: int) -> list[te.Tensor]:
        def body(*i):
            sq = square(mant, i)
            return [tirx.Select(sq >= _i64(1 << 31), sq >> 1, sq), frac[i] | ((sq >> 31) << bit)]
        return te.compute(v.shape, body, name="log2_step", attrs={MATERIALIZE: 1})

    m = stage(v, lambda i: msb(v[i]), "msb")
    mant = stage(v, lambda i: tirx.Select(m[i] >= 30, v[i] >> tirx.max(m[i] - 30, _i64(0)),
                                          v[i] << tirx.max(30 - m[i], _i64(0))), "mantissa")
    frac = stage(v, lambda i: _i64(0), "frac")
    for bit in range(LOG_FRAC_BITS - 1, 0, -1):  # one fraction bit per squaring of the mantissa in [1, 2)
        mant, frac = step(mant, frac, bit)
    # the last bit needs no next mantissa: an unused output would be a stage without consumers
    return stage(v, lambda i: (m[i] << LOG_FRAC_BITS) + (frac[i] | (square(mant, i) >> 31)), "log2")


def elementwise(shape, body: Callable[[tuple], tirx.PrimExpr], dtype: str, name: str) -> te.Tensor:
    """te.compute of body(i) cast to dtype."""
    return te.compute(shape, lambda *i: body(i).astype(dtype), name=name)


class Channels:
    """Integer constants per last axis as TE inputs; a constant equal in every channel is inlined."""

    def __init__(self, consts: dict[str, np.ndarray]):
        self.uniform = {k: int(v.reshape(-1)[0]) for k, v in consts.items() if v.size and np.all(v == v.reshape(-1)[0])}
        self.varying = {k: np.asarray(v, np.int64).reshape(-1) for k, v in consts.items() if k not in self.uniform}
        self.tensors: dict[str, te.Tensor] = {}

    def args(self) -> list[relax.Expr]:
        return [_c(v) for v in self.varying.values()]

    def bind(self, tensors: tuple[te.Tensor, ...]) -> None:
        self.tensors = dict(zip(self.varying, tensors, strict=True))

    def __call__(self, name: str, c: tirx.PrimExpr) -> tirx.PrimExpr:
        return _i64(self.uniform[name]) if name in self.uniform else self.tensors[name][c]

    def bounds(self, i: tuple, qmin: tirx.PrimExpr, qmax: tirx.PrimExpr) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
        """The clamp of output element i: (qmin, qmax), or token 0's own (qmin0, qmax0) on the
        output's token 0 (axis -2) where the op has them (intprog.reference.token_bounds)."""
        if "qmin0" not in self.uniform and "qmin0" not in self.varying:
            return qmin, qmax
        first, n = i[-2] == 0, i[-1]
        return tirx.Select(first, self("qmin0", n), qmin), tirx.Select(first, self("qmax0", n), qmax)


class _Builder:
    """Emits the Relax bindings of one program; each op function below mirrors one reference kernel."""

    def __init__(self, bb: relax.BlockBuilder, signed_activations: bool = False, vnni: bool = False):
        self.bb = bb
        self.signed_activations = signed_activations
        self.vnni = vnni

    def emit(self, expr: relax.Expr) -> relax.Expr:
        return self.bb.emit(expr)

    def value(self, expr: relax.Expr, out: Interval) -> Value:
        """Bind `expr` cast to the container of the interval `out`."""
        lo, hi = out
        dtype, expr = container(lo, hi), self.emit(expr)
        if expr.ty.dtype != dtype:
            expr = self.emit(R.astype(expr, dtype))
        return Value(expr, lo, hi)

    def wide(self, v: Value, dtype: str = "int64") -> relax.Expr:
        return v.expr if v.dtype == dtype else self.emit(R.astype(v.expr, dtype))

    def te(self, name: str, fn: Callable, inputs: list[relax.Expr], chans: Channels | None = None) -> relax.Expr:
        """One fused TIR kernel: fn(channels, *input tensors) -> te.Tensor."""
        chans = chans or Channels({})

        def compute(*tensors):
            chans.bind(tensors[len(inputs):])
            return fn(chans, *tensors[:len(inputs)])

        return self.bb.emit_te(compute, *inputs, *chans.args(), primfunc_name_hint=name)


def _contract(a: te.Tensor, b: te.Tensor, acc: str, b_rows: bool, a_off: int = 0, b_off: int = 0,
              name: str = "matmul") -> te.Tensor:
    """sum_k (a[..., k] - a_off) (b - b_off) in `acc`, b with constant rows [N, K] (2-D) or a's batch
    dimensions and [.., N, K] (b_rows) or [.., K, N]."""
    k = te.reduce_axis((0, a.shape[-1]), "k")

    def term(x: tirx.PrimExpr, off: int) -> tirx.PrimExpr:
        x = x.astype(acc)
        return x - tirx.const(off, acc) if off else x

    def body(*i):
        if len(b.shape) == 2:
            rhs = b[i[-1], k]
        else:
            rhs = b[(*i[:-2], i[-1], k)] if b_rows else b[(*i[:-2], k, i[-1])]
        return te.sum(term(a[(*i[:-1], k)], a_off) * term(rhs, b_off), axis=k)

    n = b.shape[0] if len(b.shape) == 2 else b.shape[-2] if b_rows else b.shape[-1]
    return te.compute([*a.shape[:-1], n], body, name=name)


# --- one function per op kind, mirroring intprog.reference.KERNELS ---

Consts = dict[str, np.ndarray]


def _patchify(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    x, p = xs[0], attrs["patch"]
    n, ch, h, w = x.shape
    y = R.reshape(x.expr, (n, ch, h // p, p, w // p, p))
    y = R.reshape(R.permute_dims(y, (0, 2, 4, 1, 3, 5)), (n, (h // p) * (w // p), ch * p * p))
    return Value(b.emit(y), *out)


def _linear(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    """(x - in_zp) @ (W - W_zp)^T + bias, requantized per output channel, as one kernel.

    With x spanning at most 256 codes, the GEMM multiplies x - off (off = lo: uint8 operands, or
    lo + 128: int8 operands, cast in the kernel; uint8 operands from any other container or offset,
    e.g. a class token's codes below 0, are copied once as x - lo, "to_uint8") by int8 weights W - s,
    s = W_zp where W - W_zp fits int8 (4/3-bit and symmetric weights) and s = min W + 128 where it
    does not (asymmetric 8-bit weights span 256 codes). Exactly:
        sum (x - in_zp)(W - W_zp) = sum (x - off)(W - s) + (s - W_zp) sum (x - off) + (off - in_zp) sum (W - W_zp),
    the last term folded into the bias, the middle one a row sum of the activations times a constant.
    """
    x = xs[0]
    raw = c["weight"].astype(np.int64)
    w = raw - c["weight_zp"][:, None]
    fits = w.min(initial=0) >= -128 and w.max(initial=0) <= 127
    narrow = x.hi - x.lo <= 255 and (fits or raw.max(initial=0) - raw.min(initial=0) <= 255)
    s = c["weight_zp"] if fits or not narrow else np.full(len(raw), raw.min(initial=0) + 128)
    correction = s - c["weight_zp"]
    signed = narrow and b.signed_activations
    off = x.lo + 128 * signed if narrow else attrs["in_zp"]
    unsigned_copy = narrow and not signed and (x.dtype != "uint8" or off != 0)
    a_off = 0 if signed or unsigned_copy else off
    w8 = raw - s[:, None]
    acc = acc_dtype(dot_bound(w.shape[1], (x.lo - off, x.hi - off), span(w8)))
    weight = _c(w8, "int8" if narrow else acc)
    chans = Channels({"bias": c["bias"] - (attrs["in_zp"] - off) * w.sum(axis=1), "correction": correction,
                      **{r: c[r] for r in ("multiplier", "shift", "out_zp", "qmin", "qmax", *TOKEN0) if r in c}})

    def kernel(ch: Channels, a: te.Tensor, wt: te.Tensor) -> te.Tensor:
        if signed or unsigned_copy:
            a = elementwise(a.shape, lambda i: a[i].astype("int32") - off, "int8" if signed else "uint8",
                            "to_int8" if signed else "to_uint8")
        dot = _contract(a, wt, acc, True, a_off=a_off, name="dense")
        if correction.any():
            k = te.reduce_axis((0, a.shape[-1]), "k")
            a_sum = te.compute(a.shape[:-1], lambda *r: te.sum(a[(*r, k)].astype("int64") - a_off, axis=k),
                               name="activation_sum")

        def body(i: tuple) -> tirx.PrimExpr:
            n = i[-1]
            total = dot[i].astype("int64") + ch("bias", n)
            if correction.any():
                total += ch("correction", n) * a_sum[i[:-1]]
            return requantize(total, ch("multiplier", n), ch("shift", n), ch("out_zp", n),
                              *ch.bounds(i, ch("qmin", n), ch("qmax", n)), attrs["rounding"])
        return elementwise(dot.shape, body, container(*out), "requantize")

    return Value(b.te("linear", kernel, [x.expr, weight], chans), *out)


def _requantize(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    chans = Channels({r: c[r] for r in ("multiplier", "shift", "out_zp", "qmin", "qmax")})

    def kernel(ch: Channels, x: te.Tensor) -> te.Tensor:
        def body(i: tuple) -> tirx.PrimExpr:
            n = i[-1] if ch.varying else 0
            return requantize(x[i].astype("int64"), ch("multiplier", n), ch("shift", n), ch("out_zp", n),
                              ch("qmin", n), ch("qmax", n), attrs["rounding"])
        return elementwise(x.shape, body, container(*out), "requantize")

    return Value(b.te("requantize", kernel, [xs[0].expr], chans), *out)


def _prepend(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    x, token = xs[0], c["token"]
    dtype = container(*out)
    n, _, d = x.shape
    tok = R.broadcast_to(_c(token.reshape(1, 1, d), dtype), (n, 1, d))
    return b.value(R.concat([tok, b.wide(x, dtype)], axis=1), out)


def _add(b: _Builder, x: Value, y: Value | np.ndarray, out: Interval) -> Value:
    """x + y in a dtype holding both operands and the sum."""
    ylo, yhi = (y.lo, y.hi) if isinstance(y, Value) else span(y)
    dtype = acc_dtype(max(abs(out[0]), abs(out[1]), x.mag, abs(ylo), abs(yhi)))
    rhs = b.wide(y, dtype) if isinstance(y, Value) else _c(y, dtype)
    return b.value(R.add(b.wide(x, dtype), rhs), out)


def _layernorm(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    """intprog.nonlinear.IntLayerNorm.__call__ in int64, as one kernel (two row sums, isqrt per row)."""
    chans = Channels({"multiplier": c["sign"] * c["multiplier"], "shift": c["shift"] + NORM_FRAC_BITS,
                      "beta": c["beta_fixed"], **{r: c[r] for r in TOKEN0 if r in c}})

    def kernel(ch: Channels, x: te.Tensor) -> te.Tensor:
        rows, width = x.shape[:-1], x.shape[-1]
        k = te.reduce_axis((0, width), "k")
        total = te.compute(rows, lambda *r: te.sum(x[(*r, k)].astype("int64"), axis=k), name="row_sum")

        def centered(i: tuple) -> tirx.PrimExpr:
            return x[i].astype("int64") * width - total[i[:-1]]

        k2 = te.reduce_axis((0, width), "k2")
        squares = te.compute(rows, lambda *r: te.sum(centered((*r, k2)) * centered((*r, k2)), axis=k2),
                             name="row_s2")
        root = isqrt(te.compute(rows, lambda *r: squares[r] + _i64(attrs["eps_term"]), name="row_s2_eps"))

        inverse = te.compute(rows, lambda *r: 1.0 / (tirx.max(root[r], _i64(1)) * 2).astype("float64"),
                             name="row_inverse", attrs={MATERIALIZE: 1})

        def body(i: tuple) -> tirx.PrimExpr:
            r, n = tirx.max(root[i[:-1]], _i64(1)), i[-1]
            num, den = centered(i) * (2 * attrs["sqrt_c"]) + r, r * 2  # div_half_up: (x - mean)/std, Q15
            norm = (floor_div_small(num, den, inverse[i[:-1]]) if attrs["sqrt_c"] < 1 << 48
                    else tirx.floordiv(num, den))
            y = round_shift(norm * ch("multiplier", n) + ch("beta", n), ch("shift", n), Rounding.HALF_UP)
            qmin, qmax = ch.bounds(i, _i64(attrs["qmin"]), _i64(attrs["qmax"]))
            return tirx.min(tirx.max(y + attrs["out_zp"], qmin), qmax)
        return elementwise(x.shape, body, container(*out), "layernorm")

    return Value(b.te("layernorm", kernel, [xs[0].expr], chans), *out)


def _split_heads(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    x, start, dim, heads = xs[0], attrs["start"], attrs["dim"], attrs["heads"]
    n, t, _ = x.shape
    y = R.strided_slice(x.expr, axes=[2], begin=[start], end=[start + dim])
    y = R.permute_dims(R.reshape(y, (n, t, heads, dim // heads)), (0, 2, 1, 3))
    return Value(b.emit(y), *out)


def _merge_heads(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    x = xs[0]
    n, h, t, d = x.shape
    return Value(b.emit(R.reshape(R.permute_dims(x.expr, (0, 2, 1, 3)), (n, t, h * d))), *out)


def _attention(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    """intprog.reference.attention as three kernels: integer logits; IntSoftmaxLog2 codes turned into
    weights 2^(L - code) (0 for dropped probabilities); sum_j weight_j (v_j - zv).

    Windowed attention (Swin) views the tokens as [groups, window]: the two products run per group,
    and the softmax kernel adds the relative position bias to the shifted logits and leaves masked
    entries out of the maximum and the sum, as the reference does."""
    q, k, v = xs
    zq, zk, zv, top = attrs["q_zp"], attrs["k_zp"], attrs["v_zp"], attrs["max_code"]
    shape = q.shape
    logit_bound, value_bound = attention_bounds([(t.lo, t.hi) for t in xs], [t.shape for t in xs], attrs)
    if attrs.get("window"):
        n, h, t, d = shape
        q, k, v = (Value(b.emit(R.reshape(x.expr, (n, h, t // attrs["window"], attrs["window"], d))), x.lo, x.hi)
                   for x in (q, k, v))
    logits = _logits(b, q, k, zq, zk, logit_bound)
    weight_dtype = acc_dtype(value_bound)
    sm = IntSoftmaxLog2(attrs["sm_multiplier"], attrs["sm_shift"], attrs["bits"], attrs.get("codes_per_octave", 1))
    roles = (["weights"] if sm.per_octave > 1 else []) + [r for r in ("bias", "mask") if r in c]
    given_consts = {**c, "weights": code_weights(top, sm.bits, sm.per_octave)}

    def softmax(ch: Channels, x: te.Tensor, e_table: te.Tensor, log_table: te.Tensor, *extra: te.Tensor) -> te.Tensor:
        given = dict(zip(roles, extra, strict=True))
        return _softmax_log2(x, e_table, log_table, sm, top, weight_dtype, given.get("bias"),
                             attrs.get("logit_shift", 0), given.get("mask"), given.get("weights"))

    tables = [_c(t, "int32") for t in exp2_tables(sm)]
    weights = b.te("softmax_log2", softmax, [logits, *tables, *(
        _c(given_consts[r], container(int(given_consts[r].min()), int(given_consts[r].max()))) for r in roles)])
    values = _values(b, weights, v, zv, top, weight_dtype, value_bound)
    if attrs.get("window"):
        values = R.reshape(values, shape)
    return b.value(values, out)


LANES = 16  # keys per block of the u8 x s8 logits (x86 VNNI's 16 int32 lanes)
GROUP = 4  # keys per term group of the u8 x s8 weighted sum (VNNI sums 4 products per lane)


def _padded_s8(t: te.Tensor, rows: int, off: int, name: str) -> te.Tensor:
    """t - off as int8, t [.., n, d] with its n rows padded with zeros to `rows`: the int8 operand
    of a u8 x s8 product (keys of the logits, v of the weighted sum), a stage of its own."""
    n = t.shape[-2]

    def body(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        inside = t[(*i[:-2], tirx.min(i[-2], n - 1), i[-1])].astype("int32") - off
        return tirx.Select(i[-2] < n, inside, tirx.const(0, "int32")).astype("int8")

    return te.compute((*t.shape[:-2], rows, t.shape[-1]), body, name=name, attrs={MATERIALIZE: 1})


def _logits(b: _Builder, q: Value, k: Value, zq: int, zk: int, bound: int) -> relax.Expr:
    """(q - zq) (k - zk)^T over the head dimension. On VNNI targets, where q and k each span at most
    256 codes, as linear does: a u8 x s8 product of qa = q - lo_q and kb = k - lo_k - 128 (int8, its
    keys padded with zeros to a multiple of LANES, "k_s8"), which runs as vpdpbusd
    (tvm_backends.schedules), plus a row sum and a column sum:
        sum (q - zq)(k - zk) = sum qa kb + (lo_k + 128 - zk) sum qa + (lo_q - zq) sum (k - zk).
    Every term is bounded by the head dimension times 2^16 at most, so the sums are exact in int32
    where the logits are. Elsewhere one contraction (which CUDA's Matmul rule and the CPU column
    schedule take as it is)."""
    if not b.vnni or q.hi - q.lo > 255 or k.hi - k.lo > 255:
        acc = acc_dtype(bound)
        return b.te("attention_logits", lambda ch, a, bt: _contract(a, bt, acc, True, zq, zk, "logits"),
                    [q.expr, k.expr])
    qo, ko, dim = q.lo, k.lo + 128, q.shape[-1]
    k_mag = max(abs(k.lo - zk), abs(k.hi - zk))
    acc = acc_dtype(max(bound, dim * (255 * 128 + 255 * abs(ko - zk) + abs(qo - zq) * k_mag)))

    def kernel(ch: Channels, qt: te.Tensor, kt: te.Tensor) -> te.Tensor:
        keys = kt.shape[-2]
        qa = qt if qo == 0 and q.dtype == "uint8" else elementwise(qt.shape, lambda i: qt[i].astype("int32") - qo,
                                                                   "uint8", "q_u8")
        kb = _padded_s8(kt, -(-int(keys) // LANES) * LANES, ko, "k_s8")
        core = _contract(qa, kb, "int32", True, name="logits_core")
        d1, d2 = te.reduce_axis((0, dim), "d1"), te.reduce_axis((0, dim), "d2")
        q_sum = te.compute(qt.shape[:-1], lambda *r: te.sum(qa[(*r, d1)].astype("int32"), axis=d1), name="q_sum")
        k_sum = te.compute(kt.shape[:-1], lambda *r: te.sum(kt[(*r, d2)].astype("int32") - zk, axis=d2),
                           name="k_sum")

        def body(i: tuple) -> tirx.PrimExpr:
            return (core[i].astype(acc) + q_sum[i[:-1]].astype(acc) * (ko - zk)
                    + k_sum[(*i[:-2], i[-1])].astype(acc) * (qo - zq))

        return elementwise((*qt.shape[:-1], keys), body, acc, "logits")

    return b.te("attention_logits", kernel, [q.expr, k.expr])


def _values(b: _Builder, weights: relax.Expr, v: Value, zv: int, top: int, dtype: str, bound: int) -> relax.Expr:
    """sum_j w_j (v_j - zv) over the keys, the weights w in [0, 2^top]. On VNNI targets, where v
    spans at most 256 codes and top < 16, as two u8 x s8 products: w's high and low bytes (keys
    padded with zeros to a multiple of 4) times vb = v - lo_v - 128 (int8), then
        sum w (v - zv) = 256 sum w_hi vb + sum w_lo vb + (lo_v + 128 - zv) sum w,
    each product below keys 2^16 in magnitude (int32), the sum in the width its terms' bounds need."""
    keys = v.shape[-2]
    if not b.vnni or v.hi - v.lo > 255 or top >= 16:
        return b.te("attention_values", lambda ch, wt, vt: _contract(wt, vt, dtype, False, 0, zv, "values"),
                    [weights, v.expr])
    vo, padded = v.lo + 128, -(-keys // GROUP) * GROUP
    acc = acc_dtype(max(bound, padded * (256 * 128 * 128 + 255 * 128) + keys * (abs(vo - zv) << top)))

    def kernel(ch: Channels, wt: te.Tensor, vt: te.Tensor) -> te.Tensor:
        def byte(shift: int) -> te.Tensor:
            def body(*i: tirx.PrimExpr) -> tirx.PrimExpr:
                inside = (wt[(*i[:-1], tirx.min(i[-1], keys - 1))] >> shift) & 255
                return tirx.Select(i[-1] < keys, inside, tirx.const(0, wt.dtype)).astype("uint8")
            return te.compute((*wt.shape[:-1], padded), body, name=f"weight_byte{shift // 8}",
                              attrs={MATERIALIZE: 1})

        vb = _padded_s8(vt, padded, vo, "v_s8")
        high = _contract(byte(8), vb, "int32", False, name="values_high")
        low = _contract(byte(0), vb, "int32", False, name="values_low")
        j = te.reduce_axis((0, keys), "j")
        w_sum = te.compute(wt.shape[:-1], lambda *r: te.sum(wt[(*r, j)].astype(acc), axis=j), name="weight_sum")

        def body(i: tuple) -> tirx.PrimExpr:
            return high[i].astype(acc) * 256 + low[i].astype(acc) + w_sum[i[:-1]] * (vo - zv)

        return elementwise(high.shape, body, dtype, "values")

    return b.te("attention_values", kernel, [weights, v.expr])


def exp2_tables(sm: IntSoftmaxLog2) -> tuple[np.ndarray, np.ndarray]:
    """The softmax's 2^t and ilog2(max(2^t, 1)) for every -t = n (Q8) below 31 · 2^8, plus a last
    entry for every larger n: 2^t = table[n % 256] >> (n // 256) is 0 from a shift of 31 on (the
    table is below 2^31). The reference's own lookup (`_exp2_lookup`), so exact by construction:
    two lookups per logit instead of a shift and the ilog2's squaring steps; a zero 2^t's log entry
    is ilog2(1) = 0 here (the kernel tests 2^t = 0 itself), where the reference's flags it."""
    if not np.array_equal(sm.exp2_table, _exp2_table()):
        raise ValueError("the softmax's 2^-f table is not the reference's")
    e, log = _exp2_lookup()
    return e, np.where(e == 0, 0, log)


def _softmax_log2(x: te.Tensor, e_table: te.Tensor, log_table: te.Tensor, sm: IntSoftmaxLog2, top: int, dtype: str,
                  bias: te.Tensor | None = None, logit_shift: int = 0, mask: te.Tensor | None = None,
                  code_table: te.Tensor | None = None) -> te.Tensor:
    """IntSoftmaxLog2.__call__ over the last axis, then the attention weight of each code, with the
    tables of `exp2_tables`. x is [batch, heads, (groups,) rows, cols]; bias [heads, rows, cols] is
    added to x << logit_shift, and mask [groups, rows, cols] (nonzero = masked) gives probability 0,
    left out of the max and sum. Log2 codes weigh 2^(top - code) (a shift); log-sqrt2 codes look
    their weight up in `code_table` (`code_weights`, whose last entry is the 0 of codes past it)."""
    rows, width = x.shape[:-1], x.shape[-1]

    def masked(i: tuple) -> tirx.PrimExpr:
        return mask[i[-3], i[-2], i[-1]] != 0 if mask is not None else tirx.const(False, "bool")

    def logit(i: tuple) -> tirx.PrimExpr:  # masked entries get the reference's stand-in, far below the rest
        v = x[i].astype("int64")
        if bias is not None:
            v = (v << logit_shift) + bias[i[1], i[-2], i[-1]].astype("int64")
        return tirx.Select(masked(i), _i64(np.iinfo(np.int64).min >> 2), v)

    logits = stage(x, logit, "logits") if bias is not None or mask is not None else x
    j = te.reduce_axis((0, width), "j")
    peak = te.compute(rows, lambda *r: te.max(logits[(*r, j)].astype("int64"), axis=j), name="row_max")

    def neg_t(i: tuple) -> tirx.PrimExpr:  # -t >= 0 (Q8), capped at the tables' last entry
        d = tirx.max(logits[i].astype("int64") - peak[i[:-1]], _i64(-(1 << 31)))
        t = round_shift(-d * _i64(sm.multiplier), _i64(sm.shift - EXP_FRAC_BITS), Rounding.HALF_UP)
        return tirx.min(t, _i64(int(e_table.shape[0]) - 1))

    # -t is capped at the tables' last entry and 2^t is below 2^31: both int32, so that the lookups
    # are 32-bit gathers and the stages half the memory traffic
    index = stage(x, neg_t, "neg_t", "int32")
    e = stage(x, lambda i: tirx.Select(masked(i), tirx.const(0, "int32"), e_table[index[i]]), "exp2", "int32")
    j2 = te.reduce_axis((0, width), "j2")
    total = te.compute(rows, lambda *r: te.sum(e[(*r, j2)].astype("int64"), axis=j2), name="row_total")
    log_total = ilog2_fixed(total)

    def weight(i: tuple) -> tirx.PrimExpr:
        code = round_shift(log_total[i[:-1]] - log_table[index[i]].astype("int64"), _i64(sm.code_shift),
                           Rounding.HALF_UP)
        if code_table is not None:  # past the table (and a huge code) reads its last entry, 0
            last = _i64(int(code_table.shape[0]) - 1)
            return tirx.Select(e[i] == 0, _i64(0), code_table[tirx.min(code, last)].astype("int64"))
        # zero probability (e = 0 or code >= 2^bits) or a code above the top: no weight
        drop = tirx.any(e[i] == 0, code >= (1 << sm.bits), code > top)
        return tirx.Select(drop, _i64(0), _i64(1) << tirx.max(top - code, _i64(0)))

    return elementwise(x.shape, weight, dtype, "weight")


def _lut(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    x, table = xs[0], c["table"]
    lo = -(1 << (attrs["in_bits"] - 1))
    if x.lo < lo or x.hi >= lo + len(table):
        raise ValueError(f"lookup input range [{x.lo}, {x.hi}] exceeds the table's {attrs['in_bits']}-bit range")
    index = R.subtract(b.wide(x, "int32"), _c(lo, "int32"))
    return Value(b.emit(R.take(_c(table, container(*out)), index, axis=0, mode="clip")), *out)


def _take_token(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    x, i = xs[0], attrs["index"]
    n, _, d = x.shape
    y = R.reshape(R.strided_slice(x.expr, axes=[1], begin=[i], end=[i + 1]), (n, d))
    return Value(b.emit(y), *out)


def _gather_tokens(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    """out[:, i] = concat_j x[:, index[i, j]] as one take over the flattened index and a reshape."""
    x, index = xs[0], c["index"]
    n, _, d = x.shape
    y = R.take(x.expr, _c(index.reshape(-1), "int32"), axis=1, mode="clip")  # in bounds; "fast" warns
    return Value(b.emit(R.reshape(y, (n, index.shape[0], index.shape[1] * d))), *out)


def _sum_tokens(b: _Builder, xs: list[Value], attrs: dict, c: Consts, out: Interval) -> Value:
    """The proof's N [lo, hi] also bounds every partial sum's magnitude: it picks the sum's dtype."""
    return b.value(R.sum(b.wide(xs[0], acc_dtype(max(-out[0], out[1]))), axis=1), out)


# (builder, inputs, attrs, constants by role, the output's proven interval) -> the output
Kernel = Callable[[_Builder, list[Value], dict, Consts, Interval], Value]
KERNELS: dict[str, Kernel] = {
    "patchify": _patchify,
    "linear": _linear,
    "prepend": _prepend,
    "add_const": lambda b, xs, a, c, out: _add(b, xs[0], c["value"], out),
    "add": lambda b, xs, a, c, out: _add(b, xs[0], xs[1], out),
    "layernorm": _layernorm,
    "split_heads": _split_heads,
    "attention": _attention,
    "merge_heads": _merge_heads,
    "requantize": _requantize,
    "lut": _lut,
    "take_token": _take_token,
    "gather_tokens": _gather_tokens,
    "sum_tokens": _sum_tokens,
}


def lower_graph(inputs: dict[str, tuple[tuple[int, ...], int, int]], ops: list[dict],
                consts: dict[str, np.ndarray], output: str, signed_activations: bool = False,
                vnni: bool = False) -> tvm.IRModule:
    """main(*inputs) -> output for ops in the program format; inputs map name -> (shape, lo, hi),
    each passed in the container of [lo, hi]; the output is int32 where its interval allows, else int64.
    Every value's interval is intprog's proof (`intprog.ops.infer`) from the inputs'."""
    proof = infer({name: (shape, (lo, hi)) for name, (shape, lo, hi) in inputs.items()}, ops, consts)[1]
    bb = relax.BlockBuilder()
    params = [relax.Var(name, relax.TensorType(shape, container(lo, hi))) for name, (shape, lo, hi) in inputs.items()]
    b = _Builder(bb, signed_activations, vnni)
    with bb.function("main", params):
        with bb.dataflow():
            values = {name: Value(p, lo, hi) for p, (name, (_, lo, hi)) in zip(params, inputs.items(), strict=True)}
            for op in ops:
                roles = {role: consts[key].astype(np.int64) for role, key in op["consts"].items()}
                values[op["out"]] = KERNELS[op["op"]](b, [values[n] for n in op["in"]], op["attrs"], roles,
                                                      proof[op["out"]])
            out = values[output]
            result = bb.emit_output(b.wide(out, "int32" if out.lo >= -_I32 and out.hi < _I32 else "int64"))
        bb.emit_func_output(result)
    return bb.get()


def lower(program: Program, batch: int = 1, signed_activations: bool = False, vnni: bool = False) -> Lowered:
    """The program as a Relax module: main(codes [batch, *input shape]) -> output integers.
    `signed_activations`: s8 x s8 GEMMs (for ARM's sdot) instead of u8 x s8 (x86 VNNI). `vnni`: the
    target has x86 VNNI (tvm_backends.schedules.has_vnni), so attention's two products are lowered
    as u8 x s8 ones (`_logits`, `_values`; the weighted sum as two, which would cost twice the work
    elsewhere)."""
    spec = program.input
    shape = (batch, *spec["shape"])
    mod = lower_graph({spec["name"]: (shape, spec["qmin"], spec["qmax"])}, program.ops, program.consts,
                      program.output["name"], signed_activations, vnni)
    ret = mod["main"].ret_ty
    return Lowered(mod, shape, container(spec["qmin"], spec["qmax"]), tuple(int(d) for d in ret.shape), str(ret.dtype))
