"""The integer program: the contract every executor runs bit for bit alike (see docs/integer-program.md).

numpy only, importable without torch. Work in progress: the arithmetic (rounding shifts,
requantization, exact GEMMs, sub-byte packing) and the integer nonlinear kernels (lookup tables,
LayerNorm, log2 softmax) are here; the op graph, file format, export and the reference executor
follow (the integer-program issue).
"""
