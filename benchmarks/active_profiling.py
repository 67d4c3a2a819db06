"""Active vs uniform-random layer profiling on a simulated device, or replayed from real measurements.

Every layer config of a space is a candidate measurement. Each strategy measures `--initial` layers at
random, fits a latency predictor, then adds `--batch` layers per round: the most uncertain ones (relative
ensemble spread; or absolute spread times how often the layer occurs in random subnets), random ones,
"coverage": no model at all, the layers farthest (standardised features) from everything measured, times
the square root of how often they occur (a frequency-weighted k-centre choice), or "hybrid", the rank sum
of the weighted spread and coverage, which is what `nasbnn-hw profile --active` uses.
After each round the predictor (plus a whole-network correction fitted on the same few calibration
subnets for every strategy) predicts held-out subnets and the still-unmeasured layers.

    .venv/bin/python benchmarks/active_profiling.py --space imagenet --seeds 3
    # replay a real campaign (every layer of the space and some whole subnets measured on the device):
    .venv/bin/python benchmarks/active_profiling.py --space small --store m.db --device local --held-out 40 --calibration 20
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cost_models._layers import space_layer_configs  # noqa: E402
from cost_models.active import active_profile, coverage_scores, hybrid_scores  # noqa: E402
from cost_models.metrics import evaluate  # noqa: E402
from cost_models.predictor import LatencyPredictor  # noqa: E402
from cost_models.synthetic import SimulatedDevice  # noqa: E402
from nasbnn_hw.core.layers import arch_layers  # noqa: E402
from nasbnn_hw.core.sampling import sample_uniform  # noqa: E402
from nasbnn_hw.core.space import get_space  # noqa: E402


class ReplayDevice:
    """Answers 'measurements' with what a real campaign stored: every layer of the space and some subnets."""

    def __init__(self, store, device, space, pool):
        from cost_models._store import load_device_measurements, subnet_space_arch
        data = load_device_measurements(store, device)
        missing = [c.key() for c in pool if c.key() not in data.layers]
        if missing:
            raise SystemExit(f"{store}: {len(missing)} layers of {space.name} not measured on {device} "
                             f"(first: {missing[0]}); run nasbnn-hw profile --layers first")
        self.layers = {c: data.layers[c.key()].median_s for c in pool}
        self.subnets = {}
        for m in data.subnets:
            sa = subnet_space_arch(m)
            if sa and sa[0].name == space.name and sa[0].resolution == space.resolution:
                self.subnets[sa[1]] = m.median_s

    def measure_layer(self, c):
        return self.layers[c]

    def true_layer_latency(self, c):
        return self.layers[c]

    def measure_subnet(self, arch, space):
        return self.subnets[arch]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="imagenet")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--initial", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--budget", type=int, default=120)
    ap.add_argument("--held-out", type=int, default=300, help="held-out subnets")
    ap.add_argument("--calibration", type=int, default=20, help="measured subnets for the correction")
    ap.add_argument("--n-estimators", type=int, default=32)
    ap.add_argument("--store", help="replay the measurements of --device from this store instead of simulating")
    ap.add_argument("--device", default="local")
    ap.add_argument("--resolution", type=int, help="override the space's resolution (as profiled)")
    args = ap.parse_args(argv)

    space = get_space(args.space)
    if args.resolution:
        space = space.with_resolution(args.resolution)
    pool = space_layer_configs(space)
    rng = random.Random(1234)
    if args.store:
        dev = ReplayDevice(args.store, args.device, space, pool)
        archs = list(dev.subnets)
        rng.shuffle(archs)
        held, calib = archs[:args.held_out], archs[args.held_out:args.held_out + args.calibration]
    else:
        dev = SimulatedDevice(name="sim", noise=0.02)
        held = [sample_uniform(space, rng) for _ in range(args.held_out)]
        calib = [sample_uniform(space, rng) for _ in range(args.calibration)]
    held_layers = [arch_layers(a, space) for a in held]
    held_meas = np.array([dev.measure_subnet(a, space) for a in held])
    calib_layers = [arch_layers(a, space) for a in calib]
    calib_meas = [dev.measure_subnet(a, space) for a in calib]
    freq = Counter(c for ls in held_layers for c in ls)
    weights = [freq.get(c, 0) + 1 for c in pool]
    true_layer = {c: dev.true_layer_latency(c) for c in pool}
    print(f"space {space.name}: {len(pool)} distinct layer configs, {len(held)} held-out subnets, "
          f"{len(calib)} calibration subnets, seeds {args.seeds}")

    def evaluate_round(fitted, measured):
        model = fitted.model
        model.fit_correction(calib_layers, calib_meas)
        cfgs = sorted({c for ls in held_layers for c in ls})
        members = model.predict_layer_members(cfgs)
        row = {c: i for i, c in enumerate(cfgs)}
        sums = np.array([members[[row[c] for c in ls]].sum(axis=0) for ls in held_layers])
        nl = np.array([len(ls) for ls in held_layers])[:, None]
        pred = model.correct(sums, nl).mean(axis=1)
        sub = evaluate(pred, held_meas)
        rest = [c for c in pool if c not in measured]
        lay = evaluate(model.predict_layers(rest)[0], [true_layer[c] for c in rest]) if len(rest) > 1 else {}
        return {"sub_acc10": sub["acc10"], "sub_acc5": sub["acc5"], "sub_mape": sub["mape"],
                "layer_acc10": lay.get("acc10", float("nan"))}

    class _Fitted:  # the predictor plus the layers it was fitted on (for the coverage choices)
        def __init__(self, model, items):
            self.model, self.items = model, list(items)

        def __getattr__(self, name):
            return getattr(self.model, name)

    weight_of = dict(zip(pool, weights))

    def coverage(fitted, items):
        return np.ones(len(items)), coverage_scores(items, fitted.items, [weight_of[c] for c in items])

    def hybrid(fitted, items):
        return np.ones(len(items)), hybrid_scores(fitted.model, items, fitted.items, [weight_of[c] for c in items])

    strategies = {"random": dict(strategy="random"),
                  "active": dict(strategy="uncertainty", score="relative"),
                  "active-weighted": dict(strategy="uncertainty", score="absolute", weights=weights),
                  "coverage": dict(strategy="uncertainty", score="absolute", uncertainty=coverage),
                  "hybrid (profile --active)": dict(strategy="uncertainty", score="absolute", uncertainty=hybrid)}
    curves: dict[str, dict[int, list[dict]]] = {s: {} for s in strategies}
    t0 = time.time()
    for seed in range(args.seeds):
        for name, kw in strategies.items():
            res = active_profile(pool, lambda items: [dev.measure_layer(c) for c in items], budget=args.budget,
                                 initial=args.initial, batch_size=args.batch, seed=seed,
                                 fit=lambda xs, ys, s=seed: _Fitted(LatencyPredictor(
                                     n_estimators=args.n_estimators, random_state=s).fit(xs, ys), xs),
                                 evaluate=evaluate_round, **kw)
            for r in res.rounds:
                curves[name].setdefault(r.n_measured, []).append(r.metrics)
    print(f"({time.time() - t0:.1f} s)\n")
    names = list(strategies)
    print("held-out subnets: ±10% / ±5% / MAPE; unmeasured layers: ±10% (mean over seeds)")
    print("measured | " + " | ".join(f"{n:^31s}" for n in names))
    for n_meas in sorted(curves["random"]):
        cells = []
        for n in names:
            ms = curves[n][n_meas]
            m = {k: float(np.nanmean([x[k] for x in ms])) for k in ms[0]}
            cells.append(f"{100 * m['sub_acc10']:5.1f}% {100 * m['sub_acc5']:5.1f}% {m['sub_mape']:5.2f}% "
                         f"L{100 * m['layer_acc10']:5.1f}%")
        print(f"{n_meas:8d} | " + " | ".join(f"{c:^31s}" for c in cells))
    print()
    for metric, label in (("sub_acc10", "±10%"), ("sub_acc5", "±5%")):
        mean = {n: {k: float(np.mean([x[metric] for x in ms])) for k, ms in curves[n].items()} for n in names}
        target = mean["random"][max(mean["random"])]  # what random reaches with the whole budget
        first = {n: next((k for k in sorted(mean[n]) if mean[n][k] >= target - 1e-9), None) for n in names}
        cells = [f"{n} {first[n] if first[n] is not None else f'>{args.budget}'}"
                 + (f" ({first['random'] / first[n]:.1f}x fewer)" if first[n] and first["random"] and n != "random"
                    else "") for n in names]
        print(f"layers measured to reach random's final held-out {label} ({100 * target:.1f}%): " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
