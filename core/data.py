"""Data: Fashion-MNIST from Debian's IDX files, seeded calibration subsets, users' ImageFolders.

Fashion-MNIST is the embedded default because it ships as a Debian package (`dataset-fashion-mnist`)
and needs no network. Users bring ImageNet-layout folders; those are preprocessed as timm would
for the model's pretrained config.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from core.errors import DataError, ModelError
from core.files import atomic_write

FMNIST_NAME = "fashion-mnist"  # the --data value of the embedded default (core.arguments.FMNIST)
FMNIST_DIR_ENV = "PFCR_FMNIST_DIR"
FMNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FMNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
# Mean and std of the training split's pixels in [0, 1]; the model input is (x - mean) / std.
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
_HOW_TO_GET = (
    "install it with `apt-get install dataset-fashion-mnist` (the README's set-up does this), "
    f"or point {FMNIST_DIR_ENV} at a folder holding the four IDX .gz files"
)
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
_IDX_UBYTE = 0x08


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) of unsigned bytes into an array of its shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist; {_HOW_TO_GET}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"IDX file {path} is not a valid gzip file ({err}); reinstall the data") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number); reinstall the data")
    if raw[2] != _IDX_UBYTE:
        raise DataError(f"{path} holds IDX type 0x{raw[2]:02x}; only unsigned bytes (0x08) are supported")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header; reinstall the data")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file {path} holds {len(raw) - header} data bytes but its header {shape} "
            f"promises {expected}; the file is truncated or corrupt, reinstall the data"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, gzip-compressed as Fashion-MNIST ships it (atomically)."""
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return atomic_write(path, gzip.compress(raw) if compress else raw)


def fmnist_dir() -> Path:
    """The folder of Fashion-MNIST's IDX files: $PFCR_FMNIST_DIR, else the Debian package's."""
    return Path(os.environ.get(FMNIST_DIR_ENV, FMNIST_DEFAULT_DIR))


def load_fmnist_arrays(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] uint8 of the 'train' or 'test' split."""
    if split not in FMNIST_FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; use one of {sorted(FMNIST_FILES)}")
    root = Path(root) if root is not None else fmnist_dir()
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST folder {root} does not exist; {_HOW_TO_GET}")
    images = read_idx(root / FMNIST_FILES[split][0])
    labels = read_idx(root / FMNIST_FILES[split][1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, labels {labels.shape}"
        )
    if labels.size and labels.max() >= len(FMNIST_CLASSES):
        raise DataError(f"Fashion-MNIST {split} labels in {root} exceed the 10 classes; reinstall the data")
    return images, labels


def fmnist_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalized float [N, 1, 28, 28], the zoo models' input."""
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    return ((x - FMNIST_MEAN) / FMNIST_STD).unsqueeze(1)


def fmnist(split: str, limit: int | None = None, root: str | os.PathLike | None = None) -> TensorDataset:
    """Fashion-MNIST split as a dataset of (normalized image, label); `limit` keeps the first N."""
    images, labels = load_fmnist_arrays(split, root)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return TensorDataset(fmnist_to_tensor(images), torch.from_numpy(labels.astype(np.int64)))


@dataclass(frozen=True)
class CalibrationManifest:
    """Which training images form a calibration set: enough to redraw it exactly."""

    dataset: str
    split: str
    seed: int
    size: int
    indices: tuple[int, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(list(self.indices)).encode()).hexdigest()

    def to_json(self) -> str:
        body = {"dataset": self.dataset, "split": self.split, "seed": self.seed, "size": self.size,
                "sha256": self.sha256, "indices": list(self.indices)}
        return json.dumps(body, indent=1)


def calibration_manifest(size: int, seed: int, population: int, dataset: str = "fashion-mnist",
                         split: str = "train") -> CalibrationManifest:
    """A seeded draw of `size` distinct indices out of `population`, sorted.

    numpy's PCG64 stream is stable across releases, so the same seed gives the same subset.
    """
    if not 0 < size <= population:
        raise DataError(f"calibration size {size} must be between 1 and the split's {population} images; "
                        f"pass a --calib-size of at most {population}")
    rng = np.random.Generator(np.random.PCG64(seed))
    indices = np.sort(rng.choice(population, size=size, replace=False))
    return CalibrationManifest(dataset, split, seed, size, tuple(int(i) for i in indices))


