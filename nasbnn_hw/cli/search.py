"""Search and the end-to-end main job: `search`, `quickstart`."""
from __future__ import annotations

from pathlib import Path

from nasbnn_hw.cli.args import (NON_NEGATIVE, POSITIVE, SEED, THREADS, add_device_args, float_range, int_range,
                                output_dir)


def budgets_arg(text: str) -> list[float]:
    """--budgets '1ms,2ms' or '50M' → SI values, parsed before the search runs."""
    import argparse

    from searchers.constraints import parse_constraint
    out = []
    for part in text.split(","):
        try:
            v = parse_constraint(f"x <= {part.strip()}").value
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a cost; expected numbers with units, "
                                             "comma-separated, e.g. '1ms,2ms' or '50M'") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not allowed; a budget is a positive cost")
        out.append(v)
    return out


def cmd_search(args) -> int:
    from nasbnn_hw.workflows.search import run_search_with_checkpoint, write_best_archs
    params = {}
    if args.searcher == "evolutionary":
        params = {k: v for k, v in (("population_size", args.population), ("generations", args.generations),
                                    ("mutations", args.mutations), ("crossovers", args.crossovers)) if v is not None}
    elif args.population:
        params = {"num_samples": args.population}
    out = Path(args.out)
    result, plots, space = run_search_with_checkpoint(
        args.checkpoint, args.cost, args.constraint or [], out, searcher=args.searcher, budget=args.budget,
        seed=args.seed, store=args.store, predictor=args.predictor, data=args.data,
        calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size, val_limit=args.val_limit,
        searcher_params=params, progress=not args.quiet, device=args.device, workers=args.workers)
    rows = write_best_archs(result, out, args.budgets)
    print(f"evaluated {len(result.evaluated)} archs; Pareto set {len(result.pareto)}")
    for r in rows:
        print(f"  budget {r['budget']:.6g} {r['unit']}: accuracy {r['accuracy']:.2f}  -> {r['arch_file']}")
    print(f"plots: {', '.join(str(p) for p in plots)}")
    print(f"result: {out / 'result.json'}")
    return 0


def cmd_quickstart(args) -> int:
    from nasbnn_hw.workflows.quickstart import QuickstartConfig, run_quickstart
    cfg = QuickstartConfig(out=Path(args.out), data=args.data, space=args.space, epochs=args.epochs,
                           steps_per_epoch=args.steps_per_epoch, subnets=args.subnets, threads=args.threads,
                           budget_fraction=args.budget_fraction, torch_device=args.device)
    report = run_quickstart(cfg)
    print(report)
    return 0


def register(sub) -> None:
    p = sub.add_parser("search", help="search subnets of a trained supernet under cost constraints")
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint (nasbnn-hw train)")
    p.add_argument("--cost", default="ops", help="Pareto axis: ops, flops, bops, params, peak_memory, "
                   "lut@DEVICE, latency@DEVICE, predictor@DEVICE or a plug-in name")
    p.add_argument("--constraint", action="append", help="e.g. 'latency@local <= 2ms', 'ops <= 100M' (repeatable)")
    p.add_argument("--searcher", default="evolutionary", help="evolutionary | random | a plug-in name")
    p.add_argument("--budget", type=POSITIVE, help="maximum number of evaluated archs")
    p.add_argument("--population", type=POSITIVE, help="evolutionary: population size (default 512); random: "
                   "archs to sample")
    p.add_argument("--generations", type=POSITIVE, help="evolutionary: generations (default 20)")
    p.add_argument("--mutations", type=NON_NEGATIVE, help="evolutionary: children by mutation per generation "
                   "(default 128)")
    p.add_argument("--crossovers", type=NON_NEGATIVE, help="evolutionary: children by crossover per generation "
                   "(default 128)")
    p.add_argument("--store", help="measurement store (for lut@/latency@ cost models)")
    p.add_argument("--predictor", help="latency predictor JSON (nasbnn-hw fit)")
    p.add_argument("--budgets", type=budgets_arg, default=[], help="write the best arch under each of these costs, e.g. '1ms,2ms,3ms'")
    p.add_argument("--data", help="override the data recorded in the checkpoint")
    p.add_argument("--val-limit", type=POSITIVE, help="evaluate on the first N validation images only")
    p.add_argument("--calib-batches", type=POSITIVE, default=4, help="training batches that recalibrate BN "
                   "before each arch is scored (default %(default)s)")
    p.add_argument("--calib-batch-size", type=POSITIVE, default=256, help="default %(default)s")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, type=output_dir, help="run directory: the Pareto front, the picks "
                   "under --budgets, the search's state (a killed search resumes from it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("quickstart", help="the whole journey on the embedded default data: train, profile, "
                       "fit, search, export, report")
    p.add_argument("--out", default="runs/quickstart", type=output_dir, help="run directory (default "
                   "%(default)s); a finished step found there is reused")
    p.add_argument("--data", help="default: Fashion-MNIST if installed, else scikit-learn digits")
    p.add_argument("--space", default="small16", help="search space (default %(default)s)")
    p.add_argument("--epochs", type=POSITIVE, default=3, help="supernet training epochs (default %(default)s)")
    p.add_argument("--steps-per-epoch", type=POSITIVE, default=100, help="default %(default)s")
    p.add_argument("--subnets", type=int_range(4), default=24, help="whole subnets to measure for the predictor")
    p.add_argument("--budget-fraction", type=float_range(0, 1, lo_open=True), default=0.5,
                   help="latency budget as a fraction of the largest subnet's predicted latency")
    p.add_argument("--threads", type=THREADS, default=2, help="PyTorch's CPU threads for training and "
                   "search (default %(default)s)")
    p.add_argument("--device", default="cpu", help="where the supernet trains and the search evaluates: auto | cpu "
                   "| cuda[:N] (latency is always measured on this machine's CPU)")
    p.set_defaults(func=cmd_quickstart)
