"""CPU schedules for lowered integer programs (llvm targets: x86 and aarch64).

TVM's default CPU pipeline neither fuses nor schedules. `schedule` fuses (legalize + FuseOps +
FuseTIR, as relax.get_default_pipeline does) and then schedules every kernel:
- linear layers (weights as [N, K]): the reduction over K is innermost and accumulates in a
  register (cache_write to "local"), so LLVM vectorizes it as an integer dot product (on ARM with
  +dotprod it picks sdot for the s8 x s8 operands that `lower` produces); big ones run rows in
  parallel;
- attention's two products, whose reductions are short (a head's 16-32 dims, a window's tokens):
  by columns, 16 outputs of a row as vector lanes (`_schedule_by_columns`);
- u8 x s8 linear GEMMs are tensorized (`_tensorize_gemm`): on avx512vnni hosts with vpdpbusd
  (weights repacked [N/16, K/4, 16, 4]; up to 4 accumulators of 16 lanes in registers); on AVX2
  hosts without VNNI with vpmaddubsw (4-bit weights: 16 terms per int16 sum, then one vpmaddwd)
  or vpmaddwd on int16 operands (8-bit weights), register tiles of rows x 8-lane column blocks,
  rows padded to whole tiles, the (column block, row tile) loop in parallel for big GEMMs;
- elementwise stages inlined into their consumers, the contiguous axis vectorized.
Kernels come back marked scheduled, so that `tvm.compile(schedule(mod, target), target)` keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import relax, s_tir, tirx

from tvm_backends.lower import MATERIALIZE

# below this many multiply-adds a parallel loop costs more than it saves
_PARALLEL_MIN_MACS = 1 << 21
# The same for an elementwise stage, and for the row reductions of LayerNorm, softmax and the
# zero-point sums (rows x reduced elements; contractions keep _PARALLEL_MIN_MACS): DeiT-Tiny's
# LayerNorm (197 x 192) and softmax (3 x 197 x 197) stages stayed serial at 2^16 and 2^21; from
# these sizes on the second thread pays (per-kernel 2-thread speedups, one-off profile on the 2-core
# Zen 5 host: LayerNorm 1.00 -> 1.45, softmax 1.53 -> 1.71)
_PARALLEL_MIN_ELEMENTS = 1 << 15
_PARALLEL_MIN_REDUCED = 1 << 14
# tvm_backends.lower's row reductions (a sum or maximum along each row, no product)
_ROW_REDUCTIONS = {"row_sum", "row_s2", "row_max", "row_total", "q_sum", "k_sum", "activation_sum", "weight_sum"}
_VECTOR = 16
_TILE_ROWS = 4  # rows of attention's register tiles


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Legalize and fuse the Relax ops into TIR kernels, as the default pipeline does."""
    from tvm.relax.backend import cpu_generic

    with target:
        passes = cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)
        return tvm.transform.Sequential(passes)(mod)


def schedule(mod: tvm.IRModule, target: tvm.target.Target | dict | str) -> tvm.IRModule:
    """Fused and scheduled module for an llvm target; compile it with tvm.compile(mod, target)."""
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if target.kind.name != "llvm":
        raise ValueError(f"CPU schedules are for llvm targets; {target.kind.name} kernels are scheduled by dlight")
    mod = fuse(mod, target)
    kinds = _gemm_kinds(target)
    if kinds:
        mod = _tensorize_gemm(mod, kinds)
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.is_scheduled", False):
            mod[gv] = _schedule_kernel(func, kinds)
    return relax.transform.DeadCodeElimination()(mod)


