"""A cheap, deterministic stand-in for supernet accuracy, for tests and benchmarks of the searchers.

accuracy = a saturating function of log OPs + additive per-gene effects drawn once from `seed` (so some
widths, kernels and group counts are better than others at equal cost, and a searcher has structure to
find) + a small arch-keyed jitter. Not a model of any real network.
"""
from __future__ import annotations

import math
import random
import time
import zlib

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.layers import count_ops
from nasbnn_hw.core.sampling import largest, smallest
from nasbnn_hw.core.space import SearchSpace, get_space

__all__ = ["SyntheticAccuracy"]


class SyntheticAccuracy:
    def __init__(self, space: SearchSpace | str, seed: int = 0, gene_effect: float = 0.006, jitter: float = 0.002,
                 delay_s: float = 0.0):
        self.space = get_space(space)
        self.seed, self.gene_effect, self.jitter, self.delay_s = seed, gene_effect, jitter, delay_s
        self.calls = 0
        self._lo = math.log(count_ops(smallest(self.space), self.space).ops)
        self._hi = math.log(count_ops(largest(self.space), self.space).ops)
        rng = random.Random(seed)
        self._effect = {}
        for si, spec in enumerate(self.space.stages):
            for bi in range(spec.max_depth):
                for field, choices in (("c", spec.channels), ("k", spec.kernel), ("g1", spec.groups1),
                                       ("g2", spec.groups2)):
                    for v in choices:
                        self._effect[(si, bi, field, v)] = rng.gauss(0, gene_effect)

    def __call__(self, arch: Arch) -> float:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        x = (math.log(count_ops(arch, self.space).ops) - self._lo) / max(self._hi - self._lo, 1e-12)
        acc = 0.55 + 0.25 * (1 - math.exp(-3 * x))
        for si, bi, b in arch.blocks():
            acc += (self._effect[(si, bi, "c", b.channels)] + self._effect[(si, bi, "k", b.kernel)]
                    + self._effect[(si, bi, "g1", b.groups1)] + self._effect[(si, bi, "g2", b.groups2)])
        h = zlib.crc32(f"{self.seed}|{arch.to_json()}".encode()) / 2 ** 32
        return acc + self.jitter * (2 * h - 1)
