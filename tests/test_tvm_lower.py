"""TVM (llvm, this host) == the reference executor, bit for bit: per op on random and edge inputs
(rounding ties, saturation, zero points, wide accumulators, Swin windows), and on the zoo ViT and Swin."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from intprog import nonlinear, reference  # noqa: E402
from intprog.arith import quantize_multiplier  # noqa: E402
from tvm_backends.lower import container, ilog2_fixed, isqrt, lower, lower_graph  # noqa: E402
from tvm_backends.schedules import has_vnni, schedule  # noqa: E402

I32 = (-(1 << 31), (1 << 31) - 1)


def host_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def build(mod: tvm.IRModule):
    """What ships: fused and scheduled for this host, on the Relax VM."""
    from tvm import relax

    target = host_target()
    return relax.VirtualMachine(tvm.compile(schedule(mod, target), target), tvm.cpu())


def run_tvm(mod: tvm.IRModule, *arrays: np.ndarray) -> np.ndarray:
    vm = build(mod)
    dtypes = [str(p.ty.dtype) for p in mod["main"].params]
    args = [tvm.runtime.tensor(np.ascontiguousarray(a).astype(d)) for a, d in zip(arrays, dtypes, strict=True)]
    return vm["main"](*args).numpy()


def op_module(kind: str, inputs: list[tuple[np.ndarray, int, int]], attrs: dict, consts: dict | None = None,
              signed_activations: bool = False, vnni: bool = False) -> tvm.IRModule:
    """The lowered module of one op; inputs are (values, lo, hi); `vnni`: lowered for a VNNI target
    (scheduled for this host whatever it has: the algebra is checked everywhere)."""
    names = [f"x{i}" for i in range(len(inputs))]
    op = {"op": kind, "in": names, "out": "y", "attrs": attrs, "consts": {r: f"y.{r}" for r in consts or {}}}
    return lower_graph({n: (v.shape, lo, hi) for n, (v, lo, hi) in zip(names, inputs, strict=True)}, [op],
                       {f"y.{r}": np.asarray(v, dtype=np.int64) for r, v in (consts or {}).items()}, "y",
                       signed_activations, vnni)


def scheduled_kernels(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    mod = schedule(mod, host_target())
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def check_op(kind: str, inputs: list[tuple[np.ndarray, int, int]], attrs: dict, consts: dict | None = None,
             signed_activations: bool = False, vnni: bool = False):
    """One op through TVM and through the reference kernel; inputs are (values, lo, hi)."""
    consts = {role: np.asarray(v, dtype=np.int64) for role, v in (consts or {}).items()}
    got = run_tvm(op_module(kind, inputs, attrs, consts, signed_activations, vnni), *(v for v, _, _ in inputs))
    want = reference.KERNELS[kind]([v.astype(np.int64) for v, _, _ in inputs], attrs, consts)
    np.testing.assert_array_equal(got, want)
    return want


def _requant(rng, n: int, scale_lo: float, scale_hi: float, zp, qmin, qmax) -> dict:
    m, s = quantize_multiplier(rng.uniform(scale_lo, scale_hi, n))
    full = np.ones(n, dtype=np.int64)
    return {"multiplier": m, "shift": s, "out_zp": full * zp, "qmin": full * qmin, "qmax": full * qmax}


@pytest.mark.parametrize("signed_activations", [False, True], ids=["u8s8", "s8s8"])  # x86 VNNI / ARM sdot form
@pytest.mark.parametrize("rounding", ["half_up", "half_even", "floor"])
@pytest.mark.parametrize("w_bits, signed_w, x_lo, x_hi", [
    (4, False, 0, 15),  # zoo W4A4: unsigned 4-bit weights with zero points, uint8 activations
    (3, False, 0, 7),
    (8, True, -128, 127),  # symmetric int8 weights, signed activations (shifted to u8 inside)
    (8, False, 0, 255),  # asymmetric 8-bit weights: W - zp leaves int8; W - 128 and a row-sum correction
    (4, True, -40000, 40000),  # activations wider than 8 bits: the wide GEMM path
])
def test_linear(rounding, w_bits, signed_w, x_lo, x_hi, signed_activations):
    rng = np.random.default_rng(w_bits)
    n, k = 24, 40
    lo, hi = (-(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1) if signed_w else (0, (1 << w_bits) - 1)
    weight = rng.integers(lo, hi + 1, (n, k))
    weight_zp = np.zeros(n, np.int64) if signed_w else rng.integers(lo, hi + 1, n)
    x = rng.integers(x_lo, x_hi + 1, (3, 5, k))
    x[0, 0] = x_lo  # extremes of the interval
    x[0, 1] = x_hi
    in_zp = int(rng.integers(x_lo, x_hi + 1))
    span = (x_hi - x_lo) * (hi - lo) * k
    # narrow outputs saturate at both ends; ties are frequent with M = 2^30 (x 1/2 per shift step)
    req = _requant(rng, n, 4.0 / span, 64.0 / span, 3, -20, 40)
    req["multiplier"][:4], req["shift"][:4] = 1 << 30, 31
    consts = {"weight": weight, "weight_zp": weight_zp, "bias": rng.integers(-300, 300, n), **req}
    out = check_op("linear", [(x, x_lo, x_hi)], {"in_zp": in_zp, "rounding": rounding, "weight_bits": w_bits}, consts,
                   signed_activations)
    assert (out == -20).any() and (out == 40).any()  # both saturation ends were exercised


@pytest.mark.parametrize("n", [16, 32, 48, 64, 80])  # 1, 2, 3, 4 and 1 (of 5 blocks) accumulator chains
def test_linear_tiles_of_16_by_4(n):
    """N % 16 == 0 and K % 4 == 0: on VNNI hosts the kernel that runs is the tensorized one."""
    rng = np.random.default_rng(n)
    k = 48
    x = rng.integers(0, 16, (2, 7, k))
    consts = {"weight": rng.integers(0, 16, (n, k)), "weight_zp": rng.integers(0, 16, n),
              "bias": rng.integers(-300, 300, n), **_requant(rng, n, 1e-3, 1e-1, 2, 0, 15)}
    attrs = {"in_zp": 7, "rounding": "half_up", "weight_bits": 4}
    check_op("linear", [(x, 0, 15)], attrs, consts)
    target = host_target()
    if tvm.target.codegen.llvm_cpu_has_features("avx512vnni", target):
        kernels = scheduled_kernels(op_module("linear", [(x, 0, 15)], attrs, consts))
        assert any(name.endswith("_vnni") for name in kernels), list(kernels)


@pytest.mark.parametrize("w_bits, k, rows, kind", [(4, 48, 7, "avx2u8x16"), (4, 40, 5, "avx2u8"),
                                                   (8, 40, 13, "avx2i16")])
def test_linear_avx2_kernels(w_bits, k, rows, kind):
    """On AVX2 hosts without VNNI the GEMM is tensorized by the kind exact for its weights (|W - s|
    <= 16: 16 terms per int16 sum; <= 64: 4; else int16 operands), rows padded to whole tiles."""
    target = host_target()
    if tvm.target.codegen.llvm_cpu_has_features("avx512vnni", target) or \
            not tvm.target.codegen.llvm_cpu_has_features("avx2", target):
        pytest.skip("AVX2 without VNNI only")
    rng = np.random.default_rng(k + rows)
    n = 32
    hi = (1 << w_bits) - 1
    x = rng.integers(0, 256, (1, rows, k))
    x[0, 0], x[0, 1] = 255, 0
    weight = rng.integers(0, hi + 1, (n, k))
    weight[0], weight[1] = 0, hi  # extreme products: 255 x the widest weight
    zp = np.full(n, 0 if w_bits == 8 else hi)
    consts = {"weight": weight, "weight_zp": zp, "bias": rng.integers(-300, 300, n),
              **_requant(rng, n, 1e-4, 1e-2, 0, -128, 127)}
    attrs = {"in_zp": 3, "rounding": "half_even", "weight_bits": w_bits}
    check_op("linear", [(x, 0, 255)], attrs, consts)
    kernels = scheduled_kernels(op_module("linear", [(x, 0, 255)], attrs,
                                          {r: np.asarray(v, np.int64) for r, v in consts.items()}))
    assert any(name.endswith("_" + kind) for name in kernels), list(kernels)


def test_linear_int32_output_and_wide_accumulator():
    """A residual-stream linear: int32 outputs; |x| < 2^22 makes the proven bound exceed int32."""
    rng = np.random.default_rng(1)
    n, k = 8, 16
    x = rng.integers(-(1 << 22), 1 << 22, (2, 3, k))
    weight = rng.integers(-128, 128, (n, k))
    req = _requant(rng, n, 1e-3, 1e-2, 0, *I32)
    consts = {"weight": weight, "weight_zp": np.zeros(n), "bias": rng.integers(-1000, 1000, n), **req}
    check_op("linear", [(x, -(1 << 22), 1 << 22)], {"in_zp": 5, "rounding": "half_up", "weight_bits": 8}, consts)


@pytest.mark.parametrize("rounding", ["half_up", "half_even", "floor"])
def test_requantize_ties_and_extremes(rounding):
    # M = 2^30 with S = 31 and 33 halves and eighths odd values: ties at .5; the int32 extremes too
    acc = np.array([[-(1 << 31), (1 << 31) - 1, -5, -3, -1, 1, 3, 5, 7, 0, -4, 4, 12, -12, 20, -20]])
    for shift in (31, 33, 30):
        consts = {"multiplier": np.array([1 << 30]), "shift": np.array([shift]), "out_zp": np.array([-2]),
                  "qmin": np.array([-(1 << 28)]), "qmax": np.array([1 << 20])}
        check_op("requantize", [(acc, *I32)], {"rounding": rounding}, consts)


def test_requantize_per_channel():
    rng = np.random.default_rng(2)
    acc = rng.integers(-(1 << 24), 1 << 24, (2, 5, 6))
    consts = _requant(rng, 6, 1e-6, 1e-3, rng.integers(-3, 4, 6), rng.integers(-20, 0, 6), rng.integers(1, 20, 6))
    out = check_op("requantize", [(acc, -(1 << 24), 1 << 24)], {"rounding": "half_even"}, consts)
    assert (out == consts["qmax"]).any() and (out == consts["qmin"]).any()


@pytest.mark.parametrize("bits, scale", [(4, 1.0), (3, 0.05), (8, 1e-4)])
def test_layernorm(bits, scale):
    rng = np.random.default_rng(bits)
    c = 96
    x = np.round(rng.normal(0, 1 << 19, (2, 5, c)) * scale).astype(np.int64) + rng.integers(-1000, 1000, (2, 5, 1))
    x[0, 0] = 7  # a constant row: S2 = eps term only
    x[0, 1, : c // 2], x[0, 1, c // 2:] = -(1 << 21), 1 << 21  # the largest S2 (near 2^62)
    gamma = rng.normal(0, 1, c)
    gamma[:2] = (-1.0, 1e-4)  # negative and small gammas
    qmax = (1 << bits) - 1
    ln = nonlinear.IntLayerNorm.build(gamma, rng.normal(0, 0.2, c), 1e-6, 1.0 / (1 << 18), 4.0 / qmax, qmax // 2,
                                      0, qmax)
    for eps_term in (ln.eps_term, 0):
        attrs = {"sqrt_c": ln.sqrt_c, "eps_term": eps_term, "out_zp": ln.out_zp, "qmin": 0, "qmax": qmax}
        consts = {"multiplier": ln.multiplier, "shift": ln.shift, "sign": ln.sign, "beta_fixed": ln.beta_fixed}
        out = check_op("layernorm", [(x, -(1 << 22), 1 << 22)], attrs, consts)
        assert (out == 0).any() and (out == qmax).any()


@pytest.mark.parametrize("signed_activations", [False, True], ids=["u8s8", "s8s8"])
def test_token0_bounds_of_linear_and_layernorm(signed_activations):
    """Class-token clipping: token 0 (axis -2) clamped to its own per-channel bounds, wider and
    narrower than the others', in the GEMM's epilogue and the LayerNorm's."""
    rng = np.random.default_rng(5)
    n, k = 16, 32
    x = rng.integers(0, 16, (2, 5, k))
    x[:, 0] = rng.integers(-40, 100, (2, k))  # token 0's codes leave the others' 0..15
    req = _requant(rng, n, 1e-3, 1e-1, 7, 0, 15)
    bounds = {"qmin0": rng.integers(-60, 8, n), "qmax0": rng.integers(8, 120, n)}
    consts = {"weight": rng.integers(0, 16, (n, k)), "weight_zp": rng.integers(0, 16, n),
              "bias": rng.integers(-300, 300, n), **req, **bounds}
    out = check_op("linear", [(x, -40, 99)], {"in_zp": 7, "rounding": "half_up", "weight_bits": 4}, consts,
                   signed_activations)
    assert out[:, 1:].min() >= 0 and out[:, 1:].max() <= 15
    assert (out[:, 0] < 0).any() and (out[:, 0] > 15).any() and (out[:, 0] == bounds["qmax0"]).any()
    c = 24
    stream = np.round(rng.normal(0, 1 << 19, (2, 5, c))).astype(np.int64)
    ln = nonlinear.IntLayerNorm.build(rng.normal(0, 1, c), rng.normal(0, 0.2, c), 1e-6, 1.0 / (1 << 18), 0.05, 7,
                                      0, 15)
    attrs = {"sqrt_c": ln.sqrt_c, "eps_term": ln.eps_term, "out_zp": 7, "qmin": 0, "qmax": 15}
    consts = {"multiplier": ln.multiplier, "shift": ln.shift, "sign": ln.sign, "beta_fixed": ln.beta_fixed,
              "qmin0": rng.integers(-30, 3, c), "qmax0": rng.integers(12, 60, c)}
    out = check_op("layernorm", [(stream, -(1 << 22), 1 << 22)], attrs, consts)
    assert out[:, 1:].min() >= 0 and out[:, 1:].max() <= 15 and (out[:, 0] < 0).any() and (out[:, 0] > 15).any()


