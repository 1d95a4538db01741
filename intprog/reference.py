"""The reference executor: the golden model every other executor must match bit for bit.

Vectorized numpy over int64; every value is an integer array. Torch-free.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np

from intprog.arith import matmul_exact, requantize
from intprog.nonlinear import IntLayerNorm, IntSoftmaxLog2, apply_lut, code_weights
from intprog.program import Program

# float32 / float64 hold every integer below 2^24 / 2^53 exactly: a product whose every partial sum
# is proven below the bound is exact in that precision's BLAS (intprog.arith.matmul_exact).
_EXACT = ((1 << 24, np.float32), (1 << 53, np.float64))


def _exact_float(bound: int) -> type | None:
    """The narrowest float type whose BLAS is exact for partial sums bounded by `bound`, or None."""
    return next((t for limit, t in _EXACT if bound < limit), None)


class _Cache:
    """Values derived from an array, kept while it lives: keyed by id, checked by a weak reference
    (an id reused after the array died is a miss), dropped when it dies."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[weakref.ref, dict]] = {}

    def __call__(self, a: np.ndarray) -> dict:
        key = id(a)
        hit = self._items.get(key)
        if hit is not None and hit[0]() is a:
            return hit[1]
        items = self._items

        def drop(ref: weakref.ref, key: int = key) -> None:
            if key in items and items[key][0] is ref:
                del items[key]

        entry: dict = {}
        items[key] = (weakref.ref(a, drop), entry)
        return entry


# Program constants -> their int64 form; the int64 forms (read-only) -> what kernels derive from
# them. Programs are not edited in place (a changed constant is a new array, a new key).
_CONSTS, _DERIVED = _Cache(), _Cache()


def _int64_const(a: np.ndarray) -> np.ndarray:
    """A program constant as a read-only int64 array, made once per constant array: the same
    object on every call, so kernels may cache what they derive from it. Always a copy: a view
    would keep the constant alive through this cache, which it must not outlive."""
    entry = _CONSTS(a)
    v = entry.get("int64")
    if v is None:
        v = a.astype(np.int64)
        v.setflags(write=False)
        entry["int64"] = v
    return v


def _derived(a: np.ndarray) -> dict | None:
    """The cache entry of a read-only array (a constant `execute` handed out), None for any other
    array (it may change between calls)."""
    return None if a.flags.writeable else _DERIVED(a)


Kernel = Callable[[list[np.ndarray], dict, dict[str, np.ndarray]], np.ndarray]


def _patchify(xs, attrs, c):
    x, p = xs[0], attrs["patch"]
    b, ch, h, w = x.shape
    x = x.reshape(b, ch, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), ch * p * p)


# The shortest K slice worth a float32 product of its own (linear_acc): below it the slices' sums
# would cost more than float64 BLAS saves.
_F32_MIN_SLICE = 64


