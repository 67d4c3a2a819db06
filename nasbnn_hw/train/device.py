"""Where training and evaluation run: `--device auto|cpu|cuda[:N]`, mixed precision (`--amp bf16|fp16`,
fp16 with a gradient scaler) and channels-last memory format."""
from __future__ import annotations

import contextlib
import os

import torch

from nasbnn_hw.errors import NasBnnError

AMP_MODES = ("bf16", "fp16")


def resolve_device(spec: str = "cpu") -> torch.device:
    """`auto`: a GPU when there is one (under torchrun the one of this process's LOCAL_RANK), else the CPU;
    `cpu`; `cuda` / `cuda:N`: that GPU, refused in one line when there is none."""
    s = str(spec or "cpu").strip().lower()
    if s == "auto":
        s = "cuda" if torch.cuda.is_available() else "cpu"
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        if not torch.cuda.is_available():
            raise NasBnnError(f"--device {spec}: no CUDA GPU is available here (this torch build or machine has "
                              "none); use --device cpu or auto")
        n = torch.cuda.device_count()
        idx = int(s[5:]) if ":" in s else int(os.environ.get("LOCAL_RANK", 0)) % n
        if idx >= n:
            raise NasBnnError(f"--device {spec}: this machine has {n} GPU(s) (cuda:0..cuda:{n - 1})")
        torch.cuda.set_device(idx)
        return torch.device("cuda", idx)
    raise NasBnnError(f"--device {spec!r} is not allowed; expected auto, cpu, cuda or cuda:N")


def check_amp(amp: str | None, device: torch.device) -> str | None:
    """The mixed-precision mode for `device` (None: full precision); fp16 needs a GPU."""
    if not amp:
        return None
    if amp not in AMP_MODES:
        raise NasBnnError(f"--amp {amp!r} is not allowed; expected one of {', '.join(AMP_MODES)}")
    if amp == "fp16" and device.type != "cuda":
        raise NasBnnError("--amp fp16 needs a CUDA device (float16 autocast on a CPU is not supported); use "
                          "--amp bf16 there")
    return amp


def autocast(device: torch.device, amp: str | None):
    """The autocast context of `amp` on `device` (a no-op without amp)."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str | None):
    """A gradient scaler for fp16 (None otherwise: bf16 keeps float32's exponent range)."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=device.type == "cuda")
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def model_device(model) -> torch.device:
    return next(model.parameters()).device