def _schedule_kernel(func: tirx.PrimFunc, kinds: list[_Gemm]) -> tirx.PrimFunc:
    """Elementwise stages inlined, then each block scheduled: attention's u8 x s8 logits on the
    dot-product instruction where the target has VNNI, attention's products otherwise by columns,
    the rest by `_schedule_block`."""
    sch = s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        _inline(sch, block)
    names = [sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in names:
        block = sch.get_sblock(name)
        if name in _DOT_PRODUCTS and _VNNI in kinds:
            # schedule primitives and tensorize raise several TVM error types
            trial = _attempt(sch, name, lambda s, b, t=_BY_COLUMNS[name]: _tensorize_product(s, b, _VNNI, t),
                             Exception)
            if trial is not None:
                sch = trial
                continue
        if name in _BY_COLUMNS and _iter_types(sch, block)[-1] != 0:
            trial = _attempt(sch, name, lambda s, b, t=_BY_COLUMNS[name]: _schedule_by_columns(s, b, t),
                             s_tir.ScheduleError)
            if trial is not None:
                sch = trial
                continue
        _schedule_block(sch, block)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _attempt(sch: s_tir.Schedule, name: str, apply: Callable, errors: type[Exception]) -> s_tir.Schedule | None:
    """`apply(schedule, block)` on a fresh schedule of sch's module and its block `name` (not
    sch.copy(): TVM 0.27 fails to copy a schedule it tensorized); None where it raised `errors`,
    sch left as it was."""
    trial = s_tir.Schedule(sch.mod)
    try:
        apply(trial, trial.get_sblock(name))
    except errors:
        return None
    return trial


@dataclass(frozen=True)
class _Gemm:
    """A tensorized u8 x s8 -> i32 linear GEMM: one instruction (sequence) adds `group` products to
    each of `lanes` int32 outputs; the weights are repacked [N/lanes, K/group, lanes, group]. The
    register tile is `rows` rows x `chains` blocks of `lanes` columns. `max_weight`: the largest
    |W - s| the instruction is exact for (None: every int8)."""

    name: str
    lanes: int
    group: int
    intrin: Callable[[], str]
    rows: int
    chains: tuple[int, ...]
    max_weight: int | None = None
    a_dtype: str = "uint8"  # the activation operand as the instruction reads it (int16: widened once in a copy)
    step: int | None = None  # terms per weight vector, if fewer than `group`

    def packed_shape(self, n: int, k: int) -> tuple[int, ...]:
        """[N/lanes, K/group, lanes, group], or [N/lanes, K/group, group/step, lanes, step] with `step`."""
        if self.step:
            return (n // self.lanes, k // self.group, self.group // self.step, self.lanes, self.step)
        return (n // self.lanes, k // self.group, self.lanes, self.group)

    def layout(self, i, j) -> tuple:
        """Where weight [i, j] goes in `packed_shape`."""
        if self.step:
            return (i // self.lanes, j // self.group, j % self.group // self.step, i % self.lanes, j % self.step)
        return (i // self.lanes, j // self.group, i % self.lanes, j % self.group)

    def pack(self, w):
        """[N, K] int8 weights in the kernel's layout."""
        import numpy as np

        n, k = w.shape
        if self.step:
            return np.ascontiguousarray(w.reshape(n // self.lanes, self.lanes, k // self.group, self.group // self.step,
                                                  self.step).transpose(0, 2, 3, 1, 4))
        return np.ascontiguousarray(w.reshape(n // self.lanes, self.lanes, k // self.group, self.group)
                                    .transpose(0, 2, 1, 3))


def _register_intrin(name: str, lanes: int, group: int, impl_body: Callable, a_dtype: str = "uint8",
                     step: int | None = None) -> str:
    """Register c[lanes] (int32, local) += sum_k a[k] (uint8, or `a_dtype`) * b[k // step, lanes, k % step] (int8),
    k < group, with `impl_body` (a, b, c -> the new int32xlanes value of c) as its implementation:
    the weights of `group` terms come as group / step slices of [lanes, step], each one vector.
    Written out here: importing tvm.s_tir.tensor_intrin registers every target's intrinsics, which
    takes 40-80 s."""
    step = step or group
    sub = group // step
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    try:
        TensorIntrin.get(name)
        return name
    except Exception:
        pass

    def widened(x):  # an activation copy widened by unsafe_set_dtype is read back through a cast to uint8
        return x if a_dtype in ("uint8", "int8") else T.cast(x, "uint8")

    if sub > 1:
        @T.prim_func(s_tir=True)
        def desc(a: T.Buffer((group,), a_dtype, offset_factor=1),
                        b: T.Buffer((sub, lanes, step), "int8", offset_factor=1),
                        c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:group], b[0:sub, 0:lanes, 0:step])
                T.writes(c[0:lanes])
                for i in T.serial(0, lanes):
                    for k in T.serial(0, group):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            c[vi] = c[vi] + T.cast(widened(a[vk]), "int32") * T.cast(b[vk // step, vi, vk % step],
                                                                                     "int32")

        @T.prim_func(s_tir=True)
        def impl(a: T.Buffer((group,), a_dtype, offset_factor=1),
                        b: T.Buffer((sub, lanes, step), "int8", offset_factor=1),
                        c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:group], b[0:sub, 0:lanes, 0:step])
                T.writes(c[0:lanes])
                c[T.ramp(T.int32(0), 1, lanes)] = impl_body(a, b, c)
    else:
        @T.prim_func(s_tir=True)
        def desc(a: T.Buffer((group,), a_dtype, offset_factor=1), b: T.Buffer((lanes, group), "int8", offset_factor=1),
                 c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
                T.writes(c[0:lanes])
                for i in T.serial(0, lanes):
                    for k in T.serial(0, group):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            c[vi] = c[vi] + T.cast(widened(a[vk]), "int32") * T.cast(b[vi, vk], "int32")

        @T.prim_func(s_tir=True)
        def impl(a: T.Buffer((group,), a_dtype, offset_factor=1), b: T.Buffer((lanes, group), "int8", offset_factor=1),
                 c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
                T.writes(c[0:lanes])
                c[T.ramp(T.int32(0), 1, lanes)] = impl_body(a, b, c)

    TensorIntrin.register(name, desc, impl)
    return name


def _broadcast_dot(intrinsic: str, lanes: int, a_dtype: str) -> Callable:
    """An intrinsic body: c[lanes] + one instruction's dot products of 4 activation bytes, broadcast
    to every lane, with each lane's 4 weight bytes."""
    from tvm.script import tirx as T

    def body(a, b, c):
        a_bytes = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], f"{a_dtype}x4"), dtype="int32"), lanes),
                                dtype=f"int8x{4 * lanes}")
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(intrinsic), c.vload([0], dtype=f"int32x{lanes}"),
                                       a_bytes, b.vload([0, 0], dtype=f"int8x{4 * lanes}"), dtype=f"int32x{lanes}")

    return body


def _vnni_intrin() -> str:
    """u8 x s8 -> i32 dot product of 16 lanes by 4 (vpdpbusd): TVM 0.27's VNNI_DOT_16x4_INTRIN with
    the operands that this LLVM's llvm.x86.avx512.vpdpbusd.512 takes (<64 x i8>, not <16 x i32>)."""
    return _register_intrin("intprog_vnni_16x4_u8i8i32_local", 16, 4,
                            _broadcast_dot("llvm.x86.avx512.vpdpbusd.512", 16, "uint8"))


def _avx2_u8_intrin() -> str:
    """u8 x s8 -> i32, 8 lanes by 4 on AVX2: vpmaddubsw (pairs of u8 x s8 products summed to int16,
    saturating) then vpmaddwd by ones (pairs of int16 summed to int32). Exact only where a pair's sum
    stays within int16: 2 * 255 * |w| <= 32767, i.e. |w| <= 64 (the 3/4-bit weights)."""
    from tvm.script import tirx as T

    def body(a, b, c):
        a_i8x32 = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 8),
                                dtype="int8x32")
        pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a_i8x32,
                                        b.vload([0, 0], dtype="int8x32"), dtype="int16x16")
        quads = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs,
                                        T.broadcast(T.int16(1), 16), dtype="int32x8")
        return c.vload([0], dtype="int32x8") + quads

    return _register_intrin("intprog_avx2_8x4_u8i8i32_local", 8, 4, body)


