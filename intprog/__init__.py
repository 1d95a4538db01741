"""The integer program: the contract every executor runs bit for bit alike (see docs/integer-program.md).

Holds the file format and its validation (`program`), the op table and the interval proof every
executor reads (`ops`: each op's inputs, constants, accelerator unit, output shape and interval),
the arithmetic (`arith`: rounding shifts, requantization, exact GEMMs, sub-byte packing), the
integer nonlinear kernels (`nonlinear`: lookup tables, LayerNorm, log2 softmax) and the reference
executor (`reference`, the golden model). numpy only: it imports nothing above core's torch-free
modules (core.errors, core.files), so every executor and tool can load it without torch.
"""
