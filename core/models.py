"""Models: the embedded zoo, any timm model by name, and safe checkpoint loading.

Checkpoints are read as safetensors, or as torch files with `weights_only=True`, so a checkpoint
can never execute code. Every mismatch is reported against the model it was meant for.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import CheckpointError, ModelError
from core.files import portable_path, sha256_file

ZOO_DIR = Path(__file__).parent / "zoo"


@dataclass(frozen=True)
class ZooEntry:
    """A model of the embedded zoo: a timm architecture with the kwargs that size it for 28x28."""

    name: str
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def checkpoint(self) -> Path:
        return ZOO_DIR / f"{self.name}.safetensors"

    @property
    def card_path(self) -> Path:
        return ZOO_DIR / f"{self.name}.json"

    def card(self) -> dict[str, Any] | None:
        """The model card written by `train`, or None while the model is untrained."""
        return json.loads(self.card_path.read_text()) if self.card_path.exists() else None


_FMNIST = {"img_size": 28, "in_chans": 1, "num_classes": 10}
ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "vit_fmnist",
            "vit_tiny_patch16_224",
            # 12 blocks give progressive merging depth; width 96 (DeiT-Tiny's 192 halved) keeps
            # training within the 2-core budget. Patch 7 -> 16 tokens + class token.
            {**_FMNIST, "patch_size": 7, "embed_dim": 96, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0},
            "ViT, 12 blocks, width 96, 3 heads, patch 7 (16 tokens + cls)",
        ),
        ZooEntry(
            "swin_fmnist",
            "swin_tiny_patch4_window7_224",
            # Patch 2 -> 14x14 tokens, 2x2 windows of 7 with shifts in stage 1, then patch merging
            # to 7x7 (one window) in stage 2.
            {**_FMNIST, "patch_size": 2, "window_size": 7, "embed_dim": 32, "depths": (2, 4),
             "num_heads": (2, 4), "mlp_ratio": 4.0},
            "Swin, 2 stages (2+4 blocks), width 32->64, patch 2, window 7 (196 -> 49 tokens)",
        ),
    ]
}


def build(arch: str, **kwargs: Any) -> nn.Module:
    """A randomly initialized timm model (`pretrained=False`: weights come from checkpoints)."""
    import timm

    if not timm.is_model(arch):
        raise ModelError(
            f"unknown model {arch!r}: neither a zoo model ({', '.join(ZOO)}) nor a timm model; "
            "list timm's with `python -c \"import timm; print(timm.list_models('*vit*'))\"`"
        )
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ModelError(f"timm cannot build {arch!r} with {kwargs}: {err}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, without ever unpickling arbitrary objects.

    `.safetensors` is read as such; anything else with `torch.load(weights_only=True)`. A torch
    file holding a training checkpoint ({"model": ...}, {"state_dict": ...}) gives its model part.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} is not a valid safetensors file ({err}); "
                                  "re-export it or check the download") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and was refused for safety "
            f"({first}); save only the state_dict, or convert it to safetensors"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} is not a state_dict of tensors")
    return obj


def load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model` strictly, naming every missing, unexpected or misshapen tensor."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    _fit_position_embedding(model, state, own, source)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        def few(items: list[str]) -> str:
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

        parts = [f"{len(v)} {what}: {few(v)}" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("with wrong shape", misshapen)) if v]
        raise CheckpointError(
            f"checkpoint {source} does not fit the model ({'; '.join(parts)}); "
            "pass the model name and options the checkpoint was trained with"
        )
    model.load_state_dict(state, strict=True)


def _fit_position_embedding(model: nn.Module, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                            source: str) -> None:
    """A ViT position embedding trained at another resolution (e.g. DINOv2's 37x37 grid for a 224
    input with patch 14: 16x16), resampled once, here, to the model's grid with timm's own bicubic
    resampling; the program then holds it at that size."""
    pos, want = state.get("pos_embed"), own.get("pos_embed")
    if pos is None or want is None or pos.shape == want.shape or pos.shape[-1] != want.shape[-1]:
        return
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 0)
    old = pos.shape[1] - prefix
    side = math.isqrt(old)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if side * side != old or grid is None:
        return  # not a square grid: reported as misshapen below
    from timm.layers import resample_abs_pos_embed

    state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(grid), old_size=[side, side],
                                                num_prefix_tokens=prefix)
    print(f"note: {source}: position embedding resampled from a {side}x{side} grid to the model's "
          f"{grid[0]}x{grid[1]}", file=sys.stderr)


@dataclass
class LoadedModel:
    """A model ready for evaluation, with what a result record says about it."""

    module: nn.Module
    name: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    from_zoo: bool = False  # the zoo's committed weights: a program names none, so it loads anywhere

    def record(self) -> dict[str, Any]:
        """The `model` field of a result record."""
        return {"name": self.name, "checkpoint": portable_path(self.checkpoint) if self.checkpoint else None,
                "checkpoint_sha256": self.checkpoint_sha256}

    @property
    def variant(self) -> str | None:
        """What tells this model apart from others of its name in a record's file name: None for a zoo
        model with the zoo's own weights; else 'ck' and the first 8 hex of its checkpoint's sha256, or
        'random' for a model without a checkpoint. (A zoo name with another checkpoint, or two users'
        checkpoints of one timm name, then never overwrite each other's records.)"""
        entry = ZOO.get(self.name)
        if entry is not None and self.checkpoint_sha256 is not None and self.checkpoint_sha256 == _zoo_sha(entry):
            return None
        return f"ck{self.checkpoint_sha256[:8]}" if self.checkpoint_sha256 else "random"


def _zoo_sha(entry: ZooEntry) -> str | None:
    return sha256_file(entry.checkpoint) if entry.checkpoint.exists() else None


def load_model(name: str, checkpoint: str | os.PathLike | None = None, **kwargs: Any) -> LoadedModel:
    """A zoo model with its committed weights, or a timm model, optionally with a local checkpoint.

    A zoo model without an explicit checkpoint loads the zoo's; kwargs override the architecture
    (e.g. num_classes for a user's fine-tuned model). A timm model without a checkpoint has random
    weights (the suite never downloads any): said on stderr, since its accuracy means nothing.
    """
    entry = ZOO.get(name)
    arch, arch_kwargs = (entry.arch, {**entry.kwargs, **kwargs}) if entry else (name, kwargs)
    module = build(arch, **arch_kwargs)
    if entry is not None:
        # The zoo models take whole Fashion-MNIST images, normalized with its mean and std: a folder
        # of images gets the same (no center crop; core.data.image_folder reads pretrained_cfg).
        from core.data import FMNIST_MEAN, FMNIST_STD

        module.pretrained_cfg = {**getattr(module, "pretrained_cfg", {}), "mean": (FMNIST_MEAN,),
                                 "std": (FMNIST_STD,), "crop_pct": 1.0}
    if checkpoint is None and entry is not None:
        if not entry.checkpoint.exists():
            raise CheckpointError(f"zoo model {name} has no weights at {entry.checkpoint}; "
                                  f"train it with `pfcr train {name}`")
        checkpoint = entry.checkpoint
        from_zoo = True
    else:
        from_zoo = False
    sha = None
    if checkpoint is not None:
        load_state_dict(module, read_state_dict(checkpoint), str(checkpoint))
        sha = sha256_file(checkpoint)
    else:
        print(f"WARNING: {name} has RANDOM weights: no --checkpoint was given and the suite downloads no "
              "pretrained weights, so its accuracy means nothing; pass --checkpoint FILE (.safetensors or a "
              "torch state_dict) with the weights you trained", file=sys.stderr)
    module.eval()
    return LoadedModel(module, name, str(checkpoint) if checkpoint else None, sha, from_zoo)


def load_program_model(meta: dict[str, Any]) -> LoadedModel:
    """The float model an integer program was exported from, as its metadata names it."""
    return load_model(meta["model"], meta.get("checkpoint"), **(meta.get("model_kwargs") or {}))


def num_classes(module: nn.Module) -> int | None:
    """The number of class scores a classifier gives (timm's `num_classes`; 0 for a model built
    without a head, whose outputs are features), or None when the model does not say."""
    value = getattr(module, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def input_spec(module: nn.Module) -> tuple[int | None, tuple[int, int] | None]:
    """(channels, (height, width)) of the images a model takes; the size is None when the model
    takes any size (a dynamic ViT, a CNN), the channels None when it cannot be told."""
    embed = getattr(module, "patch_embed", None)
    proj = getattr(embed, "proj", None)
    chans = getattr(proj, "in_channels", None)
    if chans is None:
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        chans = conv.in_channels if conv is not None else None
    size = getattr(embed, "img_size", None)
    fixed = (embed is not None and getattr(embed, "strict_img_size", True)
             and not getattr(module, "dynamic_img_size", False))
    return chans, (tuple(int(v) for v in size) if size is not None and fixed else None)