def _avx2_u8_16_intrin() -> str:
    """u8 x s8 -> i32, 8 lanes by 16 on AVX2: four vpmaddubsw (4 terms each) whose int16 pair sums are
    added in int16 (vpaddw), then one vpmaddwd by ones: 5 multiplies per 128 products instead of 8.
    Exact where 8 products stay within int16: 8 * 255 * |w| <= 32767, i.e. |w| <= 16 (4-bit weights
    minus their zero points, 3-bit ones)."""
    from tvm.script import tirx as T

    def body(a, b, c):
        total = None
        for s in range(4):
            a_i8x32 = T.reinterpret(T.broadcast(T.reinterpret(a.vload([4 * s], "uint8x4"), dtype="int32"), 8),
                                    dtype="int8x32")
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a_i8x32,
                                            b.vload([s, 0, 0], dtype="int8x32"), dtype="int16x16")
            total = pairs if total is None else total + pairs
        quads = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), total,
                                        T.broadcast(T.int16(1), 16), dtype="int32x8")
        return c.vload([0], dtype="int32x8") + quads

    return _register_intrin("intprog_avx2_8x16_u8i8i32_local", 8, 16, body, step=4)


def _avx2_i16_intrin() -> str:
    """u8 x s8 -> i32, 8 lanes by 2 on AVX2, exact for every int8 weight: both operands widened to
    int16 (vpmovsxbw), then vpmaddwd (pairs of int16 products summed to int32)."""
    from tvm.script import tirx as T

    def body(a, b, c):
        a_i16x16 = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "int16x2"), dtype="int32"), 8),
                                 dtype="int16x16")
        prods = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a_i16x16,
                                        T.Cast("int16x16", b.vload([0, 0], dtype="int8x16")), dtype="int32x8")
        return c.vload([0], dtype="int32x8") + prods

    return _register_intrin("intprog_avx2_8x2_i16i8i32_local", 8, 2, body, "int16")