def fmnist_calibration(size: int, seed: int, root: str | os.PathLike | None = None
                       ) -> tuple[TensorDataset, CalibrationManifest]:
    """The seeded calibration subset of Fashion-MNIST's training split, with its manifest."""
    images, labels = load_fmnist_arrays("train", root)
    manifest = calibration_manifest(size, seed, len(images))
    idx = np.asarray(manifest.indices)
    data = TensorDataset(fmnist_to_tensor(images[idx]), torch.from_numpy(labels[idx].astype(np.int64)))
    return data, manifest


class _ImageLoader:
    """Reads one image of a folder in the mode the model takes ("L": one channel, "RGB": three); a
    file that is not an image, or is truncated, is a DataError naming it (not a PIL traceback)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, path: str):
        from PIL import Image

        try:
            with open(path, "rb") as f, Image.open(f) as img:
                return img.convert(self.mode)
        except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
            raise DataError(f"image {path} cannot be read ({err}); replace or remove the file") from None


def check_images(paths: list[str]) -> None:
    """Open each image file and verify its structure (no decoding): a DataError naming the first
    file that is not an image or is cut short, before any long computation reads them."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"image {path} cannot be read ({err}); replace or remove the file") from None


@dataclass(frozen=True)
class Preprocessing:
    """How a model reads an image file: timm's eval transform for the model's pretrained config."""

    chans: int  # 1 (read as grayscale) or 3 (RGB)
    mean: tuple[float, ...]  # one per channel
    std: tuple[float, ...]
    transform: Callable  # PIL image -> normalized float tensor [C, H, W], the model's input
    scene: Callable  # PIL image -> uint8 array [H, W] (one channel) or [H, W, 3]: the same resize and crop

    @property
    def mode(self) -> str:
        return "L" if self.chans == 1 else "RGB"


