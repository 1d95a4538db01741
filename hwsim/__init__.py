"""Bit-accurate simulators of the integer program's hardware (see docs/accelerator.md, docs/sensor.md).

- hwsim.accelerator: a fixed-point accelerator (PE array, accumulators, SRAM/DRAM, nonlinear
  units) that executes an integer program tile by tile, bit for bit, with a cycle, memory and
  energy model.
- hwsim.sensor: a CMOS sensor and fixed-point ISP producing the program's input codes.
"""