def _sdot_intrin() -> str:
    """s8 x s8 -> i32 dot product of 4 lanes by 4 on ARM's dot-product extension (sdot, Armv8.2
    +dotprod: the Pi 5's Cortex-A76), the activation bytes broadcast as for vpdpbusd."""
    return _register_intrin("intprog_sdot_4x4_i8i8i32_local", 4, 4,
                            _broadcast_dot("llvm.aarch64.neon.sdot.v4i32.v16i8", 4, "int8"), "int8")


_VNNI = _Gemm("vnni", 16, 4, _vnni_intrin, rows=1, chains=(4, 3, 2, 1))
# 4 rows x 4 blocks of 4 columns: 16 accumulators, 4 weight and 4 activation vectors of the 32 NEON registers
_SDOT = _Gemm("sdot", 4, 4, _sdot_intrin, rows=4, chains=(4, 2, 1), a_dtype="int8")
# register tiles: 12 accumulators of the 16 AVX2 registers (kernel timings in docs/tvm.md)
_AVX2_U8_16 = _Gemm("avx2u8x16", 8, 16, _avx2_u8_16_intrin, rows=3, chains=(4, 2, 1), max_weight=16, step=4)
_AVX2_U8 = _Gemm("avx2u8", 8, 4, _avx2_u8_intrin, rows=3, chains=(4, 2, 1), max_weight=64)
_AVX2_I16 = _Gemm("avx2i16", 8, 2, _avx2_i16_intrin, rows=6, chains=(2, 1), a_dtype="int16")
_GEMMS = (_VNNI, _SDOT, _AVX2_U8_16, _AVX2_U8, _AVX2_I16)


def has_vnni(target: tvm.target.Target | dict | str) -> bool:
    """Whether an llvm target has x86 VNNI (vpdpbusd): `lower(..., vnni=...)` shapes attention for it."""
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    return target.kind.name == "llvm" and bool(tvm.target.codegen.llvm_cpu_has_features("avx512vnni", target))


def _gemm_kinds(target: tvm.target.Target) -> list[_Gemm]:
    """The tensorized GEMMs this target has, preferred first."""
    if has_vnni(target):
        return [_VNNI]
    if tvm.target.codegen.llvm_cpu_has_features("avx2", target):
        return [_AVX2_U8_16, _AVX2_U8, _AVX2_I16]
    if tvm.target.codegen.llvm_cpu_has_features("dotprod", target):
        return [_SDOT]
    return []


def _dense_weight(func: tirx.PrimFunc) -> tuple[int, int, int, str] | None:
    """(index of the weight parameter, N, K, activation dtype) of a kernel whose "dense" block is a
    u8 x s8 or s8 x s8 GEMM with a constant-shaped [N, K] weight parameter; None for other kernels."""
    sch = s_tir.Schedule(func)
    try:
        block = sch.get(sch.get_sblock("dense"))
    except Exception:  # no such block
        return None
    reads = [r.source for r in block.reads]
    if len(reads) != 2 or str(reads[0].ty.dtype) not in ("uint8", "int8") or str(reads[1].ty.dtype) != "int8" \
            or len(reads[1].ty.shape) != 2:
        return None
    for i, prm in enumerate(func.params):
        if prm.same_as(reads[1]):
            n, k = (int(d) for d in reads[1].ty.shape)
            return i, n, k, str(reads[0].ty.dtype)
    return None


