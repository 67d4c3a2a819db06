"""Resolving cost-model names and constraint strings; `run_search`, the one call a CLI needs."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.space import SearchSpace, get_space

from .constraints import bind_constraints
from .errors import SearchError
from .result import SearchResult

__all__ = ["prepare", "run_search"]


def _resolver(space: SearchSpace, known: dict, cost_kwargs: dict):
    from cost_models.registry import get_cost_model
    from cost_models.registry import split_name

    def resolve(name: str):
        if name not in known:
            base, device = split_name(name)
            kw = dict(cost_kwargs) if device else {}
            known[name] = get_cost_model(name, space, **kw)
        return known[name]
    return resolve


def prepare(space: SearchSpace, cost_model, constraints: Sequence, **cost_kwargs):
    """(cost model object, bound constraints); names are looked up in the cost-model registry."""
    if isinstance(constraints, str):
        constraints = [constraints]
    known: dict = {}
    resolve = _resolver(space, known, cost_kwargs)
    if isinstance(cost_model, str):
        cost_model = resolve(cost_model)
    elif not (hasattr(cost_model, "costs") and hasattr(cost_model, "name")):
        raise SearchError(f"cost_model must be a cost-model name or object, got {type(cost_model).__name__}")
    known.setdefault(cost_model.name, cost_model)
    return cost_model, bind_constraints(constraints, resolve)


def run_search(space: SearchSpace | str, evaluate: Callable[[Arch], float], *, cost: str | object = "ops",
               constraints: Sequence[str] = (), searcher: str = "evolutionary", budget: int | None = None,
               seed: int = 0, checkpoint_dir: str | Path | None = None, store=None, predictor=None,
               allow_other_device: bool = False, searcher_params: dict | None = None) -> SearchResult:
    """Search by names: `cost="latency@rpi4"`, `constraints=["latency@rpi4 <= 30ms", "params <= 2M"]`.

    Device cost models (`NAME@DEVICE`) are built with `store=` (lookup table) and/or `predictor=`.
    """
    from .registry import get_searcher
    space = get_space(space)
    kw = {k: v for k, v in (("store", store), ("predictor", predictor)) if v is not None}
    if allow_other_device:
        kw["allow_other_device"] = True
    cost_model, bound = prepare(space, cost, constraints, **kw)
    return get_searcher(searcher, **(searcher_params or {})).search(
        space, evaluate, cost_model, bound, budget=budget, seed=seed, checkpoint_dir=checkpoint_dir)
