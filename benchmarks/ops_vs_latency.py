"""How far OPs mislead at scale: subnets of equal OPs and the spread of their measured latency, and the pick
of a latency-aware vs an OPs-aware user at equal measured latency budget.

    python benchmarks/ops_vs_latency.py [--resolutions 64 224] [--sets 4] [--per-set 5] [--pool 400]

imagenet space at each resolution: `--pool` random subnets (ND-uniform, seeded) are scored by OPs; `--sets`
OPs levels spread over the pool's range each collect up to `--per-set` subnets within +-5 % of that level.
Every collected subnet is compiled (random weights: time does not depend on the values) and measured on
this machine with the `local` device profile's protocol (reference kernel interleaved, 1 thread).

Budget duel: among the measured subnets, the latency-aware user takes the most accurate one whose measured
latency is within the budget; the OPs-aware user converts the budget into OPs with the best linear fit of
OPs to the measured latencies and takes the most accurate one within that OPs budget. The accuracy is
SYNTHETIC (`searchers.synthetic.SyntheticAccuracy`: rises with log OPs plus fixed per-gene effects), not a
trained network's: the figure shows which subnets each rule admits, not real top-1.
Prints tables, then a JSON line.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path


def _collect(space, n_sets: int, per_set: int, pool: int, seed: int = 3):
    from nasbnn_hw.core.layers import count_ops
    from nasbnn_hw.core.sampling import sample_uniform
    rng = random.Random(seed)
    archs = list({sample_uniform(space, rng) for _ in range(pool)})
    archs.sort(key=lambda a: a.to_json())
    ops = {a: count_ops(a, space).ops / 1e6 for a in archs}
    lo, hi = sorted(ops.values())[len(ops) // 20], sorted(ops.values())[-len(ops) // 20]
    sets = []
    for i in range(n_sets):
        level = lo + (hi - lo) * (i + 0.5) / n_sets
        members = [a for a in archs if abs(ops[a] / level - 1) <= 0.05][:per_set]
        if len(members) >= 2:
            sets.append((level, members))
    return sets, ops


def run(resolution: int, n_sets: int, per_set: int, pool: int) -> dict:
    from device_profiles import load_profile
    from nasbnn_hw.deploy.tvm_net import compile_random_subnet
    from nasbnn_hw.profiling.devices import timing_for
    from nasbnn_hw.profiling.profiler import _Clock, _tvm_version
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.profiling.runners.local import LocalRunner
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.profiling.store import MeasurementStore
    from searchers.synthetic import SyntheticAccuracy
    from cost_models.metrics import calibrate_linear
    space = get_space("imagenet").with_resolution(resolution)
    sets, ops = _collect(space, n_sets, per_set, pool)
    profile = load_profile("local")
    timing = timing_for(profile)
    acc = SyntheticAccuracy(space, seed=0)
    lat = {}
    with tempfile.TemporaryDirectory() as d, MeasurementStore(Path(d) / "m.db") as st, \
            LocalRunner(threads=profile.threads) as runner:
        clock = _Clock(runner, timing, st, "local", resolve_target(profile), _tvm_version(), Path(d))
        for level, members in sets:
            for i, a in enumerate(members):
                net = compile_random_subnet(a, space, profile, seed=i)
                lib = net.export(Path(d) / f"s{len(lat)}.so")
                lat[a] = clock.time(lib, net.arg_specs())[0]
                Path(lib).unlink()
                print(f"  {resolution}: OPs {ops[a]:.1f} M -> {lat[a] * 1e3:.3f} ms", file=sys.stderr, flush=True)
    rows = []
    for level, members in sets:
        t = sorted(lat[a] for a in members)
        rows.append({"ops_M": level, "n": len(members), "min_ms": t[0] * 1e3, "median_ms": statistics.median(t) * 1e3,
                     "max_ms": t[-1] * 1e3, "max_over_min": t[-1] / t[0]})
    measured = list(lat)
    slope, icpt = calibrate_linear([ops[a] for a in measured], [lat[a] for a in measured])
    duel = []
    times = sorted(lat.values())
    for q in (0.25, 0.5, 0.75):
        b = times[int(q * (len(times) - 1))]
        ob = (b - icpt) / slope
        la = max((a for a in measured if lat[a] <= b), key=acc)
        oa = max((a for a in measured if ops[a] <= ob), key=acc, default=min(measured, key=lambda a: ops[a]))
        duel.append({"budget_ms": b * 1e3, "ops_budget_M": ob,
                     "latency_aware": {"ms": lat[la] * 1e3, "ops_M": ops[la], "synthetic_acc": acc(la)},
                     "ops_aware": {"ms": lat[oa] * 1e3, "ops_M": ops[oa], "synthetic_acc": acc(oa)}})
    return {"resolution": resolution, "sets": rows, "duel": duel, "fit_ms_per_mop": slope * 1e3,
            "fit_intercept_ms": icpt * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--sets", type=int, default=4)
    ap.add_argument("--per-set", type=int, default=5)
    ap.add_argument("--pool", type=int, default=400)
    a = ap.parse_args(argv)
    out = []
    for r in a.resolutions:
        res = run(r, a.sets, a.per_set, a.pool)
        out.append(res)
        print(f"\n## imagenet at {r}x{r}: equal OPs (±5 %), measured latency\n")
        print("| OPs (M) | subnets | min ms | median ms | max ms | max / min |")
        print("|---|---|---|---|---|---|")
        for s in res["sets"]:
            print(f"| {s['ops_M']:.1f} | {s['n']} | {s['min_ms']:.3f} | {s['median_ms']:.3f} | {s['max_ms']:.3f} | "
                  f"{s['max_over_min']:.2f}x |")
        print(f"\nbudget duel (synthetic accuracy); OPs fit: {res['fit_ms_per_mop']:.4f} ms/M OPs + "
              f"{res['fit_intercept_ms']:.3f} ms\n")
        print("| budget ms | OPs budget (M) | latency-aware: ms / OPs / acc | OPs-aware: ms / OPs / acc |")
        print("|---|---|---|---|")
        for d in res["duel"]:
            la, oa = d["latency_aware"], d["ops_aware"]
            print(f"| {d['budget_ms']:.3f} | {d['ops_budget_M']:.1f} | {la['ms']:.3f} / {la['ops_M']:.1f} / "
                  f"{la['synthetic_acc']:.2f} | {oa['ms']:.3f} / {oa['ops_M']:.1f} / {oa['synthetic_acc']:.2f} |")
    print(json.dumps({"ops_vs_latency": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