def _tensorize_gemm(mod: tvm.IRModule, kinds: list[_Gemm]) -> tvm.IRModule:
    """Linear layers whose GEMM is u8 x s8 (activations starting at 0) run on the target's dot-product
    instructions (`_Gemm`): the kernel reads its int8 weight constant packed [N/lanes, K/group,
    lanes, group], and every call passes the constant repacked so. The kind is chosen per kernel: the
    first of `kinds` that fits N and K and is exact for the weights of every call of it. A register
    tile of `rows` rows x `chains` blocks of `lanes` columns accumulates in registers (`cache_write`
    to local, the requantization epilogue inlined into the write-back); column blocks are outermost,
    so that a block's weights stay in L1 while the rows stream past them, and the (column block,
    row tile) loop runs in parallel for big GEMMs. Kernels that do not match keep the generic schedule."""
    import numpy as np

    calls: dict[str, list[np.ndarray]] = {}
    dense = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.is_scheduled", False):
            found = _dense_weight(func)
            if found is not None:
                dense[gv.name_hint] = found
    main = mod["main"]
    for binding in _bindings(main):
        value = binding.value
        if (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir")
                and value.args[0].name_hint in dense):
            arg = value.args[1].fields[dense[value.args[0].name_hint][0]]
            calls.setdefault(value.args[0].name_hint, []).append(
                arg.value.numpy() if hasattr(arg, "value") else None)

    twins: dict[str, tuple[tirx.PrimFunc, int, _Gemm]] = {}  # kernel -> (its twin, index of the weight, kind)
    for gv, func in list(mod.functions_items()):
        name = gv.name_hint
        if name not in dense or not calls.get(name) or any(w is None for w in calls[name]):
            continue
        index, n, k, a_dtype = dense[name]
        wmax = max(int(np.abs(w.astype(np.int64)).max(initial=0)) for w in calls[name])
        for kind in kinds:
            if n % kind.lanes or k % kind.group or (kind.max_weight is not None and wmax > kind.max_weight) \
                    or (a_dtype == "int8") != (kind.a_dtype == "int8"):
                continue
            new = _tensorized(func, kind, n, k)
            if new is not None and _weight_param(func, new, kind.packed_shape(n, k)) == index:
                twins[name] = (new.with_attr("tirx.is_scheduled", True), index, kind)
                break
    if not twins:
        return mod
    bb = relax.BlockBuilder(mod)  # new globals (typed): the old ones' types still have [N, K] weights
    packed = {name: (bb.add_func(func, f"{name}_{kind.name}"), i, kind) for name, (func, i, kind) in twins.items()}
    mod = bb.get()
    main = mod["main"]
    blocks = []
    for blk in main.body.blocks:
        bindings = []
        for binding in blk.bindings:
            value = binding.value
            if (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir")
                    and value.args[0].name_hint in packed):
                args = list(value.args[1].fields)
                kernel, i, kind = packed[value.args[0].name_hint]
                args[i] = relax.const(kind.pack(args[i].value.numpy()), "int8")
                value = relax.Call(value.op, [kernel, relax.Tuple(args)], value.attrs, value.ty_args)
            bindings.append(relax.VarBinding(binding.var, value))
        blocks.append(type(blk)(bindings))
    mod["main"] = relax.Function(main.params, relax.SeqExpr(blocks, main.body.body), main.ret_ty, main.is_pure,
                                 main.attrs)
    return mod


def tir_calls(mod: tvm.IRModule) -> dict[str, int]:
    """How often `mod`'s main calls each TIR function (call_tir), by name."""
    import collections

    calls: collections.Counter[str] = collections.Counter()

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == "relax.call_tir":
            calls[expr.args[0].name_hint] += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return dict(calls)