def _kernel(fn, values: np.ndarray) -> np.ndarray:
    """An elementwise TE kernel (isqrt, ilog2) on an int64 vector through TVM."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(values.shape, "int64"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(fn, x))
        bb.emit_func_output(out)
    return run_tvm(bb.get(), values)


def test_isqrt_is_exact_to_2_62():
    rng = np.random.default_rng(0)
    roots = np.concatenate([np.arange(0, 3000), rng.integers(0, 1 << 31, 3000), [(1 << 31) - 1]])
    n = np.concatenate([roots * roots, roots * roots - 1, roots * roots + 1, rng.integers(0, 1 << 62, 3000),
                        [(1 << 62) - 1]])
    n = n[(n >= 0) & (n < 1 << 62)]
    np.testing.assert_array_equal(_kernel(isqrt, n), nonlinear.isqrt(n))


def test_floor_div_small_is_floor_division():
    """LayerNorm's division by its row's 2r through float64 (a product with the reciprocal): exact
    quotients, one below and one above a multiple, negative numerators,
    numerators up to 2^62, quotients up to 2^48."""
    from tvm import te

    from tvm_backends.lower import floor_div_small

    rng = np.random.default_rng(0)
    d = np.concatenate([rng.integers(1, 1 << 14, 4000), rng.integers(1 << 30, 1 << 40, 4000), [1, 2, 1 << 13]])
    top = np.minimum(1 << 48, (1 << 61) // d)  # |q d| < 2^61: no int64 overflow below
    q = (rng.random(len(d)) * 2 - 1) * top
    q = np.concatenate([q.astype(np.int64), [0, 1, -1]])
    d = np.concatenate([d, [7, 1 << 13, 3]])
    n = np.concatenate([q * d, q * d - 1, q * d + 1, q * d + d // 2])
    d = np.tile(d, 4)
    assert np.abs(n).max() > 1 << 60  # far past float64's integers
    pair = np.stack([n, d])

    def fn(x):  # LayerNorm's form: a multiply by the row's float64 1 / d
        return te.compute((x.shape[1],), lambda i: floor_div_small(x[0, i], x[1, i], 1.0 / x[1, i].astype("float64")),
                          name="div")

    np.testing.assert_array_equal(_kernel(fn, pair), n // d)


def test_ilog2_matches_the_reference():
    rng = np.random.default_rng(0)
    powers = np.left_shift(1, np.arange(62, dtype=np.int64))
    v = np.concatenate([np.arange(1, 5000), powers, powers[1:] - 1, powers + 1, rng.integers(1, 1 << 62, 5000)])
    np.testing.assert_array_equal(_kernel(ilog2_fixed, v), nonlinear._ilog2_fixed(v))


def test_exp2_tables_cover_every_exponent():
    """The softmax's lookup tables equal the reference's shift and ilog2 for every -t, the capped tail included."""
    from tvm_backends.lower import exp2_tables

    sm = nonlinear.IntSoftmaxLog2.build(0.01, 4)
    e, log_e = exp2_tables(sm)
    n = np.arange(70 << nonlinear.EXP_FRAC_BITS)
    whole, frac = n >> nonlinear.EXP_FRAC_BITS, n & ((1 << nonlinear.EXP_FRAC_BITS) - 1)
    want = np.where(whole > 62, 0, sm.exp2_table[frac] >> np.minimum(whole, 62))
    at = np.minimum(n, len(e) - 1)
    np.testing.assert_array_equal(e[at], want)
    np.testing.assert_array_equal(log_e[at], nonlinear._ilog2_fixed(np.maximum(want, 1)))


@pytest.mark.parametrize("bits, top, scale, tokens, per_octave", [
    (4, 15, 0.02, 17, 1), (3, 7, 0.3, 17, 1), (8, 15, 0.01, 32, 1), (4, 9, 2.0, 32, 1),  # 32 tokens: no padding
    (8, 15, 0.01, 32, 2), (4, 5, 0.3, 17, 2), (8, 15, 0.01, 17, 8), (8, 15, 0.3, 32, 16)])
def test_attention(bits, top, scale, tokens, per_octave):
    """Logit scales from smooth to peaked (many zero probabilities), top codes below 2^bits - 1 too;
    log2, log-sqrt2 and finer codes (a 4-bit log-sqrt2 row runs past its 2^bits - 1 codes)."""
    rng = np.random.default_rng(bits + top)
    qmax = (1 << bits) - 1
    q, k, v = (rng.integers(0, qmax + 1, (2, 3, tokens, 32)) for _ in range(3))
    q[0, 0, 0], k[0, 0] = qmax, qmax  # one row of equal logits
    sm = nonlinear.IntSoftmaxLog2.build(scale / qmax, bits)
    attrs = {"q_zp": qmax // 2, "k_zp": qmax // 2 + 1, "v_zp": 1, "sm_multiplier": sm.multiplier,
             "sm_shift": sm.shift, "bits": bits, "max_code": top, "codes_per_octave": per_octave}
    for vnni in (False, True):  # the weighted sum as one product, or as two of the weights' bytes
        check_op("attention", [(t, 0, qmax) for t in (q, k, v)], attrs, vnni=vnni)
    vnni = has_vnni(host_target())
    assert_products_scheduled(op_module("attention", [(t, 0, qmax) for t in (q, k, v)], attrs, vnni=vnni), vnni)


def assert_products_scheduled(mod: tvm.IRModule, vnni: bool, values_dot: bool = True) -> None:
    """Both attention products took their schedule, not the generic fallback: on a VNNI host
    vpdpbusd (the weighted sum only where `values_dot`: a head dimension of whole 16-lane blocks),
    elsewhere the column schedule (vector lanes over the output's last axis)."""
    kernels = scheduled_kernels(mod)
    for name in ("attention_logits", "attention_values"):
        dot = vnni and (values_dot or name == "attention_logits")
        assert ("vpdpbusd" if dot else "T.vectorized") in kernels[name].script(), name


@pytest.mark.parametrize("shift_mask", [False, True])
def test_windowed_attention(shift_mask):
    """Swin: 4 windows of 9 tokens, relative position bias on 8 finer logit bits, the shifted
    windows' mask (rows where most entries are masked, one where only the diagonal is left)."""
    rng = np.random.default_rng(int(shift_mask))
    bits, heads, window, groups = 4, 3, 9, 4
    q, k, v = (rng.integers(0, 16, (2, heads, groups * window, 8)) for _ in range(3))
    sm = nonlinear.IntSoftmaxLog2.build(0.05 / 15 / 256, bits)
    attrs = {"q_zp": 7, "k_zp": 8, "v_zp": 3, "sm_multiplier": sm.multiplier, "sm_shift": sm.shift, "bits": bits,
             "max_code": 15, "window": window, "logit_shift": 8}
    consts = {"bias": rng.integers(-3000, 3000, (heads, window, window))}
    if shift_mask:
        mask = rng.random((groups, window, window)) < 0.6
        mask[0] = ~np.eye(window, dtype=bool)
        mask[:, np.arange(window), np.arange(window)] = False
        consts["mask"] = mask.astype(np.int64)
    for vnni in (False, True):
        check_op("attention", [(t, 0, 15) for t in (q, k, v)], attrs, consts, vnni=vnni)
    vnni = has_vnni(host_target())
    assert_products_scheduled(op_module("attention", [(t, 0, 15) for t in (q, k, v)], attrs, consts, vnni=vnni),
                              vnni, values_dot=False)  # head dimension 8


def test_token_gathers_and_pooled_sum():
    """Window permutation (k = 1), 2x2 patch merging (k = 4), and the head's sum over tokens."""
    rng = np.random.default_rng(0)
    stream = rng.integers(*I32, (2, 16, 6), endpoint=True)
    check_op("gather_tokens", [(stream, *I32)], {}, {"index": rng.permutation(16)[:, None]})
    merged = check_op("gather_tokens", [(stream, *I32)], {}, {"index": rng.integers(0, 16, (4, 4))})
    assert merged.shape == (2, 4, 24)
    check_op("sum_tokens", [(stream, *I32)], {})  # 16 int32 values need an int64 sum
    check_op("sum_tokens", [(rng.integers(0, 16, (2, 49, 6)), 0, 15)], {})


def test_every_op_of_the_format_lowers():
    from intprog.program import OPS
    from tvm_backends.lower import KERNELS

    assert set(KERNELS) == set(OPS)


def test_data_movement_and_tables():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 3, 8, 8))
    patches = check_op("patchify", [(image, 0, 255)], {"patch": 4})
    check_op("prepend", [(patches, 0, 255)], {}, {"token": rng.integers(-300, 300, 48)})
    stream = rng.integers(*I32, (2, 5, 12), endpoint=True)
    check_op("add_const", [(stream, *I32)], {}, {"value": rng.integers(-(1 << 40), 1 << 40, (5, 12))})
    check_op("add", [(stream, *I32), (stream[::-1].copy(), *I32)], {})  # int32 + int32 needs int64
    heads = check_op("split_heads", [(stream, *I32)], {"start": 4, "dim": 8, "heads": 2})
    check_op("merge_heads", [(heads, *I32)], {})
    check_op("take_token", [(stream, *I32)], {"index": 3})
    codes = np.arange(-128, 128).reshape(2, 128)
    check_op("lut", [(codes, -128, 127)], {"in_bits": 8}, {"table": rng.integers(0, 16, 256)})


