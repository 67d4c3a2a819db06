"""Search a trained supernet: evaluate subnets (BN recalibration, held-out accuracy) under a cost model and
constraints with any registered searcher, save the result and its Pareto plots, and pick the best subnet
under budgets. The `search` and `quickstart` commands call this module."""
from __future__ import annotations

import json
from pathlib import Path

from nasbnn_hw.errors import NasBnnError


def write_best_archs(result, out_dir: Path, budgets: list[float]) -> list[dict]:
    """best/<i>.json: the most accurate Pareto arch under each budget (default: 3 budgets along the front)."""
    from searchers.errors import SearchError
    pareto = sorted(result.pareto, key=lambda c: c.costs[result.cost_model])
    if not pareto:
        raise NasBnnError("the search found no arch that meets the constraints")
    if not budgets:
        costs = [c.costs[result.cost_model] for c in pareto]
        budgets = sorted({costs[int(round(q * (len(costs) - 1)))] for q in (0.25, 0.5, 1.0)})
    rows = []
    best_dir = out_dir / "best"
    best_dir.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(budgets):
        try:
            c = result.best(b)
        except SearchError:
            continue
        path = best_dir / f"budget{i}.json"
        c.arch.save(path)
        rows.append({"budget": b, "unit": result.cost_unit, "arch_file": str(path), "accuracy": c.accuracy,
                     "costs": c.costs})
    from nasbnn_hw.utils import atomic_write_text
    atomic_write_text(out_dir / "best.json", json.dumps(rows, indent=1) + "\n")
    return rows


def run_search_with_checkpoint(checkpoint, cost: str, constraints, out_dir, *, searcher="evolutionary",
                               budget=None, seed=0, store=None, predictor=None, data=None, calib_batches=4,
                               calib_batch_size=256, val_limit=None, searcher_params=None, progress=True,
                               device="cpu", workers=0):
    """Run `searcher` over the supernet of `checkpoint` (its own data unless `data`) with cost model `cost`
    under `constraints`; resumable from `out_dir/state`. The fitness (BN recalibration + top-1) runs on
    `device` (auto | cpu | cuda[:N]), an image folder decoded by `workers` processes. Returns (result, plot
    paths, space)."""
    from searchers.plot import plot_pareto_fronts
    from searchers.run import run_search

    from nasbnn_hw.nn.checkpoint import load_supernet
    from nasbnn_hw.train.evaluate import SubnetEvaluator, calibration_batches
    from nasbnn_hw.nn.subnet_io import data_for_checkpoint
    if store is not None:  # latency-based costs of a device that does not agree with itself: say so
        import sys

        from cost_models.registry import split_name
        from nasbnn_hw.profiling.timing import noise_warning
        names = [cost] + [str(c).split("<=")[0].strip() for c in constraints]
        for dev in dict.fromkeys(d for d in (split_name(n)[1] for n in names) if d):
            warn = noise_warning(store, dev)
            if warn:
                print(warn, file=sys.stderr)
    from nasbnn_hw.train.device import resolve_device
    ck = load_supernet(checkpoint)
    net, space = ck.supernet.to(resolve_device(device)), ck.supernet.space
    splits = data_for_checkpoint(ck.extra, space, data)
    val = splits.val if not val_limit else splits.val.subset(range(min(val_limit, len(splits.val))))
    evaluator = SubnetEvaluator(net, calibration_batches(splits.train, calib_batches, calib_batch_size,
                                                         workers=workers), val, workers=workers)
    if progress:
        from nasbnn_hw.utils import progress_bar
        bar = progress_bar(desc="search: evaluated", unit="arch")

        def evaluate(arch):
            acc = evaluator(arch)
            bar.update(1)
            bar.set_postfix(best=f"{max(evaluator.cache.values()):.2f}")
            return acc
    else:
        evaluate = evaluator
    out_dir = Path(out_dir)
    try:
        result = run_search(space, evaluate, cost=cost, constraints=list(constraints), searcher=searcher,
                            budget=budget, seed=seed, checkpoint_dir=out_dir / "state", store=store,
                            predictor=predictor, searcher_params=searcher_params)
    finally:
        if progress:
            bar.close()
    result.save(out_dir / "result.json")
    plots = plot_pareto_fronts(result, out_dir)
    return result, plots, space