def preprocessing(model: torch.nn.Module, where: str = "an image folder") -> Preprocessing:
    """The model's own preprocessing of image files (resize, center crop, mean/std), and the same up to
    the crop as 8-bit pixels (what a camera delivers before normalization: `pfcr sensor sweep`).

    Images are read with the model's channel count: grayscale for a one-channel model (the mean and
    std averaged over RGB unless the model's config gives one-channel values), RGB for three.
    """
    import timm.data
    from torchvision import transforms

    from core.models import input_spec

    chans, size = input_spec(model)
    chans = chans or 3
    if chans not in (1, 3):
        raise DataError(f"the model takes {chans}-channel images; {where} gives grayscale (1) "
                        "or RGB (3) images only: evaluate it on data prepared as its own pipeline does")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN)
    std = tuple(cfg.get("std") or timm.data.IMAGENET_DEFAULT_STD)
    if chans == 1 and len(mean) != 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    args = {"mean": mean, "std": std}
    # The model's own input size wins over its pretrained config's (a 224 default for most timm
    # names), so a model built with another img_size gets images of the size it was built for.
    if size:
        args["input_size"] = (chans, *size)
    else:
        args["in_chans"] = chans
    config = timm.data.resolve_data_config(args, model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    steps = list(transform.transforms)
    cut = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
    scene = transforms.Compose([*steps[:cut], np.asarray])
    mean, std = tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"])
    return Preprocessing(chans, mean, std, transform, scene)


def image_folder(root: str | os.PathLike, model: torch.nn.Module, scenes: bool = False) -> Dataset:
    """A user's ImageNet-layout folder (one subfolder per class), preprocessed for `model`.

    Preprocessing follows timm's eval transform for the model's pretrained config (`preprocessing`),
    so accuracy matches what timm would measure; with `scenes`, items are the 8-bit images before
    normalization (uint8 [H, W] or [H, W, 3]) instead of the model's float input.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; give a folder with one subfolder per class")
    prep = preprocessing(model, f"an image folder ({root})")
    try:
        return ImageFolder(str(root), transform=prep.scene if scenes else prep.transform,
                           loader=_ImageLoader(prep.mode))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(
            f"image folder {root} is not in ImageNet layout ({err}); put each class's images "
            "(.jpg, .png, ...) in a subfolder named after the class"
        ) from None


def to_model_input(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """8-bit images [N, H, W] or [N, H, W, C] -> normalized float [N, C, H, W], as the model's
    preprocessing computes it (float32 v / 255, then (x - mean) / std per channel)."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((x - m) / s).contiguous()


def check_fits(model: torch.nn.Module, name: str, source: str, classes: int | None = None) -> None:
    """Refuse data the model cannot take: Fashion-MNIST's 1x28x28 images for a model of another input
    size or channel count, or a folder of more classes than the model has outputs (a DataError naming
    both); warn on stderr when the data has fewer classes than the model's outputs (allowed: a subset)."""
    from core.models import input_spec, num_classes

    chans, size = input_spec(model)
    if source == FMNIST_NAME:
        want = (chans, *(size or (28, 28)))
        if (chans is not None and chans != 1) or (size is not None and tuple(size) != (28, 28)):
            raise DataError(
                f"{name} takes {'x'.join(map(str, want))} images but Fashion-MNIST's are 1x28x28; pass --data "
                "FOLDER with images for it (resized to its input), or build it for Fashion-MNIST with "
                "--model-kwargs '{\"img_size\": 28, \"in_chans\": 1, \"num_classes\": 10}' and a checkpoint "
                "trained so")
    outputs = num_classes(model)
    if classes is None or outputs is None:
        return
    if outputs == 0:
        raise ModelError(
            f"{name} has no classifier head (num_classes=0): its outputs are features, not class scores, so it "
            "has no accuracy; pass --model-kwargs '{\"num_classes\": N}' with a --checkpoint that holds a head of "
            "N classes")
    where = "Fashion-MNIST" if source == FMNIST_NAME else f"folder {source}"
    if classes > outputs:
        raise DataError(
            f"{where} has {classes} classes but {name} has {outputs} outputs; evaluate it on data of at most "
            f"{outputs} classes, or a model with a head of {classes} classes (--model-kwargs '{{\"num_classes\": "
            f"{classes}}}' and a checkpoint that holds that head)")
    if classes < outputs:
        print(f"warning: {where} has {classes} classes but {name} has {outputs} outputs: its labels are read as "
              f"the model's first {classes} classes (the subfolders in sorted order); accuracy is right only if "
              "those are the same classes", file=sys.stderr)


def split_folder(root: str | os.PathLike, split: str) -> Path:
    """An ImageNet root's `train`/`val` subfolder when it has one, else the folder itself."""
    root = Path(root)
    sub = root / split
    return sub if sub.is_dir() else root


def calibration_images(source: str, size: int, seed: int, model: torch.nn.Module, name: str = "the model"
                       ) -> tuple[torch.Tensor, CalibrationManifest]:
    """Calibration images [N, C, H, W] from Fashion-MNIST's train split or a user's folder, seeded."""
    check_fits(model, name, source)
    if source == FMNIST_NAME:
        ds, manifest = fmnist_calibration(size, seed)
        return ds.tensors[0], manifest
    folder = image_folder(split_folder(source, "train"), model)
    manifest = calibration_manifest(size, seed, len(folder), dataset=str(source), split="train")
    check_images([folder.samples[i][0] for i in manifest.indices])
    return torch.stack([folder[i][0] for i in manifest.indices]), manifest


def check_source(source: str, option: str = "--data") -> None:
    """Before anything loads: `source` is the embedded Fashion-MNIST or a folder that exists (a DataError
    naming the option, the path and the fix)."""
    if source == FMNIST_NAME:
        return
    path = Path(source)
    fix = (f"give an ImageNet-layout folder (one subfolder of images per class), or '{FMNIST_NAME}' for the "
           "embedded default")
    if not path.exists():
        raise DataError(f"{option} {source}: the folder does not exist; {fix}")
    if not path.is_dir():
        raise DataError(f"{option} {source} is a file, not a folder; {fix}")


def _sha256_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _sha256_files(samples: list[tuple[str, int]], root: Path) -> str:
    """Of a folder's images in order: each file's path under `root`, its class index and its bytes."""
    h = hashlib.sha256()
    for path, label in samples:
        h.update(os.path.relpath(path, root).encode() + b"\0" + str(label).encode() + b"\0")
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def _fmnist_set(split: str, limit: int | None, scenes: bool = False) -> tuple[Dataset, dict]:
    images, labels = load_fmnist_arrays(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.copy()) if scenes else fmnist_to_tensor(images)
    ds = TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))
    return ds, {"name": FMNIST_NAME, "split": split, "size": len(ds), "sha256": _sha256_arrays(images, labels)}


def evaluation_set(source: str, split: str, limit: int | None, model: torch.nn.Module, name: str = "the model",
                   scenes: bool = False) -> tuple[Dataset, dict]:
    """(dataset, the record's `data` field) for a command's --data/--split/--limit: the embedded
    Fashion-MNIST split, or the val/ part of a user's ImageFolder preprocessed for `model` (with
    `scenes`, 8-bit images before normalization: `image_folder`).

    Checked before anything is computed: the images fit the model (check_fits: size, channels,
    classes), `limit` is at least 1, and every image file of the set opens (check_images). The
    `data` field says which images: name, split ('folder' for a folder), size, and the sha256 of
    their content (Fashion-MNIST: the pixels and labels; a folder: each file's path, class and bytes)."""
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit} leaves no images; give a number of at least 1")
    if source == FMNIST_NAME:
        check_fits(model, name, source, len(FMNIST_CLASSES))
        return _fmnist_set(split, limit, scenes)
    check_source(source)
    root = split_folder(source, "val")
    ds = image_folder(root, model, scenes=scenes)
    check_fits(model, name, str(source), len(ds.classes))
    samples = ds.samples[:limit] if limit is not None else ds.samples
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    check_images([s[0] for s in samples])
    return ds, {"name": str(source), "split": "folder", "size": len(ds), "sha256": _sha256_files(samples, root)}


