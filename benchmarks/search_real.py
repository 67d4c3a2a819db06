"""Evolutionary vs random search on a trained supernet (real accuracy after BN recalibration) with a
latency predictor fitted on measured TVM kernels, at equal numbers of evaluated subnets.

For each seed both searchers run once; then, under each of 3 latency budgets, the best accuracy found and
the hypervolume (accuracy x latency area dominated, up to the budget) are compared. Accuracies of seen
archs are shared between runs (they do not depend on the searcher).

    python benchmarks/search_real.py --run runs/quickstart --seeds 3
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from cost_models.registry import get_cost_model
from nasbnn_hw.nn.checkpoint import load_supernet
from nasbnn_hw.train.evaluate import SubnetEvaluator, calibration_batches
from nasbnn_hw.core.sampling import largest, smallest
from nasbnn_hw.nn.subnet_io import data_for_checkpoint
from searchers.pareto import hypervolume
from searchers.run import run_search


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/quickstart", help="a quickstart output directory")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--val-limit", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    ck = load_supernet(run / "supernet" / "checkpoint.pt")
    net, space = ck.supernet, ck.supernet.space
    splits = data_for_checkpoint(ck.extra, space)
    evaluator = SubnetEvaluator(net, calibration_batches(splits.train, 4, 256),
                                splits.val.subset(range(min(args.val_limit, len(splits.val)))))
    cost = "latency@local"
    model = get_cost_model(cost, space, predictor=str(run / "predictor.json"), store=str(run / "measurements.db"))
    lo, hi = float(model.cost(smallest(space))), float(model.cost(largest(space)))
    budgets = [lo + f * (hi - lo) for f in (0.25, 0.5, 0.75)]
    half = args.population // 4
    evo = {"population_size": args.population, "generations": args.generations, "mutations": half, "crossovers": half}
    n_evals = args.population + args.generations * 2 * half
    rows = {"evolutionary": [], "random": []}
    for seed in range(args.seeds):
        for name, params in (("evolutionary", evo), ("random", {"num_samples": n_evals})):
            res = run_search(space, evaluator, cost=cost, searcher=name, seed=seed, searcher_params=params,
                             predictor=str(run / "predictor.json"), store=str(run / "measurements.db"))
            pts = [(c.costs[cost], c.accuracy) for c in res.evaluated]
            per_budget = []
            for b in budgets:
                under = [a for c, a in pts if c <= b]
                per_budget.append((max(under) if under else float("nan"), hypervolume(pts, b, 0.0) / (b - lo)))
            rows[name].append((len(res.evaluated), per_budget))
            print(f"seed {seed} {name:12s} evaluated {len(res.evaluated):4d}  " + "  ".join(
                f"≤{b * 1e3:.4f}ms: best {acc:.2f} HV {hv:.2f}" for b, (acc, hv) in zip(budgets, per_budget)), flush=True)
    print(f"\nmean over {args.seeds} seeds (accuracy: top-1 % on {len(evaluator.val)} held-out training images; "
          f"HV: hypervolume / (budget - smallest latency), in top-1 %)")
    for i, b in enumerate(budgets):
        line = f"budget {b * 1e3:.4f} ms: "
        for name in rows:
            accs = [r[1][i][0] for r in rows[name]]
            hvs = [r[1][i][1] for r in rows[name]]
            line += (f"{name} best {statistics.mean(accs):.2f}±{statistics.pstdev(accs):.2f} "
                     f"HV {statistics.mean(hvs):.2f}±{statistics.pstdev(hvs):.2f}   ")
        print(line)
    print(f"evaluations per run: evolutionary {statistics.mean(r[0] for r in rows['evolutionary']):.0f}, "
          f"random {statistics.mean(r[0] for r in rows['random']):.0f}; distinct archs evaluated {len(evaluator.cache)}")


if __name__ == "__main__":
    main()
