"""CPU schedules for lowered integer programs (llvm targets: x86 and aarch64).

TVM's default CPU pipeline neither fuses nor schedules. `schedule` fuses (legalize + FuseOps +
FuseTIR, as relax.get_default_pipeline does) and then schedules every kernel:
- linear layers (weights as [N, K]): the reduction over K is innermost and accumulates in a
  register (cache_write to "local"), so LLVM vectorizes it as an integer dot product (on ARM with
  +dotprod it picks sdot for the s8 x s8 operands that `lower` produces); big ones run rows in
  parallel;
- attention's two products, whose reductions are short (a head's 16-32 dims, a window's tokens):
  by columns, 16 outputs of a row as vector lanes (`_schedule_by_columns`);
- on avx512vnni hosts, u8 x s8 linear GEMMs are tensorized with vpdpbusd (weights repacked
  [N/16, K/4, 16, 4]; up to 4 accumulators of 16 lanes in registers, see `_tensorize_vnni`);
- elementwise stages inlined into their consumers, the contiguous axis vectorized.
Kernels come back marked scheduled, so that `tvm.compile(schedule(mod, target), target)` keeps them.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx

from tvm_backends.lower import MATERIALIZE

# below this many multiply-adds a parallel loop costs more than it saves
_PARALLEL_MIN_MACS = 1 << 21
_VECTOR = 16


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
    if tvm.target.codegen.llvm_cpu_has_features("avx512vnni", target):
        mod = _tensorize_vnni(mod)
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.is_scheduled", False):
            mod[gv] = _schedule_kernel(func)
    return relax.transform.DeadCodeElimination()(mod)


def _schedule_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Elementwise stages inlined, then each block scheduled: attention's products by columns, the
    rest by `_schedule_block`."""
    sch = s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        _inline(sch, block)
    names = [sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in names:
        block = sch.get_sblock(name)
        if name in _BY_COLUMNS and _iter_types(sch, block)[-1] != 0:
            trial = sch.copy()
            try:
                _schedule_by_columns(trial, trial.get_sblock(name), transposed=_BY_COLUMNS[name])
                sch = trial
                continue
            except s_tir.ScheduleError:  # keep the generic schedule
                pass
        _schedule_block(sch, block)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _vnni_intrin() -> str:
    """u8 x s8 -> i32 dot product of 16 lanes by 4 (vpdpbusd): TVM 0.27's VNNI_DOT_16x4_INTRIN with
    the operands that this LLVM's llvm.x86.avx512.vpdpbusd.512 takes (<64 x i8>, not <16 x i32>).
    Written out here: importing tvm.s_tir.tensor_intrin registers every target's intrinsics, which
    takes 40-80 s."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = "intprog_vnni_16x4_u8i8i32_local"
    try:
        TensorIntrin.get(name)
        return name
    except Exception:
        pass

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            a_i8x64 = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 16),
                                    dtype="int8x64")
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c.vload([0], dtype="int32x16"),
                a_i8x64, b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(name, desc, impl)
    return name


def _tensorize_vnni(mod: tvm.IRModule) -> tvm.IRModule:
    """Linear layers whose GEMM is u8 x s8 with N % 16 == 0 and K % 4 == 0 run on vpdpbusd: the
    kernel reads its int8 weight constant packed [N/16, K/4, 16, 4], and every call passes the
    constant repacked so. Each row accumulates up to 4 column blocks of 16 at once in registers
    (`cache_write` to local, the requantization epilogue inlined into the write-back): vpdpbusd's
    latency is hidden by the independent chains, where one accumulator kept in memory made every
    step wait on a store and a load (3-4x slower on this ViT). Kernels that do not match keep the
    generic schedule."""
    import numpy as np

    twins: dict[str, tuple[tirx.PrimFunc, int]] = {}  # kernel -> (its VNNI twin, index of the weight)
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
            continue
        sch = s_tir.Schedule(func)
        for blk in sch.get_child_blocks(sch.get_sblock("root")):
            _inline(sch, blk)
        try:
            block = sch.get_sblock("dense")
        except Exception:  # schedule primitives and tensorize raise several TVM error types
            continue
        reads = [r.source.ty for r in sch.get(block).reads]
        if len(reads) != 2 or str(reads[0].dtype) != "uint8" or str(reads[1].dtype) != "int8":
            continue
        n, k = (int(d) for d in reads[1].shape)
        if n % 16 or k % 4 or len(sch.get_loops(block)) < 2:
            continue
        try:
            sch.transform_layout(block, ("read", 1), lambda i, j: (i // 16, j // 4, i % 16, j % 4))
            *_, nl, kl = sch.get_loops(block)
            chains = next(c for c in (4, 3, 2, 1) if (n // 16) % c == 0)
            no, nc, ni = sch.split(nl, [None, chains, 16])
            ko, ki = sch.split(kl, [None, 4])
            sch.reorder(no, ko, nc, ni, ki)
            acc = sch.cache_write(block, 0, "local")
            sch.reverse_compute_at(acc, no)
            for consumer in sch.get_consumers(acc):
                try:
                    sch.reverse_compute_inline(consumer)
                except s_tir.ScheduleError:  # e.g. a slice of the rows: stays a stage of its own
                    pass
            sch.decompose_reduction(block, ko)
            sch.unroll(nc)
            sch.tensorize(ni, _vnni_intrin())
            _schedule_elementwise(sch, sch.get_loops(acc))
        except Exception:  # schedule primitives and tensorize raise several TVM error types
            continue
        for blk in sch.get_child_blocks(sch.get_sblock("root")):
            if not sch.get(blk).name_hint.startswith("dense"):
                _schedule_block(sch, blk)
        new = sch.mod["main"]
        index = _weight_param(func, new, (n // 16, k // 4, 16, 4))
        if index is None:
            continue
        twins[gv.name_hint] = (new.with_attr("tirx.is_scheduled", True), index)
    if not twins:
        return mod
    bb = relax.BlockBuilder(mod)  # new globals (typed): the old ones' types still have [N, K] weights
    packed = {name: (bb.add_func(func, f"{name}_vnni"), i) for name, (func, i) in twins.items()}
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
                kernel, i = packed[value.args[0].name_hint]
                w = args[i].value.numpy()
                n, k = w.shape
                args[i] = relax.const(np.ascontiguousarray(
                    w.reshape(n // 16, 16, k // 4, 4).transpose(0, 2, 1, 3)), "int8")
                value = relax.Call(value.op, [kernel, relax.Tuple(args)], value.attrs, value.ty_args)
            bindings.append(relax.VarBinding(binding.var, value))
        blocks.append(type(blk)(bindings))
    mod["main"] = relax.Function(main.params, relax.SeqExpr(blocks, main.body.body), main.ret_ty, main.is_pure,
                                 main.attrs)
    return mod


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
        _schedule_elementwise(sch, spatial)


def _schedule_reduction(sch: s_tir.Schedule, block, spatial: list, reduce_: list) -> None:
    """Sum over the innermost axes in a register; rows of a big contraction in parallel."""
    if not spatial:
        return
    size = 1
    for loop in spatial + reduce_:
        size *= max(_extent(sch, loop), 1)
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, spatial[-1])
    if size >= _PARALLEL_MIN_MACS and len(spatial) > 1:  # before decompose_reduction, which it needs
        sch.parallel(sch.fuse(*spatial[:-1]))
    sch.decompose_reduction(block, reduce_[0])


# attention's two products (tvm_backends.lower._attention): block name -> whether the second operand
# is read transposed ("logits" = (q - zq)(k - zk)^T sums over the head dim, k as [.., tokens, dim];
# "values" = weights (v - zv) sums over the tokens, v as [.., tokens, dim])
_BY_COLUMNS = {"logits": True, "values": False}


def _schedule_by_columns(sch: s_tir.Schedule, block, transposed: bool) -> None:
    """out[i, j:j+16] += a[i, k] * b[k, j:j+16]: output columns as vector lanes, the reduction
    outside them, 16 accumulators per row in registers. Columns are padded to a multiple of 16
    (the Swin's 49-token windows, the ViT's 17 tokens), and k^T is a padded copy. With the
    reduction innermost instead, every output was a horizontal sum of only 16 or 32 products:
    3x slower on the Swin's windows."""
    *_, j, _ = sch.get_loops(block)
    if _extent(sch, j) % _VECTOR:
        sch.pad_einsum(block, [1] * (len(sch.get_loops(block)) - 2) + [_VECTOR, 1])
    elif transposed:
        sch.cache_read(block, 1, "global")
    if transposed:
        sch.transform_layout(block, ("read", 1), lambda *ax: (*ax[:-2], ax[-1], ax[-2]))
    *_, j, k = sch.get_loops(block)
    jo, ji = sch.split(j, [None, _VECTOR])
    sch.reorder(jo, k, ji)
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, jo)
    sch.vectorize(ji)  # before decompose_reduction, whose update block vectorize does not take
    sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(acc)[-1])


def _schedule_elementwise(sch: s_tir.Schedule, spatial: list) -> None:
    """The innermost (contiguous) axis vectorized in chunks where its length allows."""
    n = _extent(sch, spatial[-1])
    if n >= _VECTOR and n % _VECTOR == 0:
        _, inner = sch.split(spatial[-1], [None, _VECTOR])
        sch.vectorize(inner)
