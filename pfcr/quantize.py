"""The quantization methods in one harness: rtn, block and pfcr (with POS), and saving the result.

All three share calibration, quantizer placement, reparameterization, loss and hyper-parameters,
so the only difference between them is the method:
- rtn: calibration (percentile/MSE) + round-to-nearest, RepQ-ViT-like;
- block: one reconstruction per transformer block (BRECQ/QDrop-like);
- pfcr: MHSA and MLP units, then blocks, then pairs of blocks ... (see granules.py), with a
  Progressive Optimization Strategy (POS):
    'sos'       stage 1 learns the activation quantizers only (float weights, channel-wise post-LN
                scales) over the whole schedule; the scales are reparameterized into the LayerNorms;
                stage 2 learns weight rounding and activation scales over the schedule again;
    'levelwise' one stage per granularity, across the whole model: all MHSA/MLP units, then all
                blocks, then all pairs ...;
    'none'      a single depth-first pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from core.errors import CheckpointError, SuiteError
from core.files import atomic_path
from pfcr.quant.calibrate import calibrate, calibrate_class_token, reparameterize
from pfcr.quant.gptq import gptq
from pfcr.quant.model import QuantConfig, QuantModel
from pfcr.quant.quantizers import UniformQuantizer
from pfcr.quant.smooth import smoothed
from pfcr.reconstruct.granules import schedule
from pfcr.reconstruct.loop import ReconConfig, Streams, reconstruct

METHODS = ("rtn", "block", "pfcr")
POS_READINGS = ("sos", "levelwise", "none")
QMODEL_FORMAT = "pfcr.qmodel/1"


@dataclass(frozen=True)
class QuantizeConfig:
    method: str = "pfcr"
    quant: QuantConfig = field(default_factory=QuantConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    pos: str = "sos"
    finest: bool = True  # PFCR: start from MHSA and MLP units
    coarsest: int = 4  # PFCR: largest granule, in blocks
    init_size: int = 128  # images for the initial scale search
    seed: int = 0
    # GPTQ's weight rounding (pfcr/quant/gptq.py) after the initial scales: rtn's final codes, and
    # where block or pfcr follows, the rounding its AdaRound starts from
    gptq: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SuiteError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.pos not in POS_READINGS:
            raise SuiteError(f"unknown POS reading {self.pos!r}; use one of {', '.join(POS_READINGS)}")
        if self.coarsest not in (0, 1, 2, 4, 8, 16, 32):
            raise SuiteError(f"coarsest={self.coarsest} must be 0 (units only), 1 (blocks) or a power of two")

    def to_dict(self) -> dict:
        return {**asdict(self), "quant": self.quant.to_dict(), "recon": self.recon.to_dict()}


Progress = Callable[[str, dict], None]


def _run_schedule(qm: QuantModel, streams: Streams, cfg: QuantizeConfig, recon: ReconConfig, stage: str,
                  gen: torch.Generator, progress: Progress | None) -> list[dict]:
    if cfg.method == "block":
        granules = schedule(qm, finest=False, coarsest=1)
    else:
        granules = schedule(qm, finest=cfg.finest, coarsest=cfg.coarsest, levelwise=cfg.pos == "levelwise")
    log = []
    for g in granules:
        entry = {"stage": stage, **reconstruct(qm, streams, g, recon, gen)}
        log.append(entry)
        if progress is not None:
            progress(stage, entry)
    return log


@torch.no_grad()
def harden(qm: QuantModel) -> None:
    """Write the learned rounding into the weights: round-to-nearest on them is then exact."""
    for _, layer in qm.weight_layers():
        if layer.w_quant.alpha is not None:
            layer.weight.copy_(layer.w_quant.harden(layer.weight))
            layer.w_quant.alpha = None


def _settle(qm: QuantModel, images: torch.Tensor, gptq_rounding: bool) -> None:
    """Once the activation ranges are set: RepQ's fold of the post-LN scales, (cls_clip) the class
    token's bounds on the folded grids, (gptq) GPTQ's weight rounding on them, then the program's
    scales, after which eval mode runs the integer program."""
    reparameterize(qm)
    if qm.cfg.cls_clip:
        calibrate_class_token(qm, images)
    if gptq_rounding:
        gptq(qm, images)
    qm.fix_scales(images)


def quantize(fp_model: nn.Module, images: torch.Tensor, cfg: QuantizeConfig,
             progress: Progress | None = None) -> tuple[QuantModel, list[dict]]:
    """Quantize `fp_model` with calibration images [N, C, H, W]; returns the model and a per-granule log."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.quant.smooth is not None:  # the same function in float: it is also the teacher below
        fp_model = smoothed(fp_model, images[: cfg.init_size], cfg.quant.smooth)
    qm = QuantModel(fp_model, cfg.quant).to(images.device)  # its new quantizers join the model
    calibrate(qm, images[: cfg.init_size])
    log: list[dict] = []
    if cfg.method == "pfcr" and cfg.pos == "sos":
        qm.set_quant(weights=False)
        streams = Streams(qm, fp_model, images)
        stage1 = replace(cfg.recon, learn_rounding=False)
        log += _run_schedule(qm, streams, cfg, stage1, "pos1-activations", gen, progress)
        qm.set_quant(weights=True)
        _settle(qm, images[: cfg.init_size], cfg.gptq)
        streams.changed(0)
        log += _run_schedule(qm, streams, cfg, cfg.recon, "pos2-weights", gen, progress)
    else:
        _settle(qm, images[: cfg.init_size], cfg.gptq)
        if cfg.method != "rtn":
            streams = Streams(qm, fp_model, images)
            log += _run_schedule(qm, streams, cfg, cfg.recon, cfg.method, gen, progress)
    harden(qm)
    qm.fix_scales(images[: cfg.init_size])  # the ranges of the final model
    qm.eval()
    return qm, log


