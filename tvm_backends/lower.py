"""Integer program -> Relax module of integer ops only, bit-exact with intprog.reference.

Each op kind of intprog.program.OPS becomes Relax integer ops (elementwise, reductions, take) or a
TE contraction (`_contract`: a GEMM with weights as [N, K], or a batched attention matmul) whose
inputs are integers in narrow containers and whose sums are int32 or int64. No float and no float
scale is used. The reference computes in int64; here every value carries a proven integer interval
(propagated op by op from the program's constants and clamps), which picks the narrowest container
that holds it and the width of every accumulator: int32 where the interval proves it exact, int64
otherwise. 3/4-bit values sit in int8/uint8 containers (TVM's int4 is broken in 0.27).

Linear layers are lowered as u8 x s8 GEMMs where possible: weights minus their zero points become
int8 constants, activations are shifted to start at 0 (uint8), and the shift and the input zero
point are folded into the bias with the weight row sums. That is the operand form of x86 VNNI and
ARM dot-product instructions, and it is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te
from tvm.relax import op as R

from intprog.arith import Rounding
from intprog.nonlinear import EXP_FRAC_BITS, LOG_FRAC_BITS, NORM_FRAC_BITS, IntSoftmaxLog2
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
    """A lowered tensor and the interval [lo, hi] that every one of its elements lies in."""

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


class _Builder:
    """Emits the Relax bindings of one program; each method mirrors one reference kernel."""

    def __init__(self, bb: relax.BlockBuilder):
        self.bb = bb

    def emit(self, expr: relax.Expr) -> relax.Expr:
        return self.bb.emit(expr)

    def value(self, expr: relax.Expr, lo: int, hi: int) -> Value:
        """Bind `expr` cast to the container of [lo, hi]."""
        lo, hi = int(lo), int(hi)
        dtype, expr = container(lo, hi), self.emit(expr)
        if expr.ty.dtype != dtype:
            expr = self.emit(R.astype(expr, dtype))
        return Value(expr, lo, hi)

    def wide(self, v: Value, dtype: str = "int64") -> relax.Expr:
        return v.expr if v.dtype == dtype else self.emit(R.astype(v.expr, dtype))

    # --- arithmetic shared by several kernels (intprog.arith / intprog.nonlinear) ---

    def round_shift(self, x: relax.Expr, shift: np.ndarray, rounding: Rounding) -> relax.Expr:
        """intprog.arith.round_shift on int64 x with constant shifts (scalar or per last axis)."""
        shift = np.asarray(shift, dtype=np.int64)
        if np.any(shift < 0) or np.any(shift > 62):
            raise ValueError(f"shift must be in 0..62, got {shift.min()}..{shift.max()}")
        rounding = Rounding(rounding)
        floor = self.emit(R.right_shift(x, _c(shift)))
        if rounding is Rounding.FLOOR:
            return floor
        # the bit below the cut decides, as in the reference (no x + 2^(S-1) that could overflow int64)
        below = np.maximum(shift - 1, 0)
        half_bit = self.emit(R.bitwise_and(R.right_shift(x, _c(below)), _c((shift > 0).astype(np.int64))))
        up = self.emit(R.add(floor, half_bit))
        if rounding is Rounding.HALF_UP:
            return up
        one = _c(1)
        tie = R.logical_and(R.equal(half_bit, one),
                            R.equal(R.bitwise_and(x, _c(np.left_shift(np.int64(1), below) - 1)), _c(0)))
        return self.emit(R.where(R.logical_and(tie, R.equal(R.bitwise_and(up, one), one)), R.subtract(up, one), up))

    def clamp(self, x: relax.Expr, lo: np.ndarray, hi: np.ndarray) -> relax.Expr:
        return self.emit(R.minimum(R.maximum(x, _c(_scalar_or(lo))), _c(_scalar_or(hi))))

    def requantize(self, acc: Value, multiplier, shift, out_zp, qmin, qmax, rounding: str) -> Value:
        """intprog.arith.requantize: clamp(zp + round_shift(acc * M, S), qmin, qmax), product in int64."""
        prod = self.emit(R.multiply(self.wide(acc), _c(_scalar_or(multiplier))))
        y = self.emit(R.add(self.round_shift(prod, _scalar_or(shift), rounding), _c(_scalar_or(out_zp))))
        return self.value(self.clamp(y, qmin, qmax), np.min(qmin), np.max(qmax))

    def msb(self, v: relax.Expr) -> relax.Expr:
        """Index of the highest set bit of int64 v >= 1 (0 for v = 0), by binary search."""
        msb, t = self.emit(R.zeros_like(v)), v
        for step in (32, 16, 8, 4, 2, 1):
            big = self.emit(R.greater_equal(t, _c(1 << step)))
            msb = self.emit(R.where(big, R.add(msb, _c(step)), msb))
            t = self.emit(R.where(big, R.right_shift(t, _c(step)), t))
        return msb

    def isqrt(self, n: relax.Expr) -> relax.Expr:
        """intprog.nonlinear.isqrt in integers only: Newton steps from a power of two above sqrt(n),
        then the reference's +-1 correction. Exact for 0 <= n < 2^62."""
        one = _c(1)
        r = self.emit(R.left_shift(one, R.right_shift(R.add(self.msb(n), _c(2)), one)))
        for _ in range(7):  # from within 2x of sqrt(n), 6 steps reach floor(sqrt(n)) for n < 2^62
            r = self.emit(R.maximum(R.minimum(r, R.right_shift(R.add(r, R.floor_divide(n, r)), one)), one))
        r = self.emit(R.where(R.greater(R.multiply(r, r), n), R.subtract(r, one), r))
        r1 = R.add(r, one)
        return self.emit(R.where(R.less_equal(R.multiply(r1, r1), n), r1, r))

    def ilog2_fixed(self, v: relax.Expr) -> relax.Expr:
        """intprog.nonlinear._ilog2_fixed: log2(v), LOG_FRAC_BITS fraction bits, for int64 v >= 1."""
        msb = self.msb(v)
        zero = _c(0)
        mant = self.emit(R.where(R.greater_equal(msb, _c(30)),
                                 R.right_shift(v, R.maximum(R.subtract(msb, _c(30)), zero)),
                                 R.left_shift(v, R.maximum(R.subtract(_c(30), msb), zero))))
        frac = self.emit(R.zeros_like(v))
        for bit in range(LOG_FRAC_BITS - 1, -1, -1):
            mant = self.emit(R.right_shift(R.multiply(mant, mant), _c(30)))
            ge2 = self.emit(R.greater_equal(mant, _c(1 << 31)))
            frac = self.emit(R.where(ge2, R.bitwise_or(frac, _c(1 << bit)), frac))
            mant = self.emit(R.where(ge2, R.right_shift(mant, _c(1)), mant))
        return self.emit(R.add(R.left_shift(msb, _c(LOG_FRAC_BITS)), frac))

    def contract(self, a: relax.Expr, b: relax.Expr, acc: str, b_rows: bool, name: str) -> relax.Expr:
        """Integer sum of products a[..., k] * b in `acc`, b as rows [.., N, K] (b_rows) or [.., K, N]."""
        return self.bb.emit_te(_contract_te(acc, b_rows), a, b, primfunc_name_hint=name)


