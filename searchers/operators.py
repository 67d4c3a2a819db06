"""Mutation and crossover of archs under the non-decreasing (ND) width constraint (METHOD.md, "Search")."""
from __future__ import annotations

import random

from nasbnn_hw.core.arch import Arch, Block, is_valid
from nasbnn_hw.core.space import SearchSpace

__all__ = ["mutate", "crossover"]


def mutate(arch: Arch, space: SearchSpace, rng: random.Random, prob: float = 0.2) -> Arch:
    """Re-draw each stage's depth and each block's width, kernel and groups with probability `prob`.

    A re-drawn width is uniform among the stage's choices that keep ND with the neighbours (at least the
    previous block's width, at most the next block's), so the child always satisfies ND. Blocks added by a
    deeper stage get every gene drawn.
    """
    stages: list[list[Block]] = []
    fresh: list[list[bool]] = []
    for si, spec in enumerate(space.stages):
        blocks = list(arch.stages[si])
        depth = rng.choice(spec.depth) if rng.random() < prob else len(blocks)
        new = [False] * min(depth, len(blocks)) + [True] * max(0, depth - len(blocks))
        blocks = blocks[:depth] + [blocks[-1]] * max(0, depth - len(blocks))
        stages.append(blocks)
        fresh.append(new)
    flat = [(si, bi) for si, st in enumerate(stages) for bi in range(len(st))]
    for n, (si, bi) in enumerate(flat):
        spec, b, is_new = space.stages[si], stages[si][bi], fresh[si][bi]
        prev = stages[flat[n - 1][0]][flat[n - 1][1]].channels if n else 0
        nxt = stages[flat[n + 1][0]][flat[n + 1][1]].channels if n + 1 < len(flat) else float("inf")
        ch, k, g1, g2 = b.channels, b.kernel, b.groups1, b.groups2
        if is_new or rng.random() < prob:
            allowed = [c for c in spec.channels if prev <= c <= nxt]
            if allowed:
                ch = rng.choice(allowed)
        if is_new or rng.random() < prob:
            k = rng.choice(spec.kernel)
        if is_new or rng.random() < prob:
            g1 = rng.choice(spec.groups1)
        if is_new or rng.random() < prob:
            g2 = rng.choice(spec.groups2)
        stages[si][bi] = Block(ch, k, g1, g2)
    return Arch(tuple(tuple(st) for st in stages))


def crossover(a: Arch, b: Arch, space: SearchSpace, rng: random.Random) -> Arch | None:
    """Each stage's depth from either parent, each block gene (width, kernel, groups) uniformly from either
    parent (from the one that has the block when only one does). Returns None when the child breaks ND
    (such children are dropped, as in NAS-BNN)."""
    stages = []
    for si in range(len(space.stages)):
        sa, sb = a.stages[si], b.stages[si]
        depth = len(sa) if rng.random() < 0.5 else len(sb)
        blocks = []
        for bi in range(depth):
            if bi < len(sa) and bi < len(sb):
                genes = [x if rng.random() < 0.5 else y for x, y in zip(sa[bi].as_list(), sb[bi].as_list())]
                blocks.append(Block(*genes))
            else:
                blocks.append(sa[bi] if bi < len(sa) else sb[bi])
        stages.append(tuple(blocks))
    child = Arch(tuple(stages))
    return child if is_valid(child, space) else None
