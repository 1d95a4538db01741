"""A bit-accurate fixed-point accelerator simulator with a cycle, memory and energy model.

config.py (the validated TOML configuration, presets/), execute.py (values, tile by tile in the
accumulator's width), workload.py (what each op asks of the hardware), timing.py (cycles, traffic,
energy), commands.py (`pfcr simulate`). See docs/accelerator.md.
"""