def program_set(source: str, split: str, limit: int | None, meta: dict, input_shape: list[int], program: str,
                model=None, skip: str | None = None) -> tuple[Dataset, dict, object]:
    """Images for an integer program (`pfcr bench | simulate | run`): (dataset of the program's float
    inputs with their labels, the record's `data` field, the program's float model or None).

    `--data fashion-mnist` feeds Fashion-MNIST's 1x28x28 images (the program must take those; its model
    is not loaded unless `model` is given); a folder is preprocessed as the model the program's metadata
    names expects (`core.models.load_program_model`, loaded unless given as `model`), and must come out
    at the program's input shape. Bad input is a DataError naming it and the fix; `skip` adds the
    command's way around it (e.g. "--check-images 0 to skip the bit-exact check")."""
    shape = [int(v) for v in input_shape]
    want = "x".join(map(str, shape))
    also = f", or {skip}" if skip else ""
    named = meta.get("model") if isinstance(meta.get("model"), str) else None
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit} leaves no images; give a number of at least 1")
    if source == FMNIST_NAME:
        if shape != [1, 28, 28]:
            raise DataError(
                f"{program} takes {want} images but --data {FMNIST_NAME} feeds Fashion-MNIST's 1x28x28; pass "
                f"--data FOLDER, an ImageNet-layout folder of your images (preprocessed as "
                f"{named or 'its model'} expects){also}")
        if model is None:
            return (*_fmnist_set(split, limit), None)
        return (*evaluation_set(source, split, limit, model.module, named or "the model"), model)
    check_source(source)
    if model is None:
        if named is None:
            raise DataError(f"{program} names no float model in its metadata (meta.model), so how its images are "
                            f"preprocessed is unknown; --data {source} needs a program written by `pfcr export`"
                            f"{also}")
        from core.models import load_program_model

        model = load_program_model(meta)
    ds, record = evaluation_set(source, split, limit, model.module, named or "the model")
    got = list(ds[0][0].shape)
    if got != shape:
        raise DataError(
            f"{named or 'the model'}'s preprocessing makes {'x'.join(map(str, got))} images of folder {source}, "
            f"but {program} takes {want}: the model its metadata names (with model_kwargs "
            f"{json.dumps(meta.get('model_kwargs') or {})}) is not the one it was exported from; re-export it "
            "with `pfcr export`")
    return ds, record, model


def batches(ds: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """(images, labels as numpy) batches of a dataset, in order."""
    from torch.utils.data import DataLoader

    for x, y in DataLoader(ds, batch_size=batch_size):
        yield x, np.asarray(y)


def scene_set(source: str, split: str, limit: int | None, model: torch.nn.Module | None, name: str = "the model"
              ) -> tuple[np.ndarray, np.ndarray, dict, tuple[float, ...], tuple[float, ...]]:
    """Scenes for a camera in front of `model` (`pfcr sensor sweep`): 8-bit images [N, H, W] (one-channel
    model) or [N, H, W, 3] at the model's input size, their labels, the record's `data` field, and the
    per-channel mean and std that normalize them for the model. Fashion-MNIST's images as they are (no
    model needed), or a folder resized and cropped as the model's preprocessing does (`evaluation_set`'s
    checks), before normalization."""
    if source == FMNIST_NAME:
        if limit is not None and limit < 1:
            raise DataError(f"--limit {limit} leaves no images; give a number of at least 1")
        ds, record = _fmnist_set(split, limit, scenes=True)
        return ds.tensors[0].numpy(), ds.tensors[1].numpy(), record, (FMNIST_MEAN,), (FMNIST_STD,)
    ds, record = evaluation_set(source, split, limit, model, name, scenes=True)
    items = [ds[i] for i in range(len(ds))]
    prep = preprocessing(model)
    images = np.stack([np.asarray(x, dtype=np.uint8) for x, _ in items])
    return images, np.array([y for _, y in items], dtype=np.int64), record, prep.mean, prep.std