def linear_acc(x: np.ndarray, zp: int, c: dict[str, np.ndarray]) -> np.ndarray:
    """(x - zp) @ (W - W_zp)^T + bias as int64: a linear op's accumulators, before requantization.

    The product goes to BLAS in the narrowest exact float (`_exact_float`) of the bound
    K max|x - in_zp| max|W - W_zp|, x converted as is and in_zp subtracted in float (exact: both
    operands and the difference are integers below the float's 2^24 / 2^53 where the bound is,
    and |x| is checked too); the centered, transposed weights in each float type and max|W - W_zp|
    are kept per constant. Where only float64 would do, K is cut into slices whose own bound stays
    below 2^24, each a float32 product, summed in float64 (exact below 2^53): half the cost of
    float64 BLAS (an 8-bit fc2 over 768 hidden features, two slices). Otherwise matmul_exact decides."""
    k = x.shape[-1]
    w = linear_weights(c["weight"], c["weight_zp"])
    if x.size and w["max"]:
        lo, hi = int(x.min()), int(x.max())
        mag_x = max(-lo, hi, abs(zp))
        per_k = max(zp - lo, hi - zp, 0) * w["max"]  # the bound of one product
        ftype, step = _exact_float(max(k * per_k, mag_x)), k
        f32_limit = _EXACT[0][0]
        if ftype is np.float64 and mag_x < f32_limit and (span := (f32_limit - 1) // per_k) >= _F32_MIN_SLICE:
            ftype, step = np.float32, span  # per_k > 0 here: float64 was needed
        if ftype is not None:
            key = np.dtype(ftype).name
            if key not in w:
                w[key] = np.ascontiguousarray(w["int64"].T, dtype=ftype)
            xf = x.reshape(-1, k).astype(ftype)
            xf -= zp
            acc = np.matmul(xf[:, :step], w[key][:step])
            if step < k:
                acc = acc.astype(np.float64)
                for s in range(step, k, step):
                    acc += np.matmul(xf[:, s:s + step], w[key][s:s + step])
            acc = acc.astype(np.int64).reshape(*x.shape[:-1], -1)
            acc += c["bias"]
            return acc
    return matmul_exact((x - zp).reshape(-1, k), w["int64"].T).reshape(*x.shape[:-1], -1) + c["bias"]


def token_bounds(c: dict[str, np.ndarray], qmin, qmax, shape: tuple[int, ...]) -> tuple:
    """The clamp bounds of an op's output of `shape` [.., T, N]: qmin and qmax, or, where the op
    has token 0's own bounds (`qmin0`, `qmax0`: class-token clipping), [T, N] arrays whose row 0
    holds them."""
    if "qmin0" not in c:
        return qmin, qmax
    rows = shape[-2:]
    lo, hi = np.broadcast_to(qmin, rows).copy(), np.broadcast_to(qmax, rows).copy()
    lo[0], hi[0] = c["qmin0"], c["qmax0"]
    return lo, hi


def _linear(xs, attrs, c):
    """(x - in_zp) @ (W - W_zp)^T + bias (`linear_acc`), requantized per output channel."""
    acc = linear_acc(xs[0], attrs["in_zp"], c)
    qmin, qmax = token_bounds(c, c["qmin"], c["qmax"], acc.shape)
    return requantize(acc, c["multiplier"], c["shift"], c["out_zp"], qmin, qmax, attrs["rounding"])


def linear_weights(weight: np.ndarray, weight_zp: np.ndarray) -> dict:
    """{"int64": W - W_zp, "max": max|W - W_zp|}, kept per (read-only) weight constant along with
    the float forms _linear adds."""
    entry = _derived(weight)
    if entry is not None and entry.get("zp") is weight_zp:
        return entry
    w = weight.astype(np.int64) - weight_zp[:, None]
    fresh = {"int64": w, "max": max(-int(w.min()), int(w.max())) if w.size else 0, "zp": weight_zp}
    if entry is not None:
        entry.clear()
        entry.update(fresh)
        return entry
    return fresh


def _requantize(xs, attrs, c):
    return requantize(xs[0], c["multiplier"], c["shift"], c["out_zp"], c["qmin"], c["qmax"], attrs["rounding"])


def _layernorm(xs, attrs, c):
    qmin, qmax = token_bounds(c, attrs["qmin"], attrs["qmax"], xs[0].shape)
    ln = IntLayerNorm(c["multiplier"], c["shift"], c["sign"], c["beta_fixed"], attrs["sqrt_c"], attrs["eps_term"],
                      attrs["out_zp"], qmin, qmax)
    return ln(xs[0])


def _split_heads(xs, attrs, c):
    """[B, N, D] -> [B, H, N, D/H] for columns [start, start + D)."""
    x = xs[0][..., attrs["start"]:attrs["start"] + attrs["dim"]]
    b, n, d = x.shape
    return x.reshape(b, n, attrs["heads"], d // attrs["heads"]).transpose(0, 2, 1, 3)


def _merge_heads(xs, attrs, c):
    b, h, n, d = xs[0].shape
    return xs[0].transpose(0, 2, 1, 3).reshape(b, n, h * d)


Product = Callable[[np.ndarray, np.ndarray], np.ndarray]


def attention(xs: list[np.ndarray], attrs: dict, c: dict[str, np.ndarray], qk: Product = matmul_exact,
              av: Product = matmul_exact) -> np.ndarray:
    """softmax((q - zq)(k - zk)^T s_q s_k + bias) as log2 codes, then sum_j (v_j - zv) 2^(L - code_j).

    With attrs["window"] = w > 0 the tokens form consecutive groups of w that attend only within
    their group (Swin's windows, tokens already in window order); "bias" [H, w, w] is added to the
    integer logits shifted left by attrs["logit_shift"], and "mask" [groups, w, w] (nonzero = masked)
    zeroes probabilities. `qk` and `av` compute the two batched products (the accelerator model
    passes its tiled, accumulator-width ones).

    The weight of code q is `code_weights`' entry: 2^(L - q) for log2 codes, round(2^(L - q/P))
    for P = attrs["codes_per_octave"] codes per octave (2: log-sqrt2), 0 for a zero probability or a code past the
    table, looked up from the softmax's uncapped codes (IntSoftmaxLog2.raw_codes: code =
    min(q, 2^bits - 1), zero = q >= 2^bits). With the default products they are looked up as
    floats and x V goes to BLAS in the narrowest float exact for its bound keys 2^L max|v - zv|
    (every weight is an integer up to 2^L).
    """
    q, k, v = (xs[i] - attrs[z] for i, z in enumerate(("q_zp", "k_zp", "v_zp")))
    b, h, n, d = q.shape
    groups = n // attrs["window"] if attrs.get("window") else 1
    q, k, v = (t.reshape(b, h, groups, -1, t.shape[-1]) for t in (q, k, v))
    logits = qk(q, np.swapaxes(k, -1, -2))
    if "bias" in c:  # the bias has 2^logit_shift finer steps than q.k
        logits = (logits << attrs["logit_shift"]) + c["bias"][None, :, None]
    masked = c["mask"][None, None] != 0 if "mask" in c else None
    per_octave = attrs.get("codes_per_octave", 1)
    softmax = IntSoftmaxLog2(attrs["sm_multiplier"], attrs["sm_shift"], attrs["bits"], per_octave)
    top = attrs["max_code"]
    table = code_weights(top, attrs["bits"], per_octave)  # the last entry, 0, for every code past it
    raw = softmax.raw_codes(logits, masked)
    index = np.minimum(raw, len(table) - 1, out=raw)
    if av is matmul_exact:
        keys = v.shape[-2]
        ftype = _exact_float(keys * (max(-int(v.min()), int(v.max())) if v.size else 0) << top)
        if ftype is not None:
            weight = table.astype(ftype)[index]
            return np.matmul(weight, v.astype(ftype)).astype(np.int64).reshape(b, h, n, d)
    return av(table[index], v).reshape(b, h, n, d)


def _gather_tokens(xs, attrs, c):
    """out[:, i] = concat_j x[:, index[i, j]]: token permutations (Swin's windows, k = 1) and 2x2
    patch merging (k = 4)."""
    x, idx = xs[0], c["index"]
    return x[:, idx].reshape(x.shape[0], idx.shape[0], -1)


KERNELS: dict[str, Kernel] = {
    "patchify": _patchify,
    "linear": _linear,
    "prepend": lambda xs, a, c: np.concatenate(
        [np.broadcast_to(c["token"], (xs[0].shape[0], 1, xs[0].shape[-1])), xs[0]], axis=1),
    "add_const": lambda xs, a, c: xs[0] + c["value"],
    "add": lambda xs, a, c: xs[0] + xs[1],
    "layernorm": _layernorm,
    "split_heads": _split_heads,
    "attention": attention,
    "merge_heads": _merge_heads,
    "requantize": _requantize,
    "lut": lambda xs, a, c: apply_lut(xs[0], c["table"], a["in_bits"]),
    "take_token": lambda xs, a, c: xs[0][:, a["index"]],
    "gather_tokens": _gather_tokens,
    "sum_tokens": lambda xs, a, c: xs[0].sum(axis=1),
}


def container_bytes(v: np.ndarray) -> int:
    """Bytes of a value in the narrowest of int8/int16/int32 that holds it (what a device stores)."""
    lo, hi = (int(v.min()), int(v.max())) if v.size else (0, 0)
    width = 1 if -128 <= lo and hi <= 255 else 2 if -(1 << 15) <= lo and hi < 1 << 16 else 4
    return v.size * width


OpKernel = Callable[[dict, list[np.ndarray], dict[str, np.ndarray]], np.ndarray]


def _reference_op(op: dict, ins: list[np.ndarray], consts: dict[str, np.ndarray]) -> np.ndarray:
    return KERNELS[op["op"]](ins, op["attrs"], consts)


def execute(program: Program, x: np.ndarray, kernel: OpKernel = _reference_op,
            on_value: Callable[[str, np.ndarray], None] | None = None,
            on_free: Callable[[str], None] | None = None) -> np.ndarray:
    """Run the ops in order with `kernel(op, inputs, consts)`, freeing each value after its last
    use; `on_value` sees every value made (the input first), `on_free` every value let go. Returns
    the output. The loop every executor shares (the reference, the accelerator model)."""
    output = program.output["name"]
    last_use = {n: i for i, op in enumerate(program.ops) for n in op["in"]}
    values = {program.input["name"]: np.asarray(x).astype(np.int64)}
    if on_value:
        on_value(program.input["name"], values[program.input["name"]])
    for i, op in enumerate(program.ops):
        consts = {role: _int64_const(program.consts[key]) for role, key in op["consts"].items()}
        values[op["out"]] = out = kernel(op, [values[n] for n in op["in"]], consts)
        if on_value:
            on_value(op["out"], out)
        for name in op["in"]:
            if last_use.get(name) == i and name != output and values.pop(name, None) is not None and on_free:
                on_free(name)
    return values[output]


def run(program: Program, x: np.ndarray, stats: dict | None = None) -> np.ndarray:
    """Execute `program` on integer input codes x [B, ...]; returns the output integers.

    With `stats`, records `peak_activation_bytes`: the largest total of live values (each in its
    narrowest integer container) over the program, per image.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError("the reference executor takes integer input codes; quantize images first")
    if stats is None:
        return execute(program, x)
    live: dict[str, int] = {}
    peak = 0

    def made(name: str, value: np.ndarray) -> None:
        nonlocal peak
        live[name] = container_bytes(value)
        peak = max(peak, sum(live.values()))

    out = execute(program, x, on_value=made, on_free=lambda name: live.pop(name, None))
    stats["peak_activation_bytes"] = max(stats.get("peak_activation_bytes", 0), peak // max(len(x), 1))
    return out