def gemm_kernels(mod: tvm.IRModule) -> dict[str, int]:
    """A scheduled module's linear-layer GEMM calls by kernel: a tensorized kind's name (`_Gemm`), or
    "generic" (the reduction innermost, one output at a time), so that a build says which of its
    GEMMs run on the target's dot-product instruction."""
    kinds = [g.name for g in _GEMMS]
    calls, out = tir_calls(mod), {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        kind = next((k for k in kinds if gv.name_hint.endswith(f"_{k}")), None)
        if kind is None and (_has_block(func, "dense") or _has_block(func, "dense_update")):  # as scheduled
            kind = "generic"
        if kind is not None:
            out[kind] = out.get(kind, 0) + calls.get(gv.name_hint, 0)
    return out


def _has_block(func: tirx.PrimFunc, name: str) -> bool:
    try:
        s_tir.Schedule(func).get_sblock(name)
    except Exception:  # no such block (TVM raises its own error types)
        return False
    return True


def _bindings(func: relax.Function):
    for blk in func.body.blocks:
        yield from blk.bindings


def _rows(sch: s_tir.Schedule, loops: list) -> int:
    m = 1
    for loop in loops:
        m *= max(_extent(sch, loop), 1)
    return m


def _tensorized(func: tirx.PrimFunc, kind: _Gemm, n: int, k: int) -> tirx.PrimFunc | None:
    """`func` with its dense block tensorized as `kind` (see `_tensorize_gemm`), or None."""
    sch = s_tir.Schedule(func)
    for blk in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(blk).name_hint not in ("to_int8", "to_uint8"):  # the activations' 8-bit copy stays
            _inline(sch, blk)
    try:
        block = sch.get_sblock("dense")
        *rows, nl, kl = sch.get_loops(block)
        m = _rows(sch, rows)
        if m > kind.rows and _extent(sch, rows[-1]) % kind.rows:  # pad the rows to whole tiles
            sch.pad_einsum(block, [1] * (len(rows) - 1) + [kind.rows, 1, 1])
            *rows, nl, kl = sch.get_loops(block)
            m = _rows(sch, rows)
        if len(rows) > 1:  # one row iterator: tensorize cannot blockize bindings of fused loops' // and %
            extents = [_extent(sch, r) for r in rows]

            def flat(*ax):
                index = ax[0]
                for a, e in zip(ax[1:len(rows)], extents[1:], strict=True):
                    index = index * e + a
                return (index, *ax[len(rows):])

            sch.transform_block_layout(block, tvm.tirx.IndexMap.from_func(flat, ndim=len(rows) + 2))
            *rows, nl, kl = sch.get_loops(block)
        if kind.a_dtype == "int16":  # the activations widened once, in a copy (the padded one if any)
            source = sch.get(block).reads[0].source
            copy = next((p for p in sch.get_producers(block) if sch.get(p).writes[0].source.same_as(source)), None)
            if copy is None or not sch.get(copy).name_hint.endswith("_pad"):
                copy = sch.cache_read(block, 0, "global")
            sch.unsafe_set_dtype(copy, 0, kind.a_dtype)
        sch.transform_layout(block, ("read", 1), kind.layout)
        ml = sch.fuse(*rows) if len(rows) > 1 else rows[0]
        tile = min(kind.rows, m)
        mo, mi = sch.split(ml, [None, tile])
        chains = next(c for c in kind.chains if (n // kind.lanes) % c == 0)
        no, nc, ni = sch.split(nl, [None, chains, kind.lanes])
        ko, ki = sch.split(kl, [None, kind.group])
        sch.reorder(no, mo, ko, mi, nc, ni, ki)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, mo)
        inlined = True
        while inlined:  # the un-padding copy, then the requantization epilogue, into the write-back
            inlined = False
            for consumer in sch.get_consumers(acc):
                try:
                    sch.reverse_compute_inline(consumer)
                    inlined = True
                except s_tir.ScheduleError:  # e.g. a slice of the rows: stays a stage of its own
                    pass
        outer = sch.fuse(no, mo)
        if m * n * k >= _PARALLEL_MIN_MACS:
            sch.parallel(outer)
        sch.decompose_reduction(block, ko)
        sch.unroll(mi)
        sch.unroll(nc)
        sch.tensorize(ni, kind.intrin())
        _schedule_elementwise(sch, sch.get_loops(acc)[1:])
    except Exception:  # schedule primitives and tensorize raise several TVM error types
        return None
    for blk in sch.get_child_blocks(sch.get_sblock("root")):
        if not sch.get(blk).name_hint.startswith("dense"):
            _schedule_block(sch, blk)
    return sch.mod["main"]


def _weight_param(old: tirx.PrimFunc, new: tirx.PrimFunc, shape: tuple[int, ...]) -> int | None:
    """Index of the parameter whose buffer changed to the packed weight shape."""
    for i, (a, b) in enumerate(zip(_param_shapes(old), _param_shapes(new), strict=True)):
        if a != b and b == shape:
            return i
    return None


def _param_shapes(func: tirx.PrimFunc) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in prm.ty.shape) for prm in func.params]


