"""The GPU schedule of a Relax module for a CUDA target (the CPU ones are in tvm_backends/schedules.py).

TVM's default pipeline leaves GPU kernels unscheduled. GEMMs go to dlight's Matmul rule; every
other kernel gets a plain blocks-x-threads binding read from its loop kinds (`_bind_threads`),
which is what dlight's Fallback does, but without its normalization, slow on the integer kernels.
"""

from __future__ import annotations


def _bind_threads(func, max_threads: int = 256):
    """Every block's spatial loops fused and bound to CUDA blocks x threads, reductions serial per thread.

    dlight's Fallback does the same after `normalize_prim_func`, which takes ~25 s on the integer
    LayerNorm and softmax (their isqrt/log2 are long let-chains); this reads the loop kinds straight
    from the block's iteration variables instead.
    """
    import tvm

    sch = tvm.s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        if any(sch.get(loop).thread_binding is not None for loop in loops):
            continue  # shares a loop nest with a block bound before
        iters = sch.get(block).iter_vars
        if len(loops) != len(iters):
            return None  # not a plain loop nest: leave it to dlight
        spatial = [lp for lp, it in zip(loops, iters, strict=True) if it.iter_type == 0]
        reduce = [lp for lp, it in zip(loops, iters, strict=True) if it.iter_type != 0]
        if not spatial:
            spatial = [sch.add_unit_loop(block)]
        sch.reorder(*spatial, *reduce)
        bx, tx = sch.split(sch.fuse(*spatial), factors=[None, max_threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule(mod, target):
    """GEMMs by dlight's Matmul rule, marked `dlight.do_not_tensorize` (its int8 tensor-core path is
    broken in TVM 0.27; the SIMT kernel uses dp4a); every other function by `_bind_threads`."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    mod = relax.get_pipeline("zero")(mod)
    funcs = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            func = func.with_attr("dlight.do_not_tensorize", True)
            scheduled = dl.ApplyDefaultSchedule(dl.gpu.Matmul())(tvm.IRModule({gv: func}))[gv.name_hint]
            if "tirx.is_scheduled" not in (scheduled.attrs or {}):
                scheduled = _bind_threads(func)
            if scheduled is None:
                scheduled = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(tvm.IRModule({gv: func}))[gv.name_hint]
            func = scheduled
        funcs[gv] = func
    return tvm.IRModule(funcs, attrs=mod.attrs)


def kernel_launches(mod) -> int:
    """CUDA kernels one call of `mod`'s main launches: every loop nest bound to blockIdx.x in a
    scheduled function is a kernel of its own, times the calls of that function. At batch 1 a
    launch costs microseconds, so this is the latency floor the plain binding leaves: each of its
    LayerNorms and softmaxes is one kernel per stage (14 and 24; DeiT-Tiny: about 950 per image)."""
    import tvm

    from tvm_backends.schedules import tir_calls

    nests = {gv.name_hint: func.script().count('thread="blockIdx.x"') for gv, func in mod.functions.items()
             if isinstance(func, tvm.tirx.PrimFunc)}
    return sum(nests.get(name, 0) * n for name, n in tir_calls(mod).items())
