"""Argument types of the command line: every count, fraction and path option is checked when it is parsed,
so bad input ends before any work starts, in one line naming the option, the value and what is allowed."""
from __future__ import annotations

import argparse
import math
from pathlib import Path


def int_range(lo: int | None = None, hi: int | None = None):
    """An argparse type: an integer in [lo, hi] (either bound may be open)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            what = (f"from {lo} to {hi}" if lo is not None and hi is not None
                    else f">= {lo}" if lo is not None else f"<= {hi}")
            raise argparse.ArgumentTypeError(f"{v} is not allowed; expected an integer {what}")
        return v
    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False):
    """An argparse type: a finite number in the interval between lo and hi (open or closed ends)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        bad = not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) \
            or (hi is not None and (v >= hi if hi_open else v > hi))
        if bad:
            left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
            right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
            raise argparse.ArgumentTypeError(f"{text} is not allowed; expected a number "
                                             + " and ".join(x for x in (left, right) if x))
        return v
    parse.__name__ = "number"
    return parse


POSITIVE = int_range(1)
NON_NEGATIVE = int_range(0)
THREADS = int_range(1, 4096)
RESOLUTION = int_range(8, 4096)
SEED = int_range(0, 2**32 - 1)
FRACTION = float_range(0, 1, lo_open=True, hi_open=True)


def output_dir(text: str) -> str:
    """An argparse type: a directory to write into; an existing file there is refused (nothing of the
    user's is overwritten by a directory's contents)."""
    p = Path(text).expanduser()
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is an existing file; expected a directory (new or existing)")
    return text


def output_file(text: str) -> str:
    """An argparse type: a file to write; an existing directory or a missing parent directory is refused.
    Whether an existing file may be replaced is the command's decision (`--force`)."""
    p = Path(text).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; expected a file path")
    if not p.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: directory {str(p.parent)!r} does not exist")
    return text


def add_device_args(p, training: bool = False) -> None:
    """--device (and for training --amp, --channels-last) and --workers of a command that runs the network."""
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (auto: a GPU when there is one; "
                   "under torchrun each process takes the GPU of its LOCAL_RANK)")
    p.add_argument("--workers", type=NON_NEGATIVE, default=2, help="processes decoding an image folder "
                   "(default 2; in-memory sets need none)")
    if training:
        p.add_argument("--amp", choices=("bf16", "fp16"), help="mixed precision (fp16: GPU only, with a gradient "
                       "scaler; bf16: GPU or CPU)")
        p.add_argument("--channels-last", action="store_true", help="NHWC memory format for the activations")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (`nasbnn-hw CMD: error: ...`) and exit status 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