def _contract_te(acc: str, b_rows: bool) -> Callable[[te.Tensor, te.Tensor], te.Tensor]:
    """TE of a GEMM with constant weights [N, K] (2-D b) or of a batched matmul (b with a's batch)."""

    def compute(a: te.Tensor, b: te.Tensor) -> te.Tensor:
        k = te.reduce_axis((0, a.shape[-1]), "k")
        if len(b.shape) == 2:
            def body(*i):
                return te.sum(a[(*i[:-1], k)].astype(acc) * b[i[-1], k].astype(acc), axis=k)
            return te.compute([*a.shape[:-1], b.shape[0]], body, name="dense")

        def batched(*i):
            rhs = b[(*i[:-2], i[-1], k)] if b_rows else b[(*i[:-2], k, i[-1])]
            return te.sum(a[(*i[:-1], k)].astype(acc) * rhs.astype(acc), axis=k)
        n = b.shape[-2] if b_rows else b.shape[-1]
        return te.compute([*a.shape[:-1], n], batched, name="batch_matmul")

    return compute


def _scalar_or(a) -> np.ndarray:
    """A constant that is the same in every channel becomes a scalar (a cheaper broadcast)."""
    a = np.asarray(a, dtype=np.int64)
    return a.reshape(-1)[:1].reshape(()) if a.size and np.all(a == a.reshape(-1)[0]) else a


