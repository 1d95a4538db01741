"""Bit-accurate simulators of a fixed-point accelerator and a CMOS sensor + ISP (see ../shared/DESIGN.md).

Not implemented yet: tracked by the hwsim issues.
"""
