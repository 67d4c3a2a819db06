"""How well predicted costs match measured ones."""
from __future__ import annotations

import numpy as np

__all__ = ["within", "rmse", "mape", "kendall_tau", "spearman", "largest_swap", "LARGEST_SWAP_NOTE", "evaluate", "calibrate_linear"]


def _pair(pred, meas):
    p, m = np.asarray(pred, dtype=np.float64), np.asarray(meas, dtype=np.float64)
    if p.shape != m.shape or p.ndim != 1:
        raise ValueError(f"predicted {p.shape} and measured {m.shape} must be 1-D of equal length")
    return p, m


def within(pred, meas, tol: float) -> float:
    """Fraction of predictions within +-tol (relative) of the measurement."""
    p, m = _pair(pred, meas)
    return float(np.mean(np.abs(p - m) <= tol * np.abs(m))) if len(m) else float("nan")


def rmse(pred, meas) -> float:
    p, m = _pair(pred, meas)
    return float(np.sqrt(np.mean((p - m) ** 2))) if len(m) else float("nan")


def mape(pred, meas) -> float:
    """Mean absolute percentage error, in percent."""
    p, m = _pair(pred, meas)
    return float(100 * np.mean(np.abs(p - m) / np.abs(m))) if len(m) else float("nan")


def kendall_tau(pred, meas) -> float:
    from scipy.stats import kendalltau
    p, m = _pair(pred, meas)
    return float(kendalltau(p, m).statistic) if len(m) > 1 else float("nan")


def spearman(pred, meas) -> float:
    from scipy.stats import spearmanr
    p, m = _pair(pred, meas)
    return float(spearmanr(p, m).statistic) if len(m) > 1 else float("nan")


LARGEST_SWAP_NOTE = ("Largest swap: the largest measured difference between two subnets ordered the other way (or "
                     "tied). Kendall tau counts every swapped pair, however close, so it falls as the subnets' "
                     "latencies lie closer together; the largest swap says how far apart two subnets must be for "
                     "the ranking to hold.")


def largest_swap(pred, meas) -> float:
    """The largest relative difference between two measured values, `max / min - 1`, of a pair that `pred`
    orders the other way or ties; 0.0 when every pair is ordered as measured (or none differs).

    Kendall tau counts swapped pairs however close they are, so it depends on how the sample is spread as
    much as on the predictions: two subnets 1 % apart swap at any noise. This says how far apart subnets
    must be for the predictions (or a second measurement) to order them reliably."""
    p, m = _pair(pred, meas)
    if len(m) < 2:
        return 0.0
    i, j = np.triu_indices(len(m), 1)
    dm, dp = np.sign(m[i] - m[j]), np.sign(p[i] - p[j])
    bad = (dm != 0) & (dp != dm)
    if not bad.any():
        return 0.0
    hi, lo = np.maximum(m[i], m[j])[bad], np.minimum(m[i], m[j])[bad]
    return float(np.max(hi / lo) - 1)


def evaluate(pred, meas) -> dict:
    """All metrics: acc10/acc5 (fractions), rmse (unit of the inputs), mape (%), kendall_tau, spearman,
    largest_swap (fraction)."""
    return {"n": len(np.asarray(meas)), "acc10": within(pred, meas, 0.10), "acc5": within(pred, meas, 0.05),
            "rmse": rmse(pred, meas), "mape": mape(pred, meas), "kendall_tau": kendall_tau(pred, meas),
            "spearman": spearman(pred, meas), "largest_swap": largest_swap(pred, meas)}


def calibrate_linear(x, meas) -> tuple[float, float]:
    """Least-squares (slope, intercept) mapping a unitless cost (OPs, FLOPs) to the measured unit."""
    x, m = _pair(x, meas)
    if len(m) < 2 or np.ptp(x) == 0:
        return (float(np.mean(m) / np.mean(x)) if len(m) and np.mean(x) else 1.0), 0.0
    a, b = np.polyfit(x, m, 1)
    return float(a), float(b)
