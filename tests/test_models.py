import pytest
import torch
from safetensors.torch import save_file

from core import models
from core.errors import CheckpointError, ModelError

TINY = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10,
                                     "embed_dim": 16, "depth": 2, "num_heads": 2}),
    "deit": ("deit_tiny_patch16_224", {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10,
                                       "embed_dim": 16, "depth": 2, "num_heads": 2}),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 28, "patch_size": 2, "in_chans": 1, "num_classes": 10,
                                              "window_size": 7, "embed_dim": 8, "depths": (1, 1),
                                              "num_heads": (1, 2)}),
}


def _saved(tmp_path, family, fmt):
    arch, kw = TINY[family]
    torch.manual_seed(0)
    model = models.build(arch, **kw).eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"{family}.{fmt}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    elif fmt == "pt":
        torch.save(sd, path)
    else:  # a training checkpoint holding the model under a key
        torch.save({"model": sd, "epoch": 3}, path)
    return model, arch, kw, path


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("fmt", ["safetensors", "pt", "ckpt"])
def test_checkpoint_round_trip(tmp_path, family, fmt):
    model, arch, kw, path = _saved(tmp_path, family, fmt)
    loaded = models.load_model(arch, path, **kw)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded.module(x), model(x))
    assert loaded.checkpoint_sha256 == models.sha256_file(path) and len(loaded.checkpoint_sha256) == 64


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_truncated_checkpoint(tmp_path, fmt):
    _, arch, kw, path = _saved(tmp_path, "vit", fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"corrupt|truncated|not a valid"):
        models.load_model(arch, path, **kw)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_garbage_checkpoint(tmp_path, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(b"\x00garbage" * 100)
    arch, kw = TINY["vit"]
    with pytest.raises(CheckpointError, match=str(path.name)):
        models.load_model(arch, path, **kw)


def test_mismatched_checkpoint_names_tensors(tmp_path):
    _, arch, kw, path = _saved(tmp_path, "vit", "safetensors")
    with pytest.raises(CheckpointError, match=r"wrong shape.*head.weight") as err:
        models.load_model(arch, path, **{**kw, "num_classes": 5})
    assert "checkpoint (10, 16) vs model (5, 16)" in str(err.value)
    with pytest.raises(CheckpointError, match="missing"):
        models.load_model(arch, path, **{**kw, "depth": 3})


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": _Evil(str(marker))}, path)
    arch, kw = TINY["vit"]
    with pytest.raises(CheckpointError, match="refused for safety"):
        models.load_model(arch, path, **kw)
    assert not marker.exists()


def test_non_tensor_checkpoint(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        models.read_state_dict(path)


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model 'vit_nonexistent'"):
        models.load_model("vit_nonexistent")
    with pytest.raises(CheckpointError, match="does not exist"):
        models.load_model(*TINY["vit"][:1], "/no/such/file.safetensors", **TINY["vit"][1])


def test_untrained_zoo_model_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "ZOO_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="pfcr train vit_fmnist"):
        models.load_model("vit_fmnist")


def test_zoo_shapes():
    vit = models.build(models.ZOO["vit_fmnist"].arch, **models.ZOO["vit_fmnist"].kwargs)
    assert len(vit.blocks) == 12 and vit.patch_embed.num_patches == 16
    swin = models.build(models.ZOO["swin_fmnist"].arch, **models.ZOO["swin_fmnist"].kwargs)
    assert [len(s.blocks) for s in swin.layers] == [2, 4]
    assert swin(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("no_embed_class", [False, True])
def test_position_embedding_trained_at_another_resolution_is_resampled_once(tmp_path, capsys, no_embed_class):
    """A checkpoint trained at 42x42 (6x6 patches) loads into the same ViT at 28x28 (4x4): its
    position embedding is resampled to the model's grid as timm resamples it, and the user is told."""
    from timm.layers import resample_abs_pos_embed

    arch, kw = TINY["vit"]
    torch.manual_seed(0)
    big = models.build(arch, **{**kw, "img_size": 42, "no_embed_class": no_embed_class}).eval()
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(tmp_path / "big.safetensors"))
    loaded = models.load_model(arch, tmp_path / "big.safetensors", **{**kw, "no_embed_class": no_embed_class})
    want = resample_abs_pos_embed(big.pos_embed, new_size=[4, 4], old_size=[6, 6],
                                  num_prefix_tokens=0 if no_embed_class else 1)
    assert torch.equal(loaded.module.pos_embed, want)
    assert "resampled from a 6x6 grid to the model's 4x4" in capsys.readouterr().err
