"""Integer program -> Apache TVM Relax for x86, Raspberry Pi (aarch64) and Jetson (CUDA).

Not implemented yet: tracked by the TVM backends issue.
"""
