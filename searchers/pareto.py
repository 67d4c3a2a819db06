"""Pareto bins (NAS-BNN: the most accurate arch per cost bin), the non-dominated front, hypervolume."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["pareto_bins", "nondominated", "hypervolume"]


def pareto_bins(candidates: Iterable, cost_key: str, bin_width: float) -> list:
    """Most accurate candidate per bin `floor(cost / bin_width)`, sorted by cost; ties keep the earliest."""
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    best: dict[int, object] = {}
    for c in candidates:
        b = math.floor(c.costs[cost_key] / bin_width)
        if b not in best or c.accuracy > best[b].accuracy:
            best[b] = c
    return [best[b] for b in sorted(best)]


def nondominated(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (cost, accuracy) points no other point beats (lower-or-equal cost and higher accuracy)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    out, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            out.append(i)
            best = points[i][1]
    return out


def hypervolume(points: Sequence[tuple[float, float]], ref_cost: float, ref_accuracy: float = 0.0) -> float:
    """Area of (cost, accuracy) space dominated by `points` (minimise cost, maximise accuracy) and bounded by
    the reference point: cost <= ref_cost, accuracy >= ref_accuracy."""
    pts = sorted((c, a) for c, a in points if c <= ref_cost and a > ref_accuracy)
    area, best = 0.0, ref_accuracy
    for i, (c, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_cost
        area += (nxt - c) * (best - ref_accuracy)
    return area
