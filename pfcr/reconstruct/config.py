"""The reconstruction loop's knobs, torch-free so that the command line can show their defaults
without loading torch (`pfcr --help` stays fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

LOSSES = ("mse", "token")
# QDrop's step-size learning rate, for 20 000 iterations per block: the default until the short
# schedules here were measured (docs/pfcr.md); records name the lr where it is another.
QDROP_SCALE_LR = 4e-5


@dataclass(frozen=True)
class ReconConfig:
    iters: int = 200
    batch_size: int = 32
    round_lr: float = 1e-2  # peers use 1e-3 with 20000 iterations; see docs/pfcr.md
    scale_lr: float = 1e-3  # QDROP_SCALE_LR barely moves a step size in 20-200 iterations (docs/pfcr.md)
    reg_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    drop_prob: float = 0.5
    learn_rounding: bool = True
    learn_scales: bool = True
    loss: str = "mse"  # "token": each token's error relative to its FP32 mean square (loop.granule_loss)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"ReconConfig.loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")

    def to_dict(self) -> dict:
        return asdict(self)
