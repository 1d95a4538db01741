"""CPU schedules for lowered integer programs (llvm targets: x86 and aarch64).

TVM's default CPU pipeline neither fuses nor schedules. `schedule` fuses (legalize + FuseOps +
FuseTIR, as relax.get_default_pipeline does) and then schedules every kernel:
- contractions (linear layers and the two attention matmuls, weights as [N, K]): the reduction
  over K is innermost and accumulates in a register (cache_write to "local"), so LLVM vectorizes it
  as an integer dot product (on x86 with VNNI and on ARM with +dotprod it picks the dot-product
  instructions for the u8 x s8 operands that `lower` produces); the rows run in parallel;
- elementwise and row-wise stages: loops fused and vectorized where the output is contiguous.
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
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.is_scheduled", False):
            sch = s_tir.Schedule(func)
            for block in sch.get_child_blocks(sch.get_sblock("root")):
                _inline(sch, block)
            for block in sch.get_child_blocks(sch.get_sblock("root")):
                _schedule_block(sch, block)
            mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return relax.transform.DeadCodeElimination()(mod)


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


def _schedule_elementwise(sch: s_tir.Schedule, spatial: list) -> None:
    """The innermost (contiguous) axis vectorized in chunks where its length allows."""
    n = _extent(sch, spatial[-1])
    if n >= _VECTOR and n % _VECTOR == 0:
        _, inner = sch.split(spatial[-1], [None, _VECTOR])
        sch.vectorize(inner)
