import pytest
import torch

from core.errors import CheckpointError
from core.train import TrainConfig, augment, train
from tests.conftest import tiny_vit

CFG = TrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=7)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, 1, 28, 28, generator=g), torch.randint(0, 10, (48,), generator=g)


class Stop(Exception):
    pass


def test_resume_equals_uninterrupted(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    straight = train(tiny_vit(), x, y, CFG, tmp_path / "a")

    def crash_after_first(epoch, _seconds):
        if epoch == 1:
            raise Stop

    torch.manual_seed(0)
    with pytest.raises(Stop):
        train(tiny_vit(), x, y, CFG, tmp_path / "b", crash_after_first)
    torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG state
    resumed = train(tiny_vit(), x, y, CFG, tmp_path / "b")
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    start = tiny_vit()
    assert any(not torch.equal(a, b) for a, b in zip(start.state_dict().values(), straight.state_dict().values(),
                                                      strict=True))


def test_resume_with_other_config_is_refused(tmp_path):
    x, y = _data()
    train(tiny_vit(), x, y, TrainConfig(epochs=1, batch_size=16, seed=7), tmp_path)
    with pytest.raises(CheckpointError, match="different training config"):
        train(tiny_vit(), x, y, TrainConfig(epochs=1, batch_size=16, seed=8), tmp_path)


def test_augment_flips_and_shifts_within_bounds():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    gen = torch.Generator().manual_seed(0)
    no_shift = augment(x, 0, gen)
    for a, b in zip(no_shift, x, strict=True):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    shifted = augment(x, 2, gen)
    assert shifted.shape == x.shape
    # Every output pixel comes from the same image (values of image 0 are < 784).
    assert shifted[0].max() < 784 and shifted[1].min() >= 784