def _inline(sch: s_tir.Schedule, block) -> None:
    """Inline an elementwise stage into its consumers (casts, adds, requantization epilogues),
    except the steps of isqrt and ilog2 that `lower` marks MATERIALIZE: each is read several times
    by the next, and inlining them would repeat their expressions exponentially."""
    stmt = sch.get(block)
    if MATERIALIZE in stmt.annotations or any(int(iv.iter_type) != 0 for iv in stmt.iter_vars):
        return
    try:
        sch.compute_inline(block)
    except s_tir.ScheduleError:  # e.g. a block that writes the function's output
        pass


def _iter_types(sch: s_tir.Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _extent(sch: s_tir.Schedule, loop) -> int:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else 0


def _schedule_block(sch: s_tir.Schedule, block) -> None:
    loops = sch.get_loops(block)
    types = _iter_types(sch, block)
    if len(loops) != len(types) or not loops:
        return
    spatial = [loop for loop, t in zip(loops, types, strict=True) if t == 0]
    reduce_ = [loop for loop, t in zip(loops, types, strict=True) if t != 0]
    if reduce_:
        if loops[: len(spatial)] != spatial:  # reduction not innermost: leave as is
            return
        _schedule_reduction(sch, block, spatial, reduce_)
    else:
        _schedule_elementwise(sch, spatial, parallel=True)


def _schedule_reduction(sch: s_tir.Schedule, block, spatial: list, reduce_: list) -> None:
    """Sum over the innermost axes in a register; the outer rows of a big reduction in parallel
    (where there are several: a batch-1 [1, T] stage has one)."""
    if not spatial:
        return
    size = 1
    for loop in spatial + reduce_:
        size *= max(_extent(sch, loop), 1)
    least = _PARALLEL_MIN_REDUCED if sch.get(block).name_hint in _ROW_REDUCTIONS else _PARALLEL_MIN_MACS
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, spatial[-1])
    if size >= least and _rows(sch, spatial[:-1]) > 1:  # before decompose_reduction, which it needs
        sch.parallel(sch.fuse(*spatial[:-1]))
    sch.decompose_reduction(block, reduce_[0])


# attention's two products (tvm_backends.lower._attention): block name -> whether the second operand
# is read transposed ("logits" = (q - zq)(k - zk)^T sums over the head dim, k as [.., tokens, dim],
# or its u8 x s8 core "logits_core"; "values" = weights (v - zv) sums over the tokens, v as
# [.., tokens, dim])
_BY_COLUMNS = {"logits": True, "logits_core": True, "values": False, "values_high": False, "values_low": False}
# the u8 x s8 products tensorized on VNNI (tvm_backends.lower._logits, _values)
_DOT_PRODUCTS = {"logits_core", "values_high", "values_low"}