def test_containers_are_the_narrowest():
    assert [container(0, 255), container(-1, 127), container(0, 256), container(-(1 << 31), 0),
            container(0, 1 << 31)] == ["uint8", "int8", "int16", "int32", "int64"]


@pytest.mark.parametrize("vnni", [False, True])  # lowered for a VNNI target too, on any host
@pytest.mark.parametrize("model", ["vit_fmnist", "swin_fmnist"])
@pytest.mark.parametrize("bits", [8, 4, 3])
def test_zoo_matches_the_reference(zoo_program, bits, model, vnni):
    program, codes, _ = zoo_program(bits, model)
    lowered = lower(program, batch=16, vnni=vnni)
    assert (lowered.input_dtype, lowered.output_dtype, lowered.output_shape) == ("uint8", "int32", (16, 10))
    vm = build(lowered.mod)
    got = np.concatenate([vm["main"](tvm.runtime.tensor(codes[i:i + 16].astype("uint8"))).numpy()
                          for i in range(0, len(codes), 16)])
    np.testing.assert_array_equal(got, reference.run(program, codes))


def test_cuda_kernel_launches_count_every_bound_nest_of_every_call():
    """`cuda.schedules.kernel_launches`: the plain GPU binding makes each stage of a LayerNorm a kernel
    of its own, so two LayerNorm calls (each function called once) launch as many kernels as the
    unscheduled functions have stages (the second LayerNorm has its output cast fused in)."""
    from tvm_backends import targets
    from tvm_backends.build import resolve
    from tvm_backends.cuda import schedules as cuda_schedules

    c, qmax = 16, 15
    ln = nonlinear.IntLayerNorm.build(np.ones(c), np.zeros(c), 1e-6, 1.0, 4.0 / qmax, 7, 0, qmax)
    attrs = {"sqrt_c": ln.sqrt_c, "eps_term": ln.eps_term, "out_zp": ln.out_zp, "qmin": 0, "qmax": qmax}
    consts = {"multiplier": ln.multiplier, "shift": ln.shift, "sign": ln.sign, "beta_fixed": ln.beta_fixed}
    ops = [{"op": "layernorm", "in": [x], "out": y, "attrs": attrs, "consts": {r: f"{y}.{r}" for r in consts}}
           for x, y in (("x", "h"), ("h", "y"))]
    mod = lower_graph({"x": ((1, 3, c), -1000, 1000)}, ops,
                      {f"{y}.{r}": np.asarray(v, np.int64) for y in ("h", "y") for r, v in consts.items()}, "y")
    target = tvm.target.Target(resolve(targets.PRESETS["cuda-sm90"]))
    with target:
        scheduled = cuda_schedules.schedule(mod, target)
    funcs = [tvm.s_tir.Schedule(f) for f in tvm.relax.get_pipeline("zero")(mod).functions.values()
             if isinstance(f, tvm.tirx.PrimFunc)]
    stages = [len(s.get_child_blocks(s.get_sblock("root"))) for s in funcs]
    assert len(stages) == 2 and min(stages) > 5 and cuda_schedules.kernel_launches(scheduled) == sum(stages)
