"""Cost-model subcommands: `fit` (a latency predictor from a measurement store) and `compare` (OPs, FLOPs,
lookup table and predictor against measured subnets: a report with table, plots and points)."""
from __future__ import annotations

import sys
from pathlib import Path

from nasbnn_hw.cli.args import NON_NEGATIVE, POSITIVE, SEED, float_range, int_range, output_dir, output_file
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.utils import check_outputs


def cmd_fit(args) -> int:
    from cost_models.compare import format_metrics
    from cost_models.learned import fit_predictor
    check_outputs({"predictor": args.out}, [("measurement store", args.store)], force=args.force)
    p = fit_predictor(args.store, args.device, test_fraction=args.test_fraction, seed=args.seed,
                      n_estimators=args.n_estimators, target=args.target, tvm_version=args.tvm_version)
    p.save(args.out)
    from nasbnn_hw.profiling.timing import noise_warning
    warn = noise_warning(args.store, args.device)
    if warn:
        print(warn, file=sys.stderr)
    ho = p.held_out_
    print(f"fitted latency predictor for {args.device} on {p.n_train_layers_} layers and "
          f"{p.correction_['n']} subnets -> {args.out}")
    if "layers" not in ho and "subnets" not in ho:
        print("held-out quality: too few measurements to hold any out (need >= 10 layers or >= 5 subnets)")
    for part in ("layers", "subnets"):
        if part in ho:
            print("held-out " + format_metrics(part, ho[part]))
    return 0


def _measure_missing_subnets(args) -> None:
    """With --measure: bring the store up to --measure-subnets measured subnets of --space (default 3x
    --subnets: the rest fit the predictor's correction and the LUT overhead) plus its layers, measuring only
    what is missing."""
    from nasbnn_hw.profiling.devices import open_device as _device, timing_for
    from nasbnn_hw.profiling.profiler import profile_layers, profile_subnets, random_subnets, subnet_key
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.profiling.store import MeasurementStore
    from nasbnn_hw.profiling.tuning import ScheduleBook
    from nasbnn_hw.core.arch import Arch
    if not args.space:
        raise NasBnnError("--measure needs --space (which space's subnets to measure)")
    space = get_space(args.space)
    device, runner, target, profile = _device(args.device)
    timing = timing_for(profile)
    try:
        with MeasurementStore(args.store) as store:
            profile_layers(space, device, store, runner, target, timing=timing)
            book = ScheduleBook.load(store, device, target)
            rows = store.query(device=device, kind="subnet")
            done = {m.key for m in rows}
            # rows of this space taken with the current kernel schedules (their key names them)
            stored = sum(m.config.get("space") == space.name and m.config.get("resolution") == space.resolution
                         and m.key == subnet_key(Arch.from_dict(m.config["arch"]), space, book) for m in rows)
            need = max(0, (args.measure_subnets or 3 * args.subnets) - stored)
            fresh = [a for a in random_subnets(space, need + len(done), seed=args.seed)
                     if subnet_key(a, space, book) not in done]
            profile_subnets(space, 0, device, store, runner, target, archs=fresh[:need], timing=timing)
    finally:
        runner.close()


def _remeasurer(args):
    """(remeasure(space, archs) -> seconds, runner) for --remeasure: compiles and times subnets again on the
    device, leaving the store as it was."""
    from nasbnn_hw.profiling.devices import open_device as _device, timing_for
    from nasbnn_hw.profiling.profiler import measure_again
    device, runner, target, profile = _device(args.device)
    timing = timing_for(profile)
    return (lambda space, archs: measure_again(space, archs, device, runner, target, timing=timing,
                                               baseline_from=args.store, fresh_process=True)), runner


def cmd_compare(args) -> int:
    from cost_models.compare import compare_measured

    from nasbnn_hw.core.space import get_space
    if args.measure:
        _measure_missing_subnets(args)
    remeasure, runner = _remeasurer(args) if args.remeasure else (None, None)
    try:
        compare_measured(args.store, args.device, args.out, n_subnets=args.subnets, predictor=args.predictor,
                         space=get_space(args.space).name if args.space else None, n_estimators=args.n_estimators,
                         seed=args.seed, target=args.target, tvm_version=args.tvm_version,
                         remeasure=remeasure, n_remeasure=args.remeasure)
    finally:
        if runner is not None:
            runner.close()
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


ESTIMATORS_HELP = "trees of the predictor's random forest (default %(default)s)"


def _add_store_args(p) -> None:
    p.add_argument("--device", required=True, help="device name the measurements were taken on")
    p.add_argument("--store", required=True, help="measurement store (SQLite)")
    p.add_argument("--target", help="TVM target string, when the device was measured under several")
    p.add_argument("--tvm-version", help="TVM version, when the device was measured under several")


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit a latency predictor on a device's measurements; print held-out quality")
    _add_store_args(p)
    p.add_argument("--out", required=True, type=output_file, help="predictor file to write (.json)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--test-fraction", type=float_range(0, 1, hi_open=True), default=0.2, help="held out for the quality figures (default 0.2)")
    p.add_argument("--n-estimators", type=int_range(2, 10_000), default=48, help=ESTIMATORS_HELP)
    p.add_argument("--seed", type=SEED, default=0, help="random seed of the split and the trees (default 0)")
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("compare", help="OPs, FLOPs, lookup table and predictor vs measured subnets: a report")
    _add_store_args(p)
    p.add_argument("--subnets", type=POSITIVE, default=100, help="how many measured subnets to compare (default 100)")
    p.add_argument("--out", required=True, type=output_dir, help="report directory")
    p.add_argument("--predictor", help="a fitted predictor (.json); default: fit one on the other measurements")
    p.add_argument("--space", help="space of the subnets to compare (default: the most measured one)")
    p.add_argument("--measure", action="store_true", help="first measure on the device whatever is missing: the "
                   "space's layers and random subnets up to --measure-subnets (needs --space)")
    p.add_argument("--measure-subnets", type=POSITIVE, help="with --measure: subnets to have measured (default 3x --subnets)")
    p.add_argument("--remeasure", type=NON_NEGATIVE, default=0, metavar="K",
                   help="measure K of the compared subnets again on the device and report how well the device "
                        "agrees with itself: the measurement noise that bounds every model's score (default 0: off)")
    p.add_argument("--n-estimators", type=int_range(2, 10_000), default=48, help=ESTIMATORS_HELP)
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_compare)
