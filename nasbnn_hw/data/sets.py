"""Datasets, read from local files only (nothing is downloaded).

Sources: `fashion-mnist` (Debian package `dataset-fashion-mnist`, or any directory of the standard IDX
gzip files), `digits` (scikit-learn, always available), `cifar10:DIR` (a `cifar-10-batches-py`
directory), `imagefolder:DIR` (class-per-folder images read with Pillow), or a bare directory path
(kind detected). Inputs are resized to the space's resolution and channel count.
"""
from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nasbnn_hw.errors import NasBnnError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm")


class DataError(NasBnnError):
    """A dataset is missing or malformed."""


@dataclass
class TensorData:
    """A dataset held in memory: images (N, C, H, W) float32 normalised, labels (N,) int64."""
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    augment: object = None   # a per-sample train transform (tensor, rng) -> tensor, e.g. CIFAR's crop + flip
    seed: int = 0

    def __len__(self):
        return len(self.labels)

    def subset(self, idx) -> "TensorData":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TensorData(self.images[idx], self.labels[idx], self.num_classes, self.name, self.augment, self.seed)

    def batch(self, idx: torch.Tensor, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at `idx`; augmented per sample from (seed, epoch, index) when `augment` is set."""
        x, y = self.images[idx], self.labels[idx]
        if self.augment is not None:
            from .transforms import sample_rng
            x = torch.stack([self.augment(xi, sample_rng(self.seed, epoch, int(i))) for xi, i in zip(x, idx)])
        return x, y


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


@dataclass
class Splits:
    train: TensorData   # supernet training (a streamed `folder.FolderData` for image folders)
    val: TensorData     # held-out part of the training set: search fitness
    test: TensorData    # the dataset's own test split: final numbers
    # in-memory sets: the per-channel (mean, std) of the [0, 1] training images that inputs are normalised with
    # (None for image folders: mean = std = 0.5); class names when the data has them
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    class_names: tuple[str, ...] | None = None


IDX_MAX_DIMS = 4


def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array (MNIST's format: a 4-byte magic, one 32-bit big-endian size per dimension,
    the bytes); a truncated, corrupt or foreign file is a DataError naming it."""
    import zlib
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read ({' '.join(str(e).split())[:100]})") from None
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file: {len(data)} bytes, shorter than its header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= IDX_MAX_DIMS:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic bytes {data[:4].hex()}; expected "
                        f"0000 08 and 1 to {IDX_MAX_DIMS} dimensions)")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, {head} needed)")
    shape = struct.unpack(">" + "I" * ndim, data[4:head])
    size = math.prod(shape)
    if len(data) - head != size:
        raise DataError(f"{path}: the header says {' x '.join(map(str, shape))} = {size} bytes of data, the file "
                        f"holds {len(data) - head} (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape)


def _find_idx(d: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (d / name).exists():
            return d / name
    raise DataError(f"{d} lacks {stem}.gz (expected the four standard IDX files of MNIST/Fashion-MNIST)")


def load_idx_dir(d: Path, name: str):
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        xp, yp = _find_idx(d, f"{prefix}-images-idx3-ubyte"), _find_idx(d, f"{prefix}-labels-idx1-ubyte")
        x, y = _read_idx(xp), _read_idx(yp)
        if x.ndim != 3 or y.ndim != 1:
            raise DataError(f"{xp if x.ndim != 3 else yp}: {x.ndim if x.ndim != 3 else y.ndim} dimensions; "
                            "expected images N x H x W and labels N")
        _check_pairs(x, y, f"{xp.name} / {yp.name} in {d}", split)
        out[split] = (x[:, None].astype(np.float32) / 255.0, y.astype(np.int64))
    return out


def _check_pairs(x: np.ndarray, y: np.ndarray, where: str, split: str) -> None:
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
    if split == "train" and not len(y):
        raise DataError(f"{where}: no training images")
    if 0 in x.shape[1:]:
        raise DataError(f"{where}: images of shape {x.shape[1:]}")


def load_digits_arrays():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images[:, None] / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))  # fixed split: 80 % train, 20 % test
    cut = int(0.8 * len(y))
    return {"train": (x[perm[:cut]], y[perm[:cut]]), "test": (x[perm[cut:]], y[perm[cut:]])}


