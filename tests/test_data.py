import gzip
import re

import numpy as np
import pytest
import torch

from core import data
from core.data import write_idx
from core.errors import DataError
from tests.conftest import tiny_vit


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    arr = np.random.default_rng(1).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    out = data.read_idx(write_idx(tmp_path / "a.idx", arr, compress))
    assert out.shape == (3, 4, 5) and np.array_equal(out, arr)


def test_idx_labels_1d(tmp_path):
    lab = np.array([9, 0, 3], dtype=np.uint8)
    assert data.read_idx(write_idx(tmp_path / "l.gz", lab)).tolist() == [9, 0, 3]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05", "type 0x0d"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated inside its header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x04\x05", "truncated or corrupt"),
        (b"\x1f\x8bnot really gzip", "not a valid gzip"),
    ],
)
def test_idx_malformed(tmp_path, raw, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=message):
        data.read_idx(path)


def test_idx_truncated_gzip_payload(tmp_path):
    arr = np.zeros((2, 3), dtype=np.uint8)
    raw = gzip.decompress(write_idx(tmp_path / "a.gz", arr).read_bytes())
    (tmp_path / "b.gz").write_bytes(gzip.compress(raw[:-2]))
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(tmp_path / "b.gz")


def test_missing_fmnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PFCR_FMNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.fmnist("test")


def test_fmnist_loader(fake_fmnist):
    ds = data.fmnist("test")
    assert len(ds) == 20
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and int(y) == 3
    raw, _ = data.load_fmnist_arrays("test")
    assert torch.allclose(x, (torch.tensor(raw[3], dtype=torch.float32) / 255 - data.FMNIST_MEAN) / data.FMNIST_STD)
    assert len(data.fmnist("train", limit=7)) == 7
    with pytest.raises(DataError, match="unknown Fashion-MNIST split"):
        data.fmnist("val")


def test_fmnist_mismatched_files(fake_fmnist):
    write_idx(fake_fmnist / data.FMNIST_FILES["test"][1], np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="disagree"):
        data.fmnist("test")


def test_calibration_manifest_is_stable():
    a = data.calibration_manifest(8, seed=0, population=60000)
    b = data.calibration_manifest(8, seed=0, population=60000)
    c = data.calibration_manifest(8, seed=1, population=60000)
    assert a == b and a.indices != c.indices
    assert list(a.indices) == sorted(set(a.indices)) and all(0 <= i < 60000 for i in a.indices)
    # The draw itself is part of the contract: recorded subsets must be redrawable next year.
    assert a.indices == GOLDEN_SEED0_SIZE8
    assert a.sha256 != c.sha256 and f'"sha256": "{a.sha256}"' in a.to_json()


GOLDEN_SEED0_SIZE8 = (991, 2458, 4514, 16186, 18468, 30665, 38213, 51031)


def test_calibration_manifest_bounds():
    with pytest.raises(DataError, match="between 1 and"):
        data.calibration_manifest(0, 0, 10)
    with pytest.raises(DataError, match="between 1 and"):
        data.calibration_manifest(11, 0, 10)


def test_calibration_subset_matches_manifest(fake_fmnist):
    ds, manifest = data.fmnist_calibration(5, seed=3)
    images, labels = data.load_fmnist_arrays("train")
    assert len(ds) == 5 and manifest.size == 5
    for k, i in enumerate(manifest.indices):
        assert int(ds[k][1]) == labels[i]
        assert torch.equal(ds[k][0], data.fmnist_to_tensor(images[i : i + 1])[0])


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    model = tiny_vit(img_size=32, patch_size=8, in_chans=3)
    ds = data.image_folder(tmp_path / "imgs", model)
    assert len(ds) == 6 and ds.class_to_idx == {"cat": 0, "dog": 1}
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and y == 1


def test_image_folder_errors(tmp_path):
    model = tiny_vit()
    with pytest.raises(DataError, match="does not exist"):
        data.image_folder(tmp_path / "missing", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="ImageNet layout"):
        data.image_folder(tmp_path / "empty", model)


def test_image_folder_reads_grayscale_for_a_one_channel_model(tmp_path):
    """RGB files, a one-channel model: read as grayscale (PIL "L"), normalized with one mean/std."""
    from PIL import Image

    (tmp_path / "imgs" / "c").mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), (255, 0, 0), dtype=np.uint8)).save(tmp_path / "imgs" / "c" / "red.png")
    ds = data.image_folder(tmp_path / "imgs", tiny_vit(img_size=32, patch_size=8, in_chans=1))
    x, _ = ds[0]
    gray = 76 / 255  # ITU-R 601-2 luma of pure red, as PIL's convert("L")
    assert x.shape == (1, 32, 32)
    assert torch.allclose(x, torch.full_like(x, (gray - 0.5) / 0.5), atol=2e-3)  # the ViT's mean/std 0.5


def test_image_folder_refuses_other_channel_counts(tmp_path):
    from tests.conftest import image_folder

    image_folder(tmp_path / "imgs", ("a",), per_class=1)
    with pytest.raises(DataError, match=r"takes 4-channel images.*grayscale \(1\) or RGB \(3\)"):
        data.image_folder(tmp_path / "imgs", tiny_vit(img_size=32, patch_size=8, in_chans=4))


def test_unreadable_images_are_named(tmp_path):
    """A truncated file and a non-image with an image suffix: a DataError naming the file, both when the
    set is checked up front (check_images) and when an image is read (the loader)."""
    from tests.conftest import image_folder

    image_folder(tmp_path / "imgs", ("a",), per_class=2)
    cut = tmp_path / "imgs" / "a" / "1.png"
    cut.write_bytes(cut.read_bytes()[:80])
    (tmp_path / "imgs" / "a" / "2.jpg").write_text("hello")
    ds = data.image_folder(tmp_path / "imgs", tiny_vit(img_size=32, patch_size=8, in_chans=3))
    with pytest.raises(DataError, match=re.escape(f"image {cut} cannot be read")):
        data.check_images([s[0] for s in ds.samples])
    for i, (path, _) in enumerate(ds.samples):
        if not path.endswith("0.png"):
            with pytest.raises(DataError, match=re.escape(f"image {path} cannot be read")):
                ds[i]


def test_evaluation_set_checks_the_model_fits(tmp_path):
    """Fashion-MNIST for a model of another input size or channels, more classes than outputs, a model
    without a head: refused by name before any image is read; fewer classes: a warning."""
    from core.errors import ModelError

    with pytest.raises(DataError, match="m takes 3x32x32 images but Fashion-MNIST's are 1x28x28"):
        data.evaluation_set("fashion-mnist", "test", 4, tiny_vit(img_size=32, patch_size=8, in_chans=3), "m")
    with pytest.raises(DataError, match="Fashion-MNIST has 10 classes but m has 5 outputs"):
        data.evaluation_set("fashion-mnist", "test", 4, tiny_vit(num_classes=5), "m")
    with pytest.raises(ModelError, match="m has no classifier head"):
        data.evaluation_set("fashion-mnist", "test", 4, tiny_vit(num_classes=0), "m")
    with pytest.raises(DataError, match="--limit 0 leaves no images"):
        data.evaluation_set("fashion-mnist", "test", 0, tiny_vit(), "m")
