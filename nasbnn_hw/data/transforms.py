"""The official NAS-BNN augmentation without torchvision, matching torchvision's definitions.

Train: RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) with bilinear resize, horizontal flip
(p=0.5), to-tensor in [0, 1], Normalize(mean=0.5, std=0.5) -> values in [-1, 1]. Eval: Resize(shorter side
to round(size / 0.875)), CenterCrop(size), same normalisation. CIFAR (in-memory tensors): zero-pad 4,
RandomCrop(32), flip. Every transform is a callable `(input, rng) -> float32 CHW tensor`, where `rng`
comes from `sample_rng(seed, epoch, index)`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from nasbnn_hw.data.sets import DataError

MEAN = STD = 0.5


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample, derived from (seed, epoch, index) only.

    This is stronger than the usual per-(rank, worker) seeding: a sample's augmentation does not depend on
    the number of processes or loader workers, on which worker decodes it, or on the order of decoding.
    """
    if min(seed, epoch, index) < 0:
        raise DataError(f"seed, epoch and index must be >= 0, got {(seed, epoch, index)}")
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def to_mode(img: Image.Image, in_channels: int) -> Image.Image:
    """Convert any Pillow image (RGB, L, CMYK, P, RGBA, LA, 1, I;16, ...) to "RGB" or, for 1 channel, "L"."""
    if in_channels not in (1, 3):
        raise DataError(f"image folders give 1 or 3 channels, not {in_channels}")
    mode = "L" if in_channels == 1 else "RGB"
    if img.mode == mode:
        return img
    if img.mode == "P" and "transparency" in img.info:  # avoids Pillow's palette-transparency warning
        img = img.convert("RGBA")
    elif img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey: scale to 8 bits instead of clipping
        a = np.asarray(img, dtype=np.float64)
        a = a / 257.0 if a.max(initial=0) > 255 else a
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return img.convert(mode)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """ToTensor + Normalize(0.5, 0.5): uint8 HWC (or HW) -> float32 CHW in [-1, 1]."""
    a = np.array(img, dtype=np.uint8, copy=True)
    t = torch.from_numpy(a[:, :, None] if a.ndim == 2 else a).permute(2, 0, 1).contiguous()
    return t.to(torch.float32).div_(255).sub_(MEAN).div_(STD)


def random_resized_crop_params(width: int, height: int, rng: np.random.Generator,
                               scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, h, w) of the crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: central crop, clamped to the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _check_size(size: int) -> int:
    if int(size) != size or size <= 0:
        raise DataError(f"transform size must be a positive integer, got {size!r}")
    return int(size)


class TrainTransform:
    """RandomResizedCrop(size) (bilinear) + horizontal flip p=0.5 + to-tensor + normalise to [-1, 1]."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        if not (0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
            raise DataError(f"RandomResizedCrop needs 0 < scale[0] <= scale[1], 0 < ratio[0] <= ratio[1]; "
                            f"got scale={scale}, ratio={ratio}")
        self.size, self.scale, self.ratio = _check_size(size), tuple(scale), tuple(ratio)

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        top, left, h, w = random_resized_crop_params(img.width, img.height, rng, self.scale, self.ratio)
        img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img)

    def __repr__(self):
        return f"TrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio})"


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's CenterCrop offsets (top, left) for an image at least `size` on each side."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


class EvalTransform:
    """Resize the shorter side to `resize` (default round(size / 0.875)), centre crop `size`, normalise.

    No randomness (the rng argument is ignored). Like torchvision, an image smaller than the crop is
    zero-padded (only possible when resize < size).
    """

    def __init__(self, size: int, resize: int | None = None):
        self.size = _check_size(size)
        self.resize = _check_size(int(round(size / 0.875)) if resize is None else resize)

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BILINEAR)
        if nw < self.size or nh < self.size:  # torchvision pads (fill 0) before cropping
            pw, ph = max(self.size - nw, 0), max(self.size - nh, 0)
            canvas = Image.new(img.mode, (nw + pw, nh + ph), 0)
            canvas.paste(img, (pw // 2, ph // 2))
            img, nw, nh = canvas, nw + pw, nh + ph
        top, left = center_crop_box(nw, nh, self.size)
        return to_tensor(img.crop((left, top, left + self.size, top + self.size)))

    def __repr__(self):
        return f"EvalTransform(size={self.size}, resize={self.resize})"


class CifarTrain:
    """CIFAR augmentation on a CHW tensor: zero-pad `padding`, random crop `size`, horizontal flip p=0.5.

    The padding value is 0 of the tensor as given (for normalised inputs: the mean colour).
    """

    def __init__(self, size: int = 32, padding: int = 4):
        self.size, self.padding = _check_size(size), int(padding)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        p = self.padding
        x = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        h, w = x.shape[-2:]
        if h < self.size or w < self.size:
            raise DataError(f"CifarTrain: padded input {h}x{w} is smaller than the crop {self.size}")
        top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
        x = x[..., top:top + self.size, left:left + self.size]
        if rng.random() < 0.5:
            x = x.flip(-1)
        return x.to(torch.float32).contiguous()

    def __repr__(self):
        return f"CifarTrain(size={self.size}, padding={self.padding})"