def save_qmodel(qm: QuantModel, path: str | os.PathLike, meta: dict) -> Path:
    """Save a hardened quantized model as safetensors; `meta` says how to rebuild its float model."""
    path = Path(path)
    header = {"format": QMODEL_FORMAT, "quant": json.dumps(qm.cfg.to_dict()), "meta": json.dumps(meta)}
    state = {k: v.detach().cpu().contiguous() for k, v in qm.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)
    return path


def read_qmodel_meta(path: str | os.PathLike) -> tuple[QuantConfig, dict]:
    """The quantization config and metadata stored with a quantized model file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as err:  # safetensors raises several types for bad files
        raise CheckpointError(f"quantized model {path} cannot be read ({err}); re-run `pfcr quantize`") from None
    if header.get("format") != QMODEL_FORMAT:
        raise CheckpointError(f"{path} is not a quantized model of format {QMODEL_FORMAT} "
                              f"(found {header.get('format')!r}); re-run `pfcr quantize`")
    quant = json.loads(header["quant"])
    if "sqrt2_softmax" in quant:  # files written before softmax_codes generalized it
        quant["softmax_codes"] = 2 if quant.pop("sqrt2_softmax") else 1
    quant.setdefault("gelu_range", "global")  # files written before the per-block GELU ranges
    return QuantConfig(**quant), json.loads(header["meta"])


def load_qmodel(path: str | os.PathLike, fp_model: nn.Module) -> QuantModel:
    """Rebuild the quantized model saved at `path` around its float model; outputs are identical."""
    from core.models import load_state_dict, read_state_dict

    cfg, _ = read_qmodel_meta(path)
    qm = QuantModel(fp_model, cfg)
    state = read_state_dict(path)
    # files saved before the scales were fixed, or before the per-block GELU ranges (global scale)
    for key in ("program_scales", "program_input", "program_fc1_ranges"):
        state.setdefault(key, torch.zeros_like(getattr(qm, key)))
    for key in qm.state_dict():  # files saved before class-token clipping: no token-0 bounds
        if key.endswith((".token0_min", ".token0_max")):
            state.setdefault(key, torch.zeros(0))
    # Shapes that calibration and reparameterization changed (per-channel scales, a bias that a
    # reparameterized Linear gained) are adopted before the strict load.
    for key, tensor in state.items():
        owner, _, attr = key.rpartition(".")
        try:
            mod = qm.get_submodule(owner)
        except AttributeError:
            continue  # reported by the strict load below
        current = getattr(mod, attr, None)
        if current is None or (isinstance(current, torch.Tensor) and current.shape != tensor.shape):
            if attr in mod._buffers:
                mod._buffers[attr] = torch.empty_like(tensor)
            else:
                setattr(mod, attr, nn.Parameter(torch.empty_like(tensor), requires_grad=False))
    load_state_dict(qm, state, str(path))
    for _, q in qm.quantizers():
        if isinstance(q, UniformQuantizer) and q.axis == -1 and q.scale.numel() == 1:
            q.axis = None  # reparameterized into the LayerNorm
    return qm.eval()
