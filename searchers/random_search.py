"""Random search: uniform ND archs within the constraints, evaluated in rounds of `batch_size`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.space import SearchSpace

from ._session import Session
from .base import check_float, check_int
from .result import SearchResult

__all__ = ["RandomSearcher"]


class RandomSearcher:
    name = "random"

    def __init__(self, num_samples: int = 512 + 20 * 256, batch_size: int = 256, bin_width: float | None = None,
                 n_bins: int = 100, max_tries_factor: int = 50):
        own = type(self).__name__
        self.num_samples = check_int(own, "num_samples", num_samples, 1)
        self.batch_size = check_int(own, "batch_size", batch_size, 1)
        self.bin_width = check_float(own, "bin_width", bin_width, 1e-300, float("inf"), allow_none=True)
        self.n_bins = check_int(own, "n_bins", n_bins, 1)
        self.max_tries_factor = check_int(own, "max_tries_factor", max_tries_factor, 1)

    def params(self) -> dict:
        return {k: getattr(self, k) for k in ("num_samples", "batch_size", "bin_width", "n_bins", "max_tries_factor")}

    def search(self, space: SearchSpace | str, evaluate: Callable[[Arch], float], cost_model,
               constraints: Sequence = (), budget: int | None = None, seed: int = 0,
               checkpoint_dir: str | Path | None = None) -> SearchResult:
        total = self.num_samples if budget is None else min(self.num_samples, budget)
        with Session.start(self.name, self.params(), space, evaluate, cost_model, constraints, budget, seed,
                           checkpoint_dir) as s:
            if not s.resume():
                s.check_satisfiable()
            while len(s.evaluated) < total:
                gen = s.generation + 1
                n = min(self.batch_size, total - len(s.evaluated))
                archs = s.sample_feasible(n, self.max_tries_factor * n, include_extremes=False)
                new = s.evaluate(archs, gen, ["random"] * len(archs))
                if gen == 0:
                    s.set_bins(self.bin_width, self.n_bins)
                s.record(gen, len(new))
                if not new:       # the feasible region is exhausted (or too rare to hit)
                    break
            return s.result()
