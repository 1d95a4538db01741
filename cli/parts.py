"""The registry of parts: each line wires a package's commands and main-job stages (its `commands`
module, see core.registry) and the report modules that draw its records. Order matters twice: the
main job runs the parts' stages in this order (PFCR's write the programs the later ones use), and
the report shows their sections in it."""

from __future__ import annotations

from core.registry import Part

PARTS: tuple[Part, ...] = (
    Part("core", "core.commands"),
    Part("pfcr", "pfcr.commands", reports=("reports.ptq",)),
    Part("sensor", "hwsim.sensor.commands", reports=("reports.sensor",)),
    Part("accelerator", "hwsim.accelerator.commands", reports=("reports.accelerator",)),
    Part("tvm", "tvm_backends.commands", reports=("reports.latency",)),
    Part("real", "realvit.commands"),  # its records are drawn by reports.ptq (label-free fidelity)
)


def report_modules() -> tuple[str, ...]:
    return tuple(m for part in PARTS for m in part.reports)
