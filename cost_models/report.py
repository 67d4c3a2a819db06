"""Predicted vs measured latency of subnets: a markdown table, scatter plots (PNG) and the points (CSV).

`rows` are dicts, one per measured subnet: `{"measured": seconds, "<model>": prediction, ...}` plus any
other keys (`"id"`, `"arch"`, ...), which go to the CSV only. Models whose unit is not seconds (OPs, FLOPs,
...; see `units`) are first mapped to seconds by a least-squares line fitted on these same subnets — an
in-sample fit that flatters them; their rank metrics (Kendall tau, Spearman) do not depend on it.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nasbnn_hw.utils import atomic_write_text

from .errors import CostModelError
from .metrics import LARGEST_SWAP_NOTE, calibrate_linear, evaluate

__all__ = ["write_report", "scatter", "DEFAULT_UNITS"]

DEFAULT_UNITS = {"ops": "OPs", "flops": "FLOPs", "bops": "BOPs", "params": "params", "model_bytes": "B",
                 "peak_memory": "B"}
_RESERVED = {"measured", "id", "arch", "space"}


def _fmt(v: float, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def scatter(path: Path, meas, pred, m: Mapping, xlabel: str, ylabel: str, name: str) -> None:
    """A PNG of `pred` against `meas` (seconds, shown in ms) with the identity and ±10 % lines; the title
    gives `m`'s ±10 %, Kendall tau and largest swap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    meas, pred = np.asarray(meas, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.scatter(1e3 * meas, 1e3 * pred, s=10, alpha=0.7)
    lo, hi = 1e3 * min(meas.min(), pred.min()), 1e3 * max(meas.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.plot([lo, hi], [1.1 * lo, 1.1 * hi], "k:", lw=0.6)
    ax.plot([lo, hi], [0.9 * lo, 0.9 * hi], "k:", lw=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{name}: ±10% {100 * m['acc10']:.0f}%, tau {m['kendall_tau']:.3f}, "
                 f"largest swap {100 * m['largest_swap']:.1f}%", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out_dir: str | Path, rows: Sequence[Mapping], *, units: Mapping[str, str] | None = None,
                 title: str = "Cost models vs measured latency", sections: Sequence[str] = ()) -> dict:
    """Write report.md, points.csv, metrics.json and scatter_<model>.png into `out_dir`; return the metrics.
    `sections`: further markdown lines placed after the table's notes."""
    rows = list(rows)
    if not rows:
        raise CostModelError("write_report needs at least one row (a measured subnet)")
    if any("measured" not in r for r in rows):
        raise CostModelError("every row needs a 'measured' latency in seconds")
    models = [k for k in rows[0] if k not in _RESERVED and isinstance(rows[0][k], (int, float))]
    if not models:
        raise CostModelError("rows hold no model predictions (numeric keys besides 'measured')")
    units = {**DEFAULT_UNITS, **(units or {})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meas = np.array([float(r["measured"]) for r in rows])
    metrics, lines = {}, []
    for name in models:
        x = np.array([float(r[name]) for r in rows])
        unit = units.get(name, "s")
        if unit != "s":
            a, b = calibrate_linear(x, meas)
            pred, note = a * x + b, f"fit: s = {a:.3e}*{unit} + {b:.3e}"
        else:
            pred, note = x, "as predicted"
        m = evaluate(pred, meas)
        m.update({"unit": unit, "calibration": note})
        metrics[name] = m
        lines.append(f"| {name} | {_fmt(m['acc10'], True)} | {_fmt(m['acc5'], True)} | {1e3 * m['rmse']:.4f} | "
                     f"{m['mape']:.2f} | {_fmt(m['kendall_tau'])} | {_fmt(m['spearman'])} | "
                     f"{_fmt(m['largest_swap'], True)} | {note} |")
        scatter(out / f"scatter_{name.replace('@', '_at_')}.png", meas, pred, m,
                "measured latency (ms)", f"{name} (ms{'' if unit == 's' else ', linear fit'})", name)
    md = [f"# {title}", "", f"{len(rows)} measured subnets; latency in seconds unless noted.", "",
          "| model | ±10% | ±5% | RMSE (ms) | MAPE (%) | Kendall tau | Spearman | largest swap | mapping |",
          "|---|---|---|---|---|---|---|---|---|", *lines, "",
          "Analytic counts (OPs, FLOPs, ...) are mapped to seconds by a least-squares line fitted on these "
          "same subnets, which flatters their ±10%/RMSE/MAPE; rank metrics need no mapping.", "", LARGEST_SWAP_NOTE, "",
          *sections]
    md += [f"![{n}](scatter_{n.replace('@', '_at_')}.png)" for n in models]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    extra = [k for k in rows[0] if k in ("id", "space", "arch")]
    w = csv.writer(buf)
    w.writerow(extra + ["measured"] + models)
    for r in rows:
        w.writerow([json.dumps(r[k]) if not isinstance(r[k], (str, int, float)) else r[k] for k in extra]
                   + [repr(float(r["measured"]))] + [repr(float(r[n])) for n in models])
    atomic_write_text(out / "points.csv", buf.getvalue())
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return metrics
