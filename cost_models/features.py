"""Per-layer features of the learned latency predictors (feature schema, versioned).

A change to the names, their order or their meaning must bump `FEATURE_SCHEMA_VERSION`: saved predictors
record the schema and refuse to load under another one.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nasbnn_hw.core.layers import LayerConfig

__all__ = ["FEATURE_SCHEMA_VERSION", "FEATURE_NAMES", "BASE_FEATURE_NAMES", "layer_features", "base_features"]

FEATURE_SCHEMA_VERSION = 1

FEATURE_NAMES = (
    "kind_stem", "kind_bconv", "kind_head", "in_channels", "out_channels", "in_words_per_group", "kernel",
    "groups", "stride", "resolution", "out_resolution", "log_bops", "log_flops", "log_word_ops",
    "log_in_act", "log_out_act", "log_weights",
)

# Linear (physical) terms of the base model: seconds ~ sum_i coef_i * term_i, all coefficients >= 0.
BASE_FEATURE_NAMES = ("kind_stem", "kind_bconv", "kind_head", "word_ops", "flops", "act_elems", "weights")


def _terms(c: LayerConfig) -> dict[str, float]:
    k, g, h, ho = c.kernel, c.groups, c.resolution, c.out_resolution
    words = -(-(c.in_channels // g) // 64)           # 64-bit words per input pixel of one group
    if c.kind == "bconv":
        word_ops = k * k * words * c.out_channels * ho * ho   # popcount(xnor) word operations
        weights = k * k * (c.in_channels // g) * c.out_channels
    elif c.kind == "stem":
        word_ops = 0
        weights = k * k * c.in_channels * c.out_channels
    else:
        word_ops = 0
        weights = c.in_channels * c.out_channels
    in_act = c.in_channels * h * h
    out_act = c.out_channels * (ho * ho if c.kind != "head" else 1)
    return {"words": words, "word_ops": word_ops, "weights": weights, "in_act": in_act, "out_act": out_act,
            "bops": c.bops(), "flops": c.flops()}


def layer_features(configs: Sequence[LayerConfig]) -> np.ndarray:
    """Feature matrix (n, len(FEATURE_NAMES)), float64."""
    rows = []
    for c in configs:
        t = _terms(c)
        rows.append((c.kind == "stem", c.kind == "bconv", c.kind == "head", c.in_channels, c.out_channels,
                     t["words"], c.kernel, c.groups, c.stride, c.resolution, c.out_resolution,
                     np.log1p(t["bops"]), np.log1p(t["flops"]), np.log1p(t["word_ops"]), np.log1p(t["in_act"]),
                     np.log1p(t["out_act"]), np.log1p(t["weights"])))
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))


def base_features(configs: Sequence[LayerConfig]) -> np.ndarray:
    """Terms of the linear base model (n, len(BASE_FEATURE_NAMES))."""
    rows = []
    for c in configs:
        t = _terms(c)
        rows.append((c.kind == "stem", c.kind == "bconv", c.kind == "head", t["word_ops"], t["flops"],
                     t["in_act"] + t["out_act"], t["weights"]))
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(BASE_FEATURE_NAMES))
