"""Pareto-front plots (PNG, matplotlib Agg backend): accuracy against the search's cost axis and against OPs."""
from __future__ import annotations

from pathlib import Path

from .constraints import format_cost
from .pareto import nondominated
from .result import SearchResult

__all__ = ["plot_pareto", "plot_pareto_fronts"]


def _scale(unit: str) -> tuple[float, str]:
    return {"s": (1e3, "ms"), "B": (2 ** -20, "MiB"), "OPs": (1e-6, "M OPs"), "FLOPs": (1e-6, "M FLOPs"),
            "BOPs": (1e-6, "M BOPs"), "params": (1e-6, "M params")}.get(unit, (1.0, unit))


def plot_pareto(result: SearchResult, path: str | Path, x: str | None = None, *, others=()) -> Path:
    """Scatter all evaluated archs and draw the Pareto front, accuracy vs cost `x` (default: the search's
    cost axis; "ops" for OPs). `others`: more results drawn as fronts only (e.g. random search)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    key = x or result.cost_model
    unit = result.cost_unit if key == result.cost_model else ("OPs" if key == "ops" else "")
    f, label = _scale(unit)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    ax.scatter([f * c.costs[key] for c in result.evaluated], [c.accuracy for c in result.evaluated], s=5,
               alpha=0.25, color="gray", label=f"{result.searcher}: evaluated ({len(result.evaluated)})")
    for res, color in [(result, "C0")] + [(o, f"C{i + 1}") for i, o in enumerate(others)]:
        pts = [(c.costs[key], c.accuracy) for c in res.pareto]
        front = sorted(pts[i] for i in nondominated(pts))
        ax.step([f * p[0] for p in front], [p[1] for p in front], where="post", color=color,
                marker="o", ms=3, label=f"{res.searcher}: Pareto front ({len(front)})")
    for text in result.constraints:
        if text.split()[0] == key:
            from .constraints import parse_constraint
            ax.axvline(f * parse_constraint(text).value, color="k", ls=":", lw=0.8, label=text)
    ax.set_xlabel(f"{key} ({label})")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{result.space}: accuracy vs {key}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_pareto_fronts(result: SearchResult, out_dir: str | Path, others=()) -> list[Path]:
    """pareto_<cost>.png and, when the cost axis is not OPs, pareto_ops.png."""
    out = Path(out_dir)
    keys = [result.cost_model] + (["ops"] if result.cost_model != "ops" else [])
    return [plot_pareto(result, out / f"pareto_{k.replace('@', '_at_')}.png", k, others=others) for k in keys]


__all__ += ["format_cost"]