def _schedule_by_columns(sch: s_tir.Schedule, block, transposed: bool) -> None:
    """out[i:i+4, j:j+16] += a[i:i+4, k] * b[k, j:j+16]: output columns as vector lanes, the
    reduction outside them, a register tile of 4 rows x 16 columns (4 independent accumulator
    chains that share each load of b); the (batch, head, row tile) loop in parallel for big ones.
    Rows are padded to a multiple of 4 and columns to a multiple of 16 (the Swin's 49-token windows,
    the ViT's 17 or 197 tokens), and k^T is a padded copy. With the reduction innermost instead,
    every output was a horizontal sum of only 16 or 32 products: 3x slower on the Swin's windows."""
    loops = sch.get_loops(block)
    size = _rows(sch, loops)
    *_, i, j, _ = loops
    pad = [1] * (len(loops) - 3) + [_TILE_ROWS if _extent(sch, i) % _TILE_ROWS else 1,
                                    _VECTOR if _extent(sch, j) % _VECTOR else 1, 1]
    if _extent(sch, j) % _VECTOR == 0 and transposed:
        sch.cache_read(block, 1, "global")
    if any(p > 1 for p in pad):
        sch.pad_einsum(block, pad)
    if transposed:
        sch.transform_layout(block, ("read", 1), lambda *ax: (*ax[:-2], ax[-1], ax[-2]))
    *outer, i, j, k = sch.get_loops(block)
    io, ii = sch.split(i, [None, _TILE_ROWS])
    jo, ji = sch.split(j, [None, _VECTOR])
    sch.reorder(io, jo, k, ii, ji)
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, jo)
    sch.unroll(ii)
    sch.vectorize(ji)  # before decompose_reduction, whose update block vectorize does not take
    if size >= _PARALLEL_MIN_MACS:
        sch.parallel(sch.fuse(*outer, io))
    sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(acc)[-1])


def _tensorize_product(sch: s_tir.Schedule, block, kind: _Gemm, transposed: bool) -> None:
    """One of attention's u8 x s8 products (tvm_backends.lower._logits, _values) as `kind`'s dot
    product: its int8 operand (a stage of the kernel: the keys, or v, padded to whole lanes or
    groups) written packed [.., columns/lanes, terms/group, lanes, group] (read transposed: [..,
    columns, terms], else [.., terms, columns]), a register tile of one row x up to 4 blocks of
    `lanes` columns, column blocks outermost so that their packed operand stays in L1 while the rows
    stream past, and the (batch, head, column block) loop in parallel for big ones."""
    loops = sch.get_loops(block)
    *batch, i, j, d = loops
    cols, terms = _extent(sch, j), _extent(sch, d)
    if not cols or cols % kind.lanes or not terms or terms % kind.group:
        raise ValueError(f"a product of {cols} columns x {terms} terms does not tile by {kind.lanes} x {kind.group}")
    size = _rows(sch, loops)
    if len(sch.get(block).reads[1].source.ty.shape) == len(batch) + 2:  # not packed yet by a sibling product
        sch.transform_layout(block, ("read", 1), lambda *ax: (
            *ax[:-2], *(kind.layout(ax[-2], ax[-1]) if transposed else kind.layout(ax[-1], ax[-2]))))
    chains = next(c for c in kind.chains if (cols // kind.lanes) % c == 0)
    jo, jc, ji = sch.split(j, [None, chains, kind.lanes])
    do, di = sch.split(d, [None, kind.group])
    sch.reorder(jo, i, do, jc, ji, di)
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, i)
    if size >= _PARALLEL_MIN_MACS:
        sch.parallel(sch.fuse(*batch, jo))
    sch.decompose_reduction(block, do)
    sch.unroll(jc)
    sch.tensorize(ji, kind.intrin())


def _schedule_elementwise(sch: s_tir.Schedule, spatial: list, parallel: bool = False) -> None:
    """The innermost (contiguous) axis vectorized in chunks of 16; a length that is not a multiple
    (197 or 257 tokens) is partitioned first into whole chunks and a scalar tail, where the loop
    holds one block (TVM 0.27's loop_partition crashes on a loop of several). With `parallel`, a
    stage of at least _PARALLEL_MIN_ELEMENTS runs its outer axes in parallel (the softmax's and
    LayerNorm's stages: serial, they capped the speedup of a second thread)."""
    n = _extent(sch, spatial[-1])
    if parallel and len(spatial) > 1 and _rows(sch, spatial) >= _PARALLEL_MIN_ELEMENTS:
        sch.parallel(sch.fuse(*spatial[:-1]))
    body = spatial[-1]
    if n % _VECTOR and n > _VECTOR and len(sch.get_child_blocks(body)) == 1:
        body, _ = sch.loop_partition(body, [n - n % _VECTOR, None])
    elif n % _VECTOR or n < _VECTOR:
        return
    _, inner = sch.split(body, [None, _VECTOR])
    sch.vectorize(inner)
