"""The reference executor: the golden model every other executor must match bit for bit.

Vectorized numpy over int64; every value is an integer array. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from intprog.arith import matmul_exact, requantize
from intprog.nonlinear import IntLayerNorm, IntSoftmaxLog2, apply_lut
from intprog.program import Program

Kernel = Callable[[list[np.ndarray], dict, dict[str, np.ndarray]], np.ndarray]


def _patchify(xs, attrs, c):
    x, p = xs[0], attrs["patch"]
    b, ch, h, w = x.shape
    x = x.reshape(b, ch, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), ch * p * p)


def _linear(xs, attrs, c):
    """(x - in_zp) @ (W - W_zp)^T + bias, requantized per output channel."""
    x = xs[0] - attrs["in_zp"]
    w = c["weight"].astype(np.int64) - c["weight_zp"][:, None]
    acc = matmul_exact(x.reshape(-1, x.shape[-1]), w.T).reshape(*x.shape[:-1], -1) + c["bias"]
    return requantize(acc, c["multiplier"], c["shift"], c["out_zp"], c["qmin"], c["qmax"], attrs["rounding"])


def _requantize(xs, attrs, c):
    return requantize(xs[0], c["multiplier"], c["shift"], c["out_zp"], c["qmin"], c["qmax"], attrs["rounding"])


def _layernorm(xs, attrs, c):
    ln = IntLayerNorm(c["multiplier"], c["shift"], c["sign"], c["beta_fixed"], attrs["sqrt_c"], attrs["eps_term"],
                      attrs["out_zp"], attrs["qmin"], attrs["qmax"])
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
    """
    q, k, v = (xs[i] - attrs[z] for i, z in enumerate(("q_zp", "k_zp", "v_zp")))
    b, h, n, d = q.shape
    groups = n // attrs["window"] if attrs.get("window") else 1
    q, k, v = (t.reshape(b, h, groups, -1, t.shape[-1]) for t in (q, k, v))
    logits = qk(q, np.swapaxes(k, -1, -2))
    if "bias" in c:  # the bias has 2^logit_shift finer steps than q.k
        logits = (logits << attrs["logit_shift"]) + c["bias"][None, :, None]
    masked = c["mask"][None, None] != 0 if "mask" in c else None
    codes, zero = IntSoftmaxLog2(attrs["sm_multiplier"], attrs["sm_shift"], attrs["bits"])(logits, masked)
    top = attrs["max_code"]
    # 2^(L - code): what V is shifted by (0 for dropped probabilities)
    weight = np.where(zero | (codes > top), 0, np.left_shift(np.int64(1), np.maximum(top - codes, 0)))
    return av(weight, v).reshape(b, h, n, d)


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
        consts = {role: program.consts[key].astype(np.int64) for role, key in op["consts"].items()}
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
