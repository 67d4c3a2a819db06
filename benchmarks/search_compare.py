"""Evolutionary vs random search at equal evaluation budgets on a synthetic accuracy (searchers.synthetic),
plus batched cost-model throughput (archs/s on one core).

    .venv/bin/python benchmarks/search_compare.py --space imagenet --constraint "ops <= 150M" --seeds 3
    .venv/bin/python benchmarks/search_compare.py --seeds 0        # the throughput only
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cost_models import fit_predictor, get_cost_model  # noqa: E402
from cost_models._layers import space_layer_configs  # noqa: E402
from cost_models.synthetic import SimulatedDevice  # noqa: E402
from nasbnn_hw.core.sampling import sample_uniform  # noqa: E402
from nasbnn_hw.core.space import get_space  # noqa: E402
from nasbnn_hw.profiling.store import MeasurementStore  # noqa: E402
from searchers import run_search  # noqa: E402
from searchers.synthetic import SyntheticAccuracy  # noqa: E402


def throughput(space, tmp: Path) -> None:
    st = MeasurementStore(tmp / "bench.db")
    dev = SimulatedDevice(name="sim")
    rng = random.Random(0)
    dev.fill_store(st, space_layer_configs(space), [(space, sample_uniform(space, rng)) for _ in range(100)])
    models = {"ops": get_cost_model("ops", space), "lut@sim": get_cost_model("lut@sim", space, store=st),
              "latency@sim": get_cost_model("latency@sim", space, predictor=fit_predictor(st, "sim"))}
    archs = [sample_uniform(space, rng) for _ in range(20000)]
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):  # one core: no BLAS / OpenMP threads
        _throughput(models, archs)
    st.close()


def _throughput(models, archs) -> None:
    for name, m in models.items():
        m.costs(archs[:100])
        t = time.perf_counter()
        m.costs(archs)
        dt = time.perf_counter() - t
        line = f"{name:12s} {len(archs) / dt:9.0f} archs/s (batched costs, 20000 new archs)"
        if hasattr(m, "costs_with_uncertainty"):
            t = time.perf_counter()
            m.costs_with_uncertainty(archs)
            line += f"; with uncertainty {len(archs) / (time.perf_counter() - t):.0f} archs/s"
        print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="imagenet")
    ap.add_argument("--constraint", default="ops <= 150M")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--population", type=int, default=128)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--children", type=int, default=64, help="mutations and crossovers per generation, each")
    ap.add_argument("--plot", help="directory for Pareto plots of the first seed")
    args = ap.parse_args(argv)
    space = get_space(args.space)
    budget = args.population + args.generations * 2 * args.children
    print(f"space {space.name}, constraint '{args.constraint}', budget {budget} evaluations, seeds {args.seeds}")
    evo = dict(population_size=args.population, generations=args.generations, mutations=args.children,
               crossovers=args.children)
    rnd = dict(num_samples=budget, batch_size=2 * args.children)
    hv: dict[str, list[float]] = {"evolutionary": [], "random": []}
    best: dict[str, list[float]] = {"evolutionary": [], "random": []}
    for seed in range(args.seeds):
        results = {}
        for name, params in (("evolutionary", evo), ("random", rnd)):
            t = time.perf_counter()
            r = run_search(space, SyntheticAccuracy(space, seed=5), constraints=[args.constraint], searcher=name,
                           seed=seed, searcher_params=params)
            results[name] = r
            hv[name].append(r.history[-1].hypervolume)
            best[name].append(r.history[-1].best_accuracy)
            print(f"seed {seed} {name:12s} HV {r.history[-1].hypervolume:.4f}  best acc "
                  f"{r.history[-1].best_accuracy:.4f}  Pareto bins {len(r.pareto):3d}  "
                  f"{len(r.evaluated)} evaluated in {time.perf_counter() - t:.1f} s")
        if args.plot and seed == 0:
            from searchers.plot import plot_pareto_fronts
            print("plots:", *plot_pareto_fronts(results["evolutionary"], args.plot, others=[results["random"]]))
    for name in hv if args.seeds else ():
        print(f"{name:12s} HV mean {np.mean(hv[name]):.4f} ± {np.std(hv[name]):.4f}   "
              f"best acc mean {np.mean(best[name]):.4f}")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        throughput(space, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
