"""The runner protocol shared by the profiler and every device connection.

A runner receives a compiled shared library (exported with `export_library`, entry function `main`), the
shapes and dtypes of its arguments, and times repeated calls on its device. Build and run are separate
steps: the profiler compiles here, a runner runs there.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class ArgSpec:
    """One argument of the compiled function. `data` (optional) gives exact input values; otherwise the
    runner fills inputs with deterministic pseudo-random bits. Outputs are marked `is_output`."""
    shape: tuple[int, ...]
    dtype: str
    is_output: bool = False
    data: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Timing:
    """Seconds per call over `repeats` timed repeats (after warm-up)."""
    samples: tuple[float, ...]
    outputs: tuple[np.ndarray, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        q = np.percentile(self.samples, [25, 75])
        return float(q[1] - q[0])


class ClosingRunner:
    """A runner is a context manager that calls its own `close()` on exit."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Runner(Protocol):
    device: str

    def time_library(self, lib_path: Path, args: Sequence[ArgSpec], *, warmup: int, repeat: int,
                     number: int = 1, return_outputs: bool = False) -> Timing: ...

    def close(self) -> None: ...