def load_cifar_dir(d: Path):
    import pickle

    class _NumpyOnly(pickle.Unpickler):  # the CIFAR files are pickles: allow plain containers and numpy only
        def find_class(self, module, name):
            if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in (
                    "ndarray", "dtype", "_reconstruct", "scalar"):
                return getattr(__import__(module, fromlist=[name]), name)
            raise DataError(f"{d}: refusing to unpickle {module}.{name} from a CIFAR batch file")

    def read(name):
        p = d / name
        if not p.exists():
            raise DataError(f"{d} lacks {name} (expected a cifar-10-batches-py directory: data_batch_1..5, test_batch)")
        try:
            with open(p, "rb") as f:
                b = _NumpyOnly(f, encoding="bytes").load()
            data, labels = b[b"data"], b[b"labels"]
            x = np.asarray(data)
            y = np.asarray(labels)
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
                raise DataError(f"{p}: data of {x.dtype} {x.shape}; expected uint8 N x 3072 (32 x 32 RGB)")
            if y.ndim != 1 or y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
                raise DataError(f"{p}: labels of {y.dtype} {y.shape}; expected N class indices >= 0")
        except DataError:
            raise
        except (pickle.UnpicklingError, EOFError, OSError, KeyError, TypeError, ValueError, IndexError,
                AttributeError, MemoryError, RecursionError) as e:
            raise DataError(f"{p} is not a CIFAR-10 python batch (a dict with b'data' and b'labels'): "
                            f"{type(e).__name__}: {' '.join(str(e).split())[:100]}") from None
        _check_pairs(x, y, str(p), "train" if name != "test_batch" else "test")
        return x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, y.astype(np.int64)
    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    return {"train": (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
            "test": read("test_batch")}


def _to_space(x: np.ndarray, resolution: int, in_channels: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.size(1) != in_channels:
        if in_channels == 1:
            t = t.mean(1, keepdim=True)
        elif t.size(1) == 1:
            t = t.expand(-1, in_channels, -1, -1)
        else:
            raise DataError(f"cannot map {t.size(1)} input channels to the space's {in_channels}")
    if t.size(-1) != resolution or t.size(-2) != resolution:
        t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return t.contiguous()


def resolve_source(source: str) -> tuple[str, Path | None]:
    if source in ("digits",):
        return "digits", None
    if source in ("fashion-mnist", "fashion_mnist", "fmnist"):
        for d in FASHION_MNIST_DIRS:
            if Path(d).is_dir():
                return "idx", Path(d)
        raise DataError("Fashion-MNIST not found in /usr/share/datasets/fashion-mnist: install it with "
                        "'apt-get install dataset-fashion-mnist', or pass --data DIR holding the four IDX .gz files")
    if ":" in source and source.split(":", 1)[0] in ("idx", "mnist", "cifar10", "imagefolder"):
        kind, path = source.split(":", 1)
        kind = "idx" if kind == "mnist" else kind
        p = Path(path)
    else:
        p = Path(source)
        if not p.is_dir():
            raise DataError(f"unknown data source {source!r} (allowed: digits, fashion-mnist, cifar10:DIR, "
                            f"imagefolder:DIR, idx:DIR, or a directory)")
        if (p / "data_batch_1").exists():
            kind = "cifar10"
        elif any(p.glob("train-images-idx3-ubyte*")):
            kind = "idx"
        else:
            kind = "imagefolder"
    if not p.is_dir():
        raise DataError(f"data directory {str(p)!r} does not exist")
    return kind, p


def folder_splits(path: Path, resolution: int, in_channels: int, val_fraction: float = 0.1,
                  limit_train: int | None = None, seed: int = 0, strict_images: bool = False) -> Splits:
    """An image folder, streamed: train with RandomResizedCrop + flip, the search's fitness split held out of
    it (the official rule: 50 images per class, fixed seed; fewer in a class with fewer than 500 images:
    `val_fraction` of its images), test = val/ (or test/) with resize + centre crop. Files are never moved."""
    import random

    from .folder import FolderData, fitness_split, scan_folder
    from .transforms import EvalTransform, TrainTransform
    scan = scan_folder(path)
    counts = np.bincount([y for _, y in scan["train"]], minlength=len(scan["classes"]))
    per_class = int(min(50, max(1, round(int(counts.min()) * val_fraction))))
    train, fitness = fitness_split(scan["train"], per_class=per_class, seed=seed)
    if limit_train is not None and limit_train < len(train):
        keep = sorted(random.Random(seed).sample(range(len(train)), limit_train))
        train = [train[i] for i in keep]
    if not train:
        raise DataError(f"image folder {str(path)!r}: no training images left after holding out {per_class} per "
                        "class for the search's fitness split")

    def make(files, tf):
        return FolderData(files, scan["classes"], resolution, in_channels, tf, seed=seed, strict=strict_images)
    test = scan["val"] or []
    return Splits(make(train, TrainTransform(resolution)), make(fitness, EvalTransform(resolution)),
                  make(test, EvalTransform(resolution)) if test else TensorData(
                      torch.zeros(0, in_channels, resolution, resolution), torch.zeros(0, dtype=torch.long),
                      len(scan["classes"]), f"imagefolder:{path}"), class_names=tuple(scan["classes"]))


def load_splits(source: str, resolution: int, in_channels: int, val_fraction: float = 0.1,
                limit_train: int | None = None, seed: int = 0, *, augment: bool = False,
                strict_images: bool = False) -> Splits:
    """Train/val/test splits. val is a deterministic held-out part of the training set (search fitness).
    Image folders are streamed (`folder_splits`); the small sets are held in memory, and with `augment` their
    training split gets CIFAR's official augmentation (pad 4, random crop, flip; the padding is 0 after
    normalisation, i.e. the mean colour)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must lie in (0, 1)")
    kind, path = resolve_source(source)
    name = {"digits": "digits", "idx": f"idx:{path}", "cifar10": "cifar10", "imagefolder": f"imagefolder:{path}"}[kind]
    if kind == "imagefolder":
        return folder_splits(path, resolution, in_channels, val_fraction, limit_train, seed, strict_images)
    if kind == "digits":
        arrays = load_digits_arrays()
    elif kind == "idx":
        arrays = load_idx_dir(path, name)
    else:
        arrays = load_cifar_dir(path)
    xtr, ytr = arrays["train"]
    xte, yte = arrays["test"]
    num_classes = int(max(ytr.max(), yte.max() if len(yte) else 0)) + 1
    x_all = _to_space(np.concatenate([xtr, xte]) if len(xte) else xtr, resolution, in_channels)
    mean = x_all[: len(xtr)].mean(dim=(0, 2, 3), keepdim=True)  # normalise with training statistics only
    std = x_all[: len(xtr)].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x_all = (x_all - mean) / std
    xtr_t, xte_t = x_all[: len(xtr)], x_all[len(xtr):]
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_fraction * len(ytr))))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if limit_train is not None:
        train_idx = train_idx[:limit_train]
    full = TensorData(xtr_t, torch.from_numpy(ytr), num_classes, name)
    train = full.subset(train_idx)
    if augment:
        from .transforms import CifarTrain
        train.augment, train.seed = CifarTrain(resolution), seed
    names = {"digits": tuple(str(i) for i in range(10)),
             "idx": FASHION_MNIST_CLASSES if num_classes == 10 and "fashion" in str(path).lower() else None}.get(kind)
    return Splits(train, full.subset(val_idx), TensorData(xte_t, torch.from_numpy(yte), num_classes, name),
                  normalisation=(tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())), class_names=names)


def default_source() -> tuple[str, str]:
    """The main job's data: Fashion-MNIST when installed, else digits (with the reason)."""
    try:
        resolve_source("fashion-mnist")
        return "fashion-mnist", "Fashion-MNIST from the dataset-fashion-mnist package"
    except DataError:
        return "digits", "scikit-learn digits (Fashion-MNIST not installed: apt-get install dataset-fashion-mnist)"
