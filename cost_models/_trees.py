"""Regression trees as plain data (JSON-safe lists) and their vectorised evaluation.

Loading a predictor never unpickles anything: a tree is five arrays, evaluated here with numpy. The
comparison mirrors scikit-learn's (features cast to float32, `x <= threshold` goes left).
"""
from __future__ import annotations

import numpy as np

__all__ = ["tree_to_dict", "check_tree_dict", "predict_trees"]

MAX_LOG_RESIDUAL = 50.0   # a leaf scales its layer's base latency by exp(value): e^50 is already absurd


def tree_to_dict(estimator) -> dict:
    t = estimator.tree_
    return {"left": t.children_left.tolist(), "right": t.children_right.tolist(), "feature": t.feature.tolist(),
            "threshold": t.threshold.tolist(), "value": t.value[:, 0, 0].tolist(), "max_depth": int(t.max_depth)}


def check_tree_dict(d: dict, n_features: int) -> dict:
    """Validate one stored tree and convert it to arrays; raise ValueError on any inconsistency."""
    keys = ("left", "right", "feature", "threshold", "value")
    if not isinstance(d, dict) or any(k not in d for k in keys):
        raise ValueError(f"a tree needs keys {keys}")
    arrs = {k: np.asarray(d[k]) for k in keys}
    for k, a in arrs.items():
        if a.ndim != 1 or a.dtype.kind not in ("iu" if k in ("left", "right", "feature") else "iuf"):
            raise ValueError(f"tree field '{k}' must be a flat list of "
                             f"{'integers' if k in ('left', 'right', 'feature') else 'numbers'} (got {a.dtype} "
                             f"with shape {a.shape})")
    n = len(arrs["left"])
    if n == 0 or any(len(a) != n for a in arrs.values()):
        raise ValueError("tree arrays differ in length or are empty")
    left, right = arrs["left"].astype(np.int64), arrs["right"].astype(np.int64)
    feat = arrs["feature"].astype(np.int64)
    internal = left != -1
    if ((left[internal] <= np.nonzero(internal)[0]).any() or (right[internal] <= np.nonzero(internal)[0]).any()
            or (left >= n).any() or (right >= n).any() or (feat[internal] < 0).any()
            or (feat[internal] >= n_features).any()):
        raise ValueError("tree has out-of-range child or feature indices")
    thr, val = arrs["threshold"].astype(np.float64), arrs["value"].astype(np.float64)
    if not (np.isfinite(thr).all() and (np.abs(val) <= MAX_LOG_RESIDUAL).all()):
        raise ValueError(f"tree thresholds must be finite and values (log-latency residuals) within "
                         f"+-{MAX_LOG_RESIDUAL:g}")
    stored = d.get("max_depth", 0)
    if type(stored) is not int or not 0 <= stored < n:
        raise ValueError(f"tree max_depth must be an integer from 0 to {n - 1} (got {stored!r})")
    depth, node = 0, np.zeros(1, dtype=np.int64)   # the real depth: children always follow their parent
    while len(node := node[internal[node]]):
        node, depth = np.unique(np.concatenate([left[node], right[node]])), depth + 1
    return {"left": left, "right": right, "feature": np.where(internal, feat, 0), "threshold": thr, "value": val,
            "max_depth": depth}


def predict_trees(trees: list[dict], X: np.ndarray) -> np.ndarray:
    """(n_samples, n_trees) predictions of validated trees."""
    X = np.asarray(X, dtype=np.float32).astype(np.float64)
    n = len(X)
    rows = np.arange(n)
    out = np.empty((n, len(trees)))
    for j, t in enumerate(trees):
        left, right, feat, thr = t["left"], t["right"], t["feature"], t["threshold"]
        node = np.zeros(n, dtype=np.int64)
        for _ in range(t["max_depth"] + 1):
            internal = left[node] != -1
            if not internal.any():
                break
            go_left = X[rows, feat[node]] <= thr[node]
            node = np.where(internal, np.where(go_left, left[node], right[node]), node)
        out[:, j] = t["value"][node]
    return out