# --- one function per op kind, mirroring intprog.reference.KERNELS ---

Consts = dict[str, np.ndarray]


def _patchify(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    x, p = xs[0], attrs["patch"]
    n, ch, h, w = x.shape
    y = R.reshape(x.expr, (n, ch, h // p, p, w // p, p))
    y = R.reshape(R.permute_dims(y, (0, 2, 4, 1, 3, 5)), (n, (h // p) * (w // p), ch * p * p))
    return Value(b.emit(y), x.lo, x.hi)


def _linear(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    """(x - in_zp) @ (W - W_zp)^T + bias, requantized per output channel.

    With W - W_zp in int8 and x spanning at most 256 codes, the GEMM runs on (x - lo) as uint8 and
    int8 weights, and bias' = bias - (in_zp - lo) * rowsum(W - W_zp) restores the exact sum.
    """
    x = xs[0]
    w = c["weight"].astype(np.int64) - c["weight_zp"][:, None]
    k = w.shape[1]
    if w.min(initial=0) >= -128 and w.max(initial=0) <= 127 and x.hi - x.lo <= 255:
        shift = x.lo
        a = x.expr if x.dtype == "uint8" and shift == 0 else b.emit(
            R.astype(R.subtract(b.wide(x, "int32"), _c(shift, "int32")), "uint8"))
        weight, a_mag = _c(w, "int8"), x.hi - x.lo
    else:
        shift = attrs["in_zp"]
        a_mag = max(abs(x.lo - shift), abs(x.hi - shift))
        wide = acc_dtype(k * a_mag * int(np.abs(w).max(initial=0)))
        a = b.emit(R.subtract(b.wide(x, wide), _c(shift, wide)))
        weight = _c(w, wide)
    bias = c["bias"] - (attrs["in_zp"] - shift) * w.sum(axis=1)
    acc = acc_dtype(k * a_mag * int(np.abs(w).max(initial=0)) + int(np.abs(bias).max(initial=0)))
    s = b.emit(R.add(b.contract(a, weight, acc, True, "dense"), _c(bias, acc)))
    return b.requantize(Value(s, -(1 << 63), (1 << 63) - 1), c["multiplier"], c["shift"], c["out_zp"],
                        c["qmin"], c["qmax"], attrs["rounding"])


def _requantize(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    return b.requantize(xs[0], c["multiplier"], c["shift"], c["out_zp"], c["qmin"], c["qmax"], attrs["rounding"])


def _prepend(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    x, token = xs[0], c["token"]
    lo, hi = min(x.lo, int(token.min())), max(x.hi, int(token.max()))
    dtype = container(lo, hi)
    n, _, d = x.shape
    tok = R.broadcast_to(_c(token.reshape(1, 1, d), dtype), (n, 1, d))
    return b.value(R.concat([tok, b.wide(x, dtype)], axis=1), lo, hi)


def _add(b: _Builder, x: Value, y: Value | np.ndarray) -> Value:
    ylo, yhi = (y.lo, y.hi) if isinstance(y, Value) else (int(y.min()), int(y.max()))
    lo, hi = x.lo + ylo, x.hi + yhi
    dtype = acc_dtype(max(abs(lo), abs(hi), x.mag, abs(ylo), abs(yhi)))
    rhs = b.wide(y, dtype) if isinstance(y, Value) else _c(y, dtype)
    return b.value(R.add(b.wide(x, dtype), rhs), lo, hi)


def _layernorm(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    """intprog.nonlinear.IntLayerNorm.__call__ in int64."""
    x = b.wide(xs[0])
    ch = xs[0].shape[-1]
    centered = b.emit(R.subtract(R.multiply(x, _c(ch)), R.sum(x, axis=[-1], keepdims=True)))
    s2 = b.emit(R.add(R.sum(R.multiply(centered, centered), axis=[-1], keepdims=True), _c(attrs["eps_term"])))
    r = b.emit(R.maximum(b.isqrt(s2), _c(1)))
    two = _c(2)
    num = R.add(R.multiply(R.multiply(centered, _c(attrs["sqrt_c"])), two), r)  # div_half_up: (2a + b) // 2b
    norm = b.emit(R.floor_divide(num, R.multiply(r, two)))
    y = b.round_shift(b.emit(R.multiply(norm, _c(_scalar_or(c["multiplier"])))),
                      _scalar_or(c["shift"] + NORM_FRAC_BITS), Rounding.HALF_UP)
    y = R.add(_c(_scalar_or(attrs["out_zp"] + c["beta_q"])), R.multiply(_c(_scalar_or(c["sign"])), y))
    return b.value(b.clamp(b.emit(y), attrs["qmin"], attrs["qmax"]), attrs["qmin"], attrs["qmax"])


def _split_heads(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    x, start, dim, heads = xs[0], attrs["start"], attrs["dim"], attrs["heads"]
    n, t, _ = x.shape
    y = R.strided_slice(x.expr, axes=[2], begin=[start], end=[start + dim])
    y = R.permute_dims(R.reshape(y, (n, t, heads, dim // heads)), (0, 2, 1, 3))
    return Value(b.emit(y), x.lo, x.hi)


def _merge_heads(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    x = xs[0]
    n, h, t, d = x.shape
    return Value(b.emit(R.reshape(R.permute_dims(x.expr, (0, 2, 1, 3)), (n, t, h * d))), x.lo, x.hi)


def _centered(b: _Builder, x: Value, zp: int, dtype: str) -> tuple[relax.Expr, int]:
    return b.emit(R.subtract(b.wide(x, dtype), _c(zp, dtype))), max(abs(x.lo - zp), abs(x.hi - zp))


def _attention(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    """The reference's _attention: integer logits, IntSoftmaxLog2 codes, then sum_j (v_j - zv) 2^(L - code_j)."""
    q, k, v = xs
    d, m, bits, top = q.shape[-1], k.shape[-2], attrs["bits"], attrs["max_code"]
    mag_q, mag_k = (max(abs(t.lo - attrs[z]), abs(t.hi - attrs[z])) for t, z in ((q, "q_zp"), (k, "k_zp")))
    acc = acc_dtype(d * mag_q * mag_k)
    qc, _ = _centered(b, q, attrs["q_zp"], acc)
    kc, _ = _centered(b, k, attrs["k_zp"], acc)
    logits = b.contract(qc, kc, acc, True, "attention_logits")
    logits = logits if acc == "int64" else b.emit(R.astype(logits, "int64"))
    codes, zero = _softmax_log2(b, logits, IntSoftmaxLog2(attrs["sm_multiplier"], attrs["sm_shift"], bits))
    drop = R.logical_or(zero, R.greater(codes, _c(top)))
    weight = R.left_shift(_c(1), R.maximum(R.subtract(_c(top), codes), _c(0)))
    acc = acc_dtype(m * (1 << top) * max(abs(v.lo - attrs["v_zp"]), abs(v.hi - attrs["v_zp"])))
    weight = b.emit(R.astype(R.where(drop, _c(0), weight), acc))
    vc, mag_v = _centered(b, v, attrs["v_zp"], acc)
    bound = m * (1 << top) * mag_v
    return b.value(b.contract(weight, vc, acc, False, "attention_values"), -bound, bound)


def _softmax_log2(b: _Builder, x: relax.Expr, sm: IntSoftmaxLog2) -> tuple[relax.Expr, relax.Expr]:
    """IntSoftmaxLog2.__call__ on int64 logits: (codes, zero mask)."""
    d = b.emit(R.maximum(R.subtract(x, R.max(x, axis=[-1], keepdims=True)), _c(-(1 << 31))))
    neg_t = b.round_shift(b.emit(R.multiply(R.negative(d), _c(sm.multiplier))), sm.shift - EXP_FRAC_BITS,
                          Rounding.HALF_UP)  # -t >= 0
    whole = b.emit(R.right_shift(neg_t, _c(EXP_FRAC_BITS)))
    frac = b.emit(R.bitwise_and(neg_t, _c((1 << EXP_FRAC_BITS) - 1)))
    table = R.take(_c(sm.exp2_table), frac, axis=0, mode="clip")
    e = b.emit(R.where(R.greater(whole, _c(62)), _c(0), R.right_shift(table, R.minimum(whole, _c(62)))))
    total = b.emit(R.sum(e, axis=[-1], keepdims=True))
    diff = b.emit(R.subtract(b.ilog2_fixed(total), b.ilog2_fixed(b.emit(R.maximum(e, _c(1))))))
    q = b.round_shift(diff, LOG_FRAC_BITS, Rounding.HALF_UP)
    zero = b.emit(R.logical_or(R.equal(e, _c(0)), R.greater_equal(q, _c(1 << sm.bits))))
    return b.emit(R.where(zero, _c((1 << sm.bits) - 1), q)), zero


def _lut(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    x, table = xs[0], c["table"]
    lo = -(1 << (attrs["in_bits"] - 1))
    if x.lo < lo or x.hi >= lo + len(table):
        raise ValueError(f"lookup input range [{x.lo}, {x.hi}] exceeds the table's {attrs['in_bits']}-bit range")
    index = R.subtract(b.wide(x, "int32"), _c(lo, "int32"))
    tlo, thi = int(table.min()), int(table.max())
    return Value(b.emit(R.take(_c(table, container(tlo, thi)), index, axis=0, mode="clip")), tlo, thi)


def _take_token(b: _Builder, xs: list[Value], attrs: dict, c: Consts) -> Value:
    x, i = xs[0], attrs["index"]
    n, _, d = x.shape
    y = R.reshape(R.strided_slice(x.expr, axes=[1], begin=[i], end=[i + 1]), (n, d))
    return Value(b.emit(y), x.lo, x.hi)


Kernel = Callable[[_Builder, list[Value], dict, Consts], Value]
KERNELS: dict[str, Kernel] = {
    "patchify": _patchify,
    "linear": _linear,
    "prepend": _prepend,
    "add_const": lambda b, xs, a, c: _add(b, xs[0], c["value"]),
    "add": lambda b, xs, a, c: _add(b, xs[0], xs[1]),
    "layernorm": _layernorm,
    "split_heads": _split_heads,
    "attention": _attention,
    "merge_heads": _merge_heads,
    "requantize": _requantize,
    "lut": _lut,
    "take_token": _take_token,
}


def lower_graph(inputs: dict[str, tuple[tuple[int, ...], int, int]], ops: list[dict],
                consts: dict[str, np.ndarray], output: str) -> tvm.IRModule:
    """main(*inputs) -> output for ops in the program format; inputs map name -> (shape, lo, hi),
    each passed in the container of [lo, hi]; the output is int32 where its interval allows, else int64."""
    bb = relax.BlockBuilder()
    params = [relax.Var(name, relax.TensorType(shape, container(lo, hi))) for name, (shape, lo, hi) in inputs.items()]
    b = _Builder(bb)
    with bb.function("main", params):
        with bb.dataflow():
            values = {name: Value(p, lo, hi) for p, (name, (_, lo, hi)) in zip(params, inputs.items(), strict=True)}
            for op in ops:
                roles = {role: consts[key].astype(np.int64) for role, key in op["consts"].items()}
                values[op["out"]] = KERNELS[op["op"]](b, [values[n] for n in op["in"]], op["attrs"], roles)
            out = values[output]
            result = bb.emit_output(b.wide(out, "int32" if out.lo >= -_I32 and out.hi < _I32 else "int64"))
        bb.emit_func_output(result)
    return bb.get()


def lower(program: Program, batch: int = 1) -> Lowered:
    """The program as a Relax module: main(codes [batch, *input shape]) -> output integers."""
    spec = program.input
    shape = (batch, *spec["shape"])
    mod = lower_graph({spec["name"]: (shape, spec["qmin"], spec["qmax"])}, program.ops, program.consts,
                      program.output["name"])
    ret = mod["main"].ret_ty
    return Lowered(mod, shape, container(spec["qmin"], spec["qmax"]), tuple(int(d) for d in ret.shape), str(ret.dtype))
