"""A CMOS image sensor and a fixed-point ISP in front of the integer program (docs/sensor.md).

scene (radiometry) -> pixel (electrons, noise) -> adc (digital numbers) -> isp (integer image
processing) -> the program's input codes. emva measures the simulated sensor as EMVA 1288 does.
numpy only: importable without torch.
"""
