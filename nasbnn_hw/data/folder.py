"""Image folders read lazily: one file is opened, decoded and augmented per sample, nothing is cached.

Layouts: `ROOT/train/<class>/...` with `ROOT/val/<class>/...` (or `ROOT/test`), or class-per-folder
`ROOT/<class>/...` (no val split). `FolderData[(epoch, index)]` is deterministic in (seed, epoch, index),
so `batches()` gives the same tensors with any number of workers or processes. Unreadable images are
skipped (replaced by the next readable file) and logged, or raise `DataError` with `strict=True`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile

from nasbnn_hw.data.sets import DataError
from nasbnn_hw.data.transforms import EvalTransform, sample_rng, to_mode

log = logging.getLogger("nasbnn_hw.data")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
FileList = list[tuple[Path, int]]


def _class_dirs(d: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))


def _images(d: Path, label: int) -> FileList:
    """Image files below `d` (recursively, like torchvision's ImageFolder), in sorted order."""
    out = []
    for dirpath, dirnames, fnames in sorted(os.walk(d, followlinks=True)):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        out += [(Path(dirpath) / f, label) for f in sorted(fnames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def _scan_split(d: Path, classes: list[str]) -> FileList:
    files: FileList = []
    for label, c in enumerate(classes):
        if (d / c).is_dir():
            files += _images(d / c, label)
    return files


def scan_folder(root: Path) -> dict:
    """Find the image files of `root`: {"root", "classes", "train": [(path, label)], "val": [...] or None}.

    Classes are the sorted folder names (of `root/train` in the split layout; a val class missing
    from train is an error); hidden folders are ignored; files are sorted.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist or is not a directory")
    split = (root / "train").is_dir()
    tdir = root / "train" if split else root
    classes = _class_dirs(tdir)
    if not classes:
        raise DataError(f"{tdir} has no class folders (expected ROOT/<class>/<image>, or ROOT/train/<class> "
                        f"and ROOT/val/<class>)")
    train = _scan_split(tdir, classes)
    if not train:
        raise DataError(f"{tdir}: no images found in its {len(classes)} class folders "
                        f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
    val = None
    vdir = next((root / n for n in ("val", "test") if split and (root / n).is_dir()), None)
    if vdir is not None:
        extra = sorted(set(_class_dirs(vdir)) - set(classes))
        if extra:
            raise DataError(f"{vdir} has class folders absent from {tdir}: {', '.join(extra[:5])}")
        val = _scan_split(vdir, classes)
        if not val:
            raise DataError(f"{vdir}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return {"root": root, "classes": classes, "train": train, "val": val}


def fitness_split(files: Sequence[tuple[Path, int]], per_class: int = 50, seed: int = 0) -> tuple[FileList, FileList]:
    """Hold out min(per_class, n_c) files of each class (the search-fitness set), chosen with a fixed seed.

    Each class's choice depends only on (seed, label) and its own files; both lists keep the input order.
    """
    if per_class < 0:
        raise DataError(f"per_class must be >= 0, got {per_class}")
    by_class: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(files):
        by_class.setdefault(int(y), []).append(i)
    held: set[int] = set()
    for y, idx in by_class.items():
        perm = np.random.default_rng([int(seed), y]).permutation(len(idx))[: min(per_class, len(idx))]
        held.update(idx[j] for j in perm)
    train = [tuple(f) for i, f in enumerate(files) if i not in held]
    return train, [tuple(f) for i, f in enumerate(files) if i in held]


def _guard_truncated() -> None:
    """Truncated files must fail to load: keep Pillow's LOAD_TRUNCATED_IMAGES off."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; reset to False so truncated images are detected")
        ImageFile.LOAD_TRUNCATED_IMAGES = False


class FolderData(torch.utils.data.Dataset):
    """Image files decoded on demand. `ds[(epoch, index)] -> (float32 CHW tensor, label)`.

    The paths are stored in one numpy byte buffer (not a list of Python objects), so forked loader workers
    do not copy them page by page. With strict=False an unreadable file is replaced by the next readable
    one ((index + 1) % n, ...; its own label), warned about once per file per process and added to
    `self.skipped` (per process: workers keep their own sets). strict=True raises DataError instead.
    """

    def __init__(self, files: Sequence[tuple[Path, int]], classes: Sequence[str], resolution: int,
                 in_channels: int, transform: Callable | None = None, seed: int = 0, strict: bool = False):
        if not files:
            raise DataError("FolderData needs at least one image file")
        if in_channels not in (1, 3):
            raise DataError(f"image folders give 1 or 3 channels, not {in_channels}")
        enc = [os.fsencode(str(p)) for p, _ in files]
        self._offsets = np.cumsum([0] + [len(b) for b in enc], dtype=np.int64)
        self._blob = np.frombuffer(b"".join(enc), dtype=np.uint8).copy()
        self._labels = np.asarray([int(y) for _, y in files], dtype=np.int64)
        self.classes = list(classes)
        if self._labels.min() < 0 or self._labels.max() >= len(self.classes):
            raise DataError(f"labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes")
        self.resolution, self.in_channels, self.seed, self.strict = int(resolution), in_channels, int(seed), strict
        self.transform = EvalTransform(self.resolution) if transform is None else transform
        self.skipped: set[str] = set()
        _guard_truncated()

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> torch.Tensor:
        """Every file's label (no decoding)."""
        return torch.from_numpy(self._labels.copy())

    def subset(self, idx) -> "FolderData":
        """The samples at `idx` (same transform, seed and strictness), as `TensorData.subset`."""
        idx = [int(i) for i in idx]
        return FolderData([(self.path(i), int(self._labels[i])) for i in idx], self.classes, self.resolution,
                          self.in_channels, self.transform, self.seed, self.strict)

    def path(self, index: int) -> str:
        return os.fsdecode(self._blob[self._offsets[index]:self._offsets[index + 1]].tobytes())

    def _open(self, path: str) -> Image.Image:
        with Image.open(path) as img:
            img.load()  # decodes fully: a truncated file raises here
            return to_mode(img, self.in_channels)  # the decoded core outlives the closed file

    def _read(self, index: int) -> tuple[Image.Image, int]:
        n = len(self)
        for k in range(n):
            j = (index + k) % n
            path = self.path(j)
            try:
                return self._open(path), int(self._labels[j])
            except Exception as e:  # any decode failure (OSError, SyntaxError, ValueError, bombs, ...)
                reason = f"{type(e).__name__}: {e}"
                if self.strict:
                    raise DataError(f"cannot read image {path}: {reason}") from e
                if path not in self.skipped:
                    self.skipped.add(path)
                    log.warning("skipping unreadable image %s (%s); using the next readable file", path, reason)
        raise DataError(f"none of the {n} image files is readable (first: {self.path(0)})")

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        try:
            epoch, index = key
        except (TypeError, ValueError):
            raise DataError(f"FolderData keys are (epoch, index) pairs, got {key!r}") from None
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        img, label = self._read(index)
        x = self.transform(img, sample_rng(self.seed, int(epoch), index))
        if x.shape[0] != self.in_channels:
            raise DataError(f"transform {self.transform!r} gave {x.shape[0]} channels, expected {self.in_channels}")
        return x, label


class KeyBatches(torch.utils.data.Sampler):
    """Batch sampler: for each per-step index list, the list of (epoch, index) keys."""

    def __init__(self, index_lists: Iterable[Sequence[int]], epoch: int):
        self.index_lists, self.epoch = index_lists, int(epoch)

    def __iter__(self):
        for step, idx in enumerate(self.index_lists):
            keys = [(self.epoch, int(i)) for i in idx]
            if not keys:
                raise DataError(f"step {step} of epoch {self.epoch} has an empty index list")
            yield keys

    def __len__(self) -> int:
        return len(self.index_lists)


def _init_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)
    _guard_truncated()


def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([s[0] for s in samples]).to(torch.float32), torch.tensor([s[1] for s in samples], dtype=torch.long)


def batches(dataset: FolderData, index_lists: Iterable[Sequence[int]], epoch: int, workers: int = 0,
            pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader yielding (x float32 (B, C, H, W), y int64 (B,)) for each index list of this epoch.

    `index_lists` are the trainer's per-step index lists, already sliced for this rank. Memory is
    O(batch x workers x prefetch): nothing decoded is kept.
    """
    if workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")
    accel = getattr(torch, "accelerator", None)
    pin = bool(pin_memory) and (accel.is_available() if accel is not None else torch.cuda.is_available())
    return torch.utils.data.DataLoader(dataset, batch_sampler=KeyBatches(index_lists, epoch), num_workers=workers,
                                       collate_fn=_collate, pin_memory=pin, persistent_workers=False,
                                       worker_init_fn=_init_worker if workers > 0 else None)
