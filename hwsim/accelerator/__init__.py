"""A bit-accurate fixed-point accelerator simulator with a cycle, memory and energy model.

config.py (the validated TOML configuration; presets/), fixed.py (ap_fixed overflow and rounding
modes), workload.py (what each op asks of the hardware), execute.py (values, tile by tile in the
accumulator's width), timing.py (cycles, traffic, energy), simulate.py (one run -> a `simulate`
record), commands.py (`pfcr simulate`). See docs/accelerator.md.
"""
