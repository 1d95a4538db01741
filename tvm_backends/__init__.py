"""Integer program -> Apache TVM 0.27 (Relax) for x86, Raspberry Pi (aarch64) and Jetson (CUDA):
compile it for a board, check it bit for bit and time it there.

- lower: the program as a Relax module of integer ops only, bit-exact with intprog.reference;
- schedules: the CPU schedules (x86 with VNNI, aarch64 with sdot); cuda/: the CUDA specifics
  (NVRTC cubins ahead of time, the GPU schedule, the cubin check, TVM's CUDA runtime);
- targets: the board presets (TVM target, host CPU, cross compiler) and their toolchain checks;
- build: a program compiled for a preset into an artifact; artifact: its format (model.so +
  artifact.json), read back by `pfcr bench`;
- rpc, bench, baseline: an artifact run here or on a board over TVM RPC, checked against the
  reference executor, timed by a single-stream protocol beside an FP32 baseline on the same device;
- emulate, inproc_server: an emulated Raspberry Pi (qemu-user) serving TVM RPC, for correctness only;
- commands: `pfcr compile`, `pfcr bench`, `pfcr emulate-pi`.
"""
