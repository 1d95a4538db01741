"""Training of the zoo models on Fashion-MNIST: seeded, resumable per epoch, with progress.

Recipe (measured here to reach ~90% with a 6-block ViT): AdamW, one-cycle lr, label smoothing 0.1,
random horizontal flips and small random shifts. Each epoch's randomness derives from
(seed, epoch) alone, so a run resumed from an epoch checkpoint equals an uninterrupted one exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.errors import CheckpointError
from core.files import atomic_path


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    max_shift: int = 2
    seed: int = 0


def augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to `max_shift` pixels, per image."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if max_shift:
        pad = F.pad(x, (max_shift,) * 4, mode="replicate")
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
        h, w = x.shape[-2:]
        rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * max_shift)
        x = pad.gather(2, rows)
        cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :].expand(n, x.shape[1], h, w)
        x = x.gather(3, cols)
    return x


def _state(model: nn.Module, opt: torch.optim.Optimizer, sched: object, epoch: int, cfg: TrainConfig) -> dict:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": epoch, "config": asdict(cfg)}


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
          run_dir: str | Path, on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Train `model` in place; checkpoint to `run_dir/last.pt` after every epoch and resume from it."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "last.pt"
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = (len(images) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps,
                                                pct_start=0.15)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["config"] != asdict(cfg):
            raise CheckpointError(
                f"{ckpt} was written with a different training config {state['config']}; "
                f"pass the same options to resume, or delete {run_dir} to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["epoch"]
    for epoch in range(start, cfg.epochs):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout / drop-path, if the model has any
        order = torch.randperm(len(images), generator=gen)
        t0, total = time.perf_counter(), 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=2, disable=None)
        for i in bar:
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = augment(images[idx], cfg.max_shift, gen)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (i + 1):.4f}", refresh=False)
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt) as tmp:
            torch.save(_state(model, opt, sched, epoch + 1, cfg), tmp)
        if on_epoch is not None:
            on_epoch(epoch + 1, time.perf_counter() - t0)
    model.eval()
    return model
