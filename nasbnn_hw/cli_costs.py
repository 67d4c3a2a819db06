"""Cost-model subcommands: `fit` (a latency predictor from a measurement store) and `compare` (OPs, FLOPs,
lookup table and predictor against measured subnets: a report with table, plots and points)."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from .errors import NasBnnError


def _fmt_metrics(name: str, m: dict) -> str:
    return (f"{name:8s} n={m['n']:4d}  ±10% {100 * m['acc10']:5.1f}%  ±5% {100 * m['acc5']:5.1f}%  "
            f"MAPE {m['mape']:6.2f}%  RMSE {1e3 * m['rmse']:.4f}ms  Kendall {m['kendall_tau']:.3f}  "
            f"Spearman {m['spearman']:.3f}")


def cmd_fit(args) -> int:
    from cost_models.learned import fit_predictor
    from cost_models.errors import CostModelError
    if not 0 <= args.test_fraction < 1:
        raise CostModelError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    p = fit_predictor(args.store, args.device, test_fraction=args.test_fraction, seed=args.seed,
                      n_estimators=args.n_estimators, target=args.target, tvm_version=args.tvm_version)
    p.save(args.out)
    ho = p.held_out_
    print(f"fitted latency predictor for {args.device} on {p.n_train_layers_} layers and "
          f"{p.correction_['n']} subnets -> {args.out}")
    if "layers" not in ho and "subnets" not in ho:
        print("held-out quality: too few measurements to hold any out (need >= 10 layers or >= 5 subnets)")
    for part in ("layers", "subnets"):
        if part in ho:
            print("held-out " + _fmt_metrics(part, ho[part]))
    return 0


def cmd_compare(args) -> int:
    from cost_models.predictor import LatencyPredictor
    from cost_models.registry import get_cost_model
    from cost_models._store import load_device_measurements, subnet_space_arch
    from cost_models.errors import CostModelError, MissingMeasurementError
    from cost_models.learned import PredictorCostModel
    from cost_models.report import write_report
    from .layers import arch_layers

    data = load_device_measurements(args.store, args.device, args.target, args.tvm_version)
    subnets = [(m, sa) for m in data.subnets if (sa := subnet_space_arch(m)) is not None]
    if not subnets:
        raise CostModelError(f"no measured subnets for device {args.device!r} in {args.store}; measure some with "
                             f"`nasbnn-hw profile --device {args.device} --subnets N`")
    space_name = args.space or Counter(sa[0].name for _, sa in subnets).most_common(1)[0][0]
    subnets = [(m, sa) for m, sa in subnets if sa[0].name == space_name]
    if not subnets:
        raise CostModelError(f"no measured subnets of space {space_name!r} for device {args.device!r}")
    space = subnets[0][1][0]
    rng = random.Random(args.seed)
    idx = list(range(len(subnets)))
    rng.shuffle(idx)
    chosen = set(idx[:min(args.subnets, len(idx))])
    test = [subnets[i] for i in sorted(chosen)]
    train = [subnets[i] for i in range(len(subnets)) if i not in chosen]
    archs = [sa[1] for _, sa in test]
    preds: dict[str, list[float]] = {"ops": list(get_cost_model("ops", space).costs(archs)),
                                     "flops": list(get_cost_model("flops", space).costs(archs))}
    lut = get_cost_model(f"lut@{args.device}", space, store=args.store, overhead_s=0.0, target=data.target,
                         tvm_version=data.tvm_version)
    try:
        layer_sums = lut.costs(archs)
        gaps = [m.median_s - lut.cost(sa[1]) for m, sa in train if not lut.missing_layers(arch_layers(sa[1], space))]
        lut.overhead_s = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
        preds["lut"] = list(layer_sums + lut.overhead_s)
    except MissingMeasurementError as e:
        print(f"lut: skipped ({e})")
    if args.predictor:
        p = LatencyPredictor.load(args.predictor, device=args.device)
        note = f"predictor {args.predictor}"
    else:
        from cost_models.learned import store_training_data
        layers, lat, _, _ = store_training_data(args.store, args.device, data.target, data.tvm_version)
        p = LatencyPredictor(n_estimators=args.n_estimators).fit(
            layers, lat, subnet_layer_lists=[arch_layers(sa[1], space) for _, sa in train],
            subnet_latencies_s=[m.median_s for m, _ in train], device=args.device, target=data.target,
            tvm_version=data.tvm_version)
        note = f"predictor fitted here on {len(layers)} layers and the {len(train)} subnets not compared"
    preds["predictor"] = list(PredictorCostModel(space, p, args.device).costs(archs))
    rows = [{"id": n, "arch": sa[1].to_dict()["stages"], "measured": m.median_s, **{k: float(v[n]) for k, v in preds.items()}}
            for n, (m, sa) in enumerate(test)]
    metrics = write_report(args.out, rows, title=f"Cost models vs measured latency on {args.device} "
                                                 f"({space.name}, {len(rows)} subnets)")
    print(f"{len(rows)} measured subnets of {space.name} on {args.device}; {note}; "
          f"LUT overhead from {len(train)} other subnets")
    for name, m in metrics.items():
        print(_fmt_metrics(name, m) + ("" if m["unit"] == "s" else "  (linear fit to seconds)"))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _add_store_args(p) -> None:
    p.add_argument("--device", required=True)
    p.add_argument("--store", required=True, help="measurement store (SQLite)")
    p.add_argument("--target", help="TVM target string, when the device was measured under several")
    p.add_argument("--tvm-version", help="TVM version, when the device was measured under several")


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit a latency predictor on a device's measurements; print held-out quality")
    _add_store_args(p)
    p.add_argument("--out", required=True, help="predictor file to write (.json)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held out for the quality figures (default 0.2)")
    p.add_argument("--n-estimators", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("compare", help="OPs, FLOPs, lookup table and predictor vs measured subnets: a report")
    _add_store_args(p)
    p.add_argument("--subnets", type=int, default=100, help="how many measured subnets to compare (default 100)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--predictor", help="a fitted predictor (.json); default: fit one on the other measurements")
    p.add_argument("--space", help="space of the subnets to compare (default: the most measured one)")
    p.add_argument("--n-estimators", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_compare)
