"""Sampling archs: uniform under the ND constraint, largest, smallest, within a cost range."""
from __future__ import annotations

import random
from functools import lru_cache
from typing import Callable

from nasbnn_hw.core.arch import Arch, Block
from nasbnn_hw.errors import ArchError
from nasbnn_hw.core.space import SearchSpace


def largest(space: SearchSpace) -> Arch:
    """Widest, deepest, largest kernel, fewest groups."""
    return Arch(tuple(tuple(Block(max(s.channels), max(s.kernel), min(s.groups1), min(s.groups2))
                            for _ in range(max(s.depth))) for s in space.stages))


def smallest(space: SearchSpace) -> Arch:
    """Narrowest, shallowest, smallest kernel, most groups."""
    return Arch(tuple(tuple(Block(min(s.channels), min(s.kernel), max(s.groups1), max(s.groups2))
                            for _ in range(min(s.depth))) for s in space.stages))


@lru_cache(maxsize=256)
def _nd_counts(choices: tuple[tuple[int, ...], ...]):
    """counts[i][c] = number of non-decreasing completions of positions i.. when position i takes c."""
    n = len(choices)
    counts: list[dict[int, int]] = [dict() for _ in range(n)]
    for i in range(n - 1, -1, -1):
        for c in choices[i]:
            if i == n - 1:
                counts[i][c] = 1
            else:
                counts[i][c] = sum(v for c2, v in counts[i + 1].items() if c2 >= c)
    return counts


def sample_widths(choices: tuple[tuple[int, ...], ...], rng: random.Random) -> list[int]:
    """A width sequence drawn uniformly among all non-decreasing sequences with these per-position choices."""
    counts = _nd_counts(choices)
    widths, prev = [], 0
    for i in range(len(choices)):
        opts = [(c, v) for c, v in counts[i].items() if c >= prev and v > 0]
        if not opts:
            raise ArchError("no non-decreasing width sequence exists for this space")
        total = sum(v for _, v in opts)
        r = rng.randrange(total)
        for c, v in opts:
            if r < v:
                break
            r -= v
        widths.append(c)
        prev = c
    return widths


def sample_uniform(space: SearchSpace, rng: random.Random | None = None) -> Arch:
    """Depths and per-block kernel/groups uniformly; widths uniformly among ND sequences for those depths."""
    rng = rng or random.Random()
    depths = [rng.choice(s.depth) for s in space.stages]
    per_block = tuple(s.channels for s, d in zip(space.stages, depths) for _ in range(d))
    widths = iter(sample_widths(per_block, rng))
    return Arch(tuple(tuple(Block(next(widths), rng.choice(s.kernel), rng.choice(s.groups1), rng.choice(s.groups2))
                            for _ in range(d)) for s, d in zip(space.stages, depths)))


def sample_in_range(space: SearchSpace, cost: Callable[[Arch], float], low: float, high: float,
                    rng: random.Random | None = None, max_tries: int = 10000) -> Arch:
    """A uniform ND arch whose cost lies in [low, high] (rejection sampling)."""
    rng = rng or random.Random()
    for _ in range(max_tries):
        a = sample_uniform(space, rng)
        if low <= cost(a) <= high:
            return a
    lo, hi = cost(smallest(space)), cost(largest(space))
    raise ArchError(f"no arch with cost in [{low:g}, {high:g}] found in {max_tries} samples "
                    f"(space '{space.name}' spans about [{lo:g}, {hi:g}])")
