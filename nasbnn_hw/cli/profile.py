"""Subcommands `profile` (measure layers / subnets of a space on a device into the store) and `measurements`
(what a store holds)."""
from __future__ import annotations

import logging
import sys

from nasbnn_hw.cli.args import NON_NEGATIVE, POSITIVE, RESOLUTION, SEED, float_range, int_range
from nasbnn_hw.profiling.devices import open_device as _device, timing_for
from nasbnn_hw.errors import NasBnnError


def _profile_in_parallel(args) -> int:
    """One `nasbnn-hw profile` process per device: boards run concurrently, each strictly one measurement
    at a time, all writing to the same store (SQLite serialises the writes)."""
    import subprocess
    import time

    from nasbnn_hw.profiling.store import MeasurementStore
    MeasurementStore(args.store).close()  # a store that cannot be written fails once, before any device starts
    rest, skip = [], False
    for a in args.raw_argv:
        if skip:
            skip = False
        elif a == "--device":
            skip = True
        elif not a.startswith("--device="):
            rest.append(a)
    if "--quiet" not in rest:
        rest.append("--quiet")
    procs = {}
    for d in args.device:
        procs[d] = subprocess.Popen([sys.executable, "-m", "nasbnn_hw.cli", *rest, "--device", d],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print(f"profiling {d} (pid {procs[d].pid})")
    t0, worst = time.time(), 0
    for d, p in procs.items():
        out, _ = p.communicate()
        worst = max(worst, p.returncode)
        for line in out.strip().splitlines():
            print(f"[{d}] {line}")
    print(f"{len(procs)} devices done in {time.time() - t0:.0f} s")
    return worst


def _open_campaign(args, emulated_note: str):
    """What `profile` and `tune` start from: (space, store, device, runner, target, timing). The store
    is refused (not writable, not a store) before any device work; an emulated device gets `emulated_note`."""
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.profiling.store import MeasurementStore
    space = get_space(args.space)
    if args.resolution:
        space = space.with_resolution(args.resolution)
    store = MeasurementStore(args.store)
    try:
        device, runner, target, profile = _device(args.device, args.devices_dir, args.accept_new_host_key)
        timing = timing_for(profile, args)
    except BaseException:
        store.close()
        raise
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if profile is not None and profile.runner == "emulated":
        print(f"note: device '{device}' is emulated ({' '.join(profile.exec_wrapper)}): {emulated_note}",
              file=sys.stderr)
    return space, store, device, runner, target, timing


def cmd_profile(args) -> int:
    args.device = args.device or ["local"]
    if len(set(args.device)) > 1:
        return _profile_in_parallel(args)
    args.device = args.device[0]
    from nasbnn_hw.profiling.profiler import profile_layers, profile_subnets
    if args.active and not args.budget and not args.subnets:
        raise NasBnnError("--active needs --budget N (layer configs to measure) and/or --subnets N")
    if not args.layers and not args.subnets and not args.active:
        raise NasBnnError("nothing to profile: give --layers and/or --subnets N")
    if args.subnets < 0:
        raise NasBnnError(f"--subnets must be >= 0 (got {args.subnets})")
    space, store, device, runner, target, timing = _open_campaign(
        args, "its kernels run for real but the stored times are NOT latency of any board")
    reports = []
    try:
        with store:
            if args.active and args.budget:
                reports.append(("active layers", _profile_active(args, space, device, store, runner, target,
                                                                 timing)))
            elif args.layers:
                reports.append(("layers", profile_layers(space, device, store, runner, target, timing=timing,
                                                         progress=not args.quiet)))
            if args.subnets and args.active:
                archs = _uncertain_subnets(args, space, device, store, target)
                reports.append(("active subnets", profile_subnets(space, 0, device, store, runner, target,
                                                                  archs=archs, timing=timing,
                                                                  progress=not args.quiet)))
            elif args.subnets:
                reports.append(("subnets", profile_subnets(space, args.subnets, device, store, runner, target,
                                                           seed=args.seed, timing=timing,
                                                           progress=not args.quiet)))
    finally:
        runner.close()
    failed = 0
    for what, rep in reports:
        print(f"{what}: {rep.summary()}")
        for key, why in rep.failed.items():
            print(f"  failed {key}: {why}", file=sys.stderr)
        failed += len(rep.failed)
    return 1 if failed else 0


def _profile_active(args, space, device, store, runner, target, timing):
    """Measure `--budget` layer configs, `--round-size` at a time, each round choosing the unmeasured
    layers ranked by `cost_models.active.hybrid_scores`: where a predictor refitted on everything measured
    so far is least certain, and farthest from what is measured, weighted by how often the layer occurs in
    subnets."""
    from cost_models.active import plan_next_layers

    from nasbnn_hw.profiling.profiler import ProfileReport, profile_layers
    total = ProfileReport()
    left, rnd = args.budget, 0
    while left > 0:
        cfgs = plan_next_layers(space, args.store, device, min(args.round_size, left), seed=args.seed + rnd)
        if not cfgs:
            break
        rnd += 1
        rep = profile_layers(space, device, store, runner, target, timing=timing, layers=cfgs,
                             progress=not args.quiet)
        total.measured += rep.measured
        total.skipped += rep.skipped
        total.failed.update(rep.failed)
        left -= len(cfgs)
        if not args.quiet:
            print(f"active round {rnd}: measured {len(rep.measured)} layer configs ({left} left in the budget)")
    return total


def _uncertain_subnets(args, space, device, store, target, pool_factor: int = 20):
    """--active --subnets N: of `pool_factor * N` random unmeasured subnets, the N whose latency the
    predictor (fitted on everything measured so far) is least sure of."""
    from cost_models.active import next_batch
    from cost_models.learned import PredictorCostModel, fit_predictor

    from nasbnn_hw.profiling.profiler import random_subnets, subnet_key
    from nasbnn_hw.profiling.tuning import ScheduleBook
    done = {m.key for m in store.query(device=device, kind="subnet")}
    book = ScheduleBook.load(store, device, target)
    pool = [a for a in random_subnets(space, pool_factor * args.subnets, seed=args.seed)
            if subnet_key(a, space, book) not in done]
    predictor = fit_predictor(store, device, test_fraction=0.0)
    return next_batch(PredictorCostModel(space, predictor, device), pool, args.subnets)


def cmd_tune(args) -> int:
    """Choose each binary layer's kernel schedule on the device and keep the winners in the store."""
    from nasbnn_hw.profiling.tuning import tune_layers
    space, store, device, runner, target, timing = _open_campaign(
        args, "schedules chosen there are not tuned for any board")
    try:
        with store:
            rep = tune_layers(space, device, store, runner, target, timing=timing, limit=args.limit,
                              rounds=args.rounds, progress=not args.quiet)
    finally:
        runner.close()
    if not args.quiet:
        for r in rep.tuned:
            mark = "" if r["schedule"] == r["default"] else f"  -> {r['schedule']}"
            print(f"  {r['layer']}: default {r['default_s'] * 1e6:.1f} us, best {r['best_s'] * 1e6:.1f} us "
                  f"({r['default_s'] / r['best_s']:.2f}x, {r['candidates']} schedules){mark}")
    print(f"tune: {rep.summary()}")
    for key, why in rep.failed.items():
        print(f"  failed {key}: {why}", file=sys.stderr)
    if any(r["schedule"] != r["default"] for r in rep.tuned):
        print("note: layers with a new schedule are measured again by the next `profile` (their earlier "
              "measurements stay in the store, unused)")
    return 1 if rep.failed else 0


def cmd_measurements(args) -> int:
    """What a store holds: a table per device / target / TVM version / kind (/ space), or every
    measurement as CSV."""
    import csv
    import datetime
    import io
    from pathlib import Path

    from nasbnn_hw.profiling.store import MeasurementStore
    from nasbnn_hw.utils import atomic_write_text
    if not Path(args.store).is_file():
        raise NasBnnError(f"no measurement store at {args.store!r} (create one with `nasbnn-hw profile ... "
                          f"--store {args.store}`)")
    with MeasurementStore(args.store, readonly=True) as store:
        if args.csv:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["device", "target", "tvm_version", "kind", "key", "median_s", "iqr_s", "repeats",
                        "rounds", "created"])
            n, rounds = 0, store.round_counts()
            for m in store.query(device=args.device):
                w.writerow([m.device, m.target, m.tvm_version, m.kind, m.key, repr(m.median_s), repr(m.iqr_s),
                            m.repeats, rounds.get((m.device, m.target, m.tvm_version, m.kind, m.key), 1),
                            datetime.datetime.fromtimestamp(m.created).isoformat(timespec="seconds")])
                n += 1
            atomic_write_text(args.csv, buf.getvalue())
            print(f"{n} measurements written to {args.csv}")
            return 0
        rows = [r for r in store.summary() if args.device is None or r["device"] == args.device]
        tuned = {k: n for k, n in store.tuned_counts().items() if args.device is None or k[0] == args.device}
        agree = {d: store.agreement(d) for d in sorted({r["device"] for r in rows} | {k[0] for k in tuned})}
    if not rows and not tuned:
        print(f"{args.store}: no measurements" + (f" for device {args.device!r}" if args.device else ""))
        return 0

    def ms(v):
        return f"{v * 1e3:.4g}"
    if rows:
        print(f"{'device':14s} {'kind':6s} {'space':16s} {'items':>6s} {'rounds':>7s} {'median ms':>10s} "
              f"{'range ms':>19s}  {'TVM':12s} {'last measured':19s}  target")
        for r in rows:
            rnd = f"{r['multi_round']}x{r['max_rounds']}" if r["multi_round"] else "1"
            last = datetime.datetime.fromtimestamp(r["last"]).isoformat(sep=" ", timespec="seconds")
            print(f"{r['device']:14s} {r['kind']:6s} {r['space'] or '-':16s} {r['items']:6d} {rnd:>7s} "
                  f"{ms(r['median_s']):>10s} {ms(r['min_s']) + ' - ' + ms(r['max_s']):>19s}  {r['tvm_version']:12s} "
                  f"{last:19s}  {r['target']}")
    for (d, t, v), n in sorted(tuned.items()):
        print(f"{d}: {n} layer(s) with tuned kernel schedules (nasbnn-hw tune), TVM {v}, target {t}")
    from nasbnn_hw.profiling.timing import self_disagreement
    for d, rec in agree.items():
        if rec is None:
            continue
        when = datetime.datetime.fromtimestamp(rec["created"]).isoformat(sep=" ", timespec="seconds")
        why = self_disagreement(rec["kendall_tau"], rec["largest_swap"], rec["acc10"], rec["subnets"])
        swap = "" if rec["largest_swap"] is None else f"largest swap {100 * rec['largest_swap']:.1f} %, "
        print(f"{d}: does NOT agree with itself: {why} (recorded {when})" if why else
              f"{d}: agrees with itself: {rec['subnets']} subnets measured twice, {swap}{100 * rec['acc10']:.0f} % "
              f"within ±10 %, Kendall tau {rec['kendall_tau']:.2f} (recorded {when})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure every layer (and N random subnets) of a space on a device")
    p.add_argument("--device", action="append", help="device profile name or .toml file (default: local); "
                   "repeat it to profile several boards in parallel, each one measurement at a time")
    p.add_argument("--devices-dir", help="extra directory of device profiles")
    p.add_argument("--accept-new-host-key", action="store_true", help="SSH devices: record an unknown host key "
                   "(its fingerprint is printed) instead of refusing it")
    p.add_argument("--active", action="store_true", help="measure first the layers the latency predictor is "
                   "least certain about and that are least like anything measured, weighted by how often they "
                   "occur in subnets (needs --budget); with --subnets N, also the N least certain subnets")
    p.add_argument("--budget", type=POSITIVE, help="with --active: how many layer configs to measure")
    p.add_argument("--round-size", type=POSITIVE, default=8, help="with --active: layers measured per refit")
    p.add_argument("--space", default="small", help="built-in space name or TOML file (default: small)")
    p.add_argument("--resolution", type=RESOLUTION, help="override the space's input resolution")
    p.add_argument("--layers", action="store_true", help="measure every distinct layer the space can produce")
    p.add_argument("--subnets", type=NON_NEGATIVE, default=0, metavar="N", help="measure N random whole subnets")
    p.add_argument("--store", required=True, help="measurement store (SQLite file; created if missing)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the random subnets (same seed: same subnets)")
    p.add_argument("--warmup", type=NON_NEGATIVE, help="warm-up calls (default: the device profile's)")
    p.add_argument("--repeat", type=POSITIVE, help="timed samples (default: the device profile's)")
    p.add_argument("--rounds", type=int_range(1, 100), help="measure each layer / subnet this many times, round by round over "
                   "the whole campaign (spreads a drifting device's noise; keeps the 20th percentile of all rounds' "
                   "samples under the reference protocol, else the median of the rounds; default: the device "
                   "profile's, else 1; more where the profile sets `precision`, exactly this many with --precision 0)")
    p.add_argument("--precision", type=float_range(0, 1, hi_open=True), metavar="FRACTION",
                   help="with the reference protocol: after --rounds, give an item further rounds (up to the "
                   "profile's max_rounds, default 3 x rounds) until the 95 %% confidence interval of its kept value "
                   "is within +-FRACTION of it; 0: fixed rounds (default: the device profile's)")
    p.add_argument("--number", type=POSITIVE, help="calls per sample (default: enough for 20 ms per sample)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("tune", help="choose each binary layer's kernel schedule (register tile, popcount "
                       "strategy, accumulator) by timing candidates on the device; later builds use the winners")
    p.add_argument("--device", default="local", help="device profile name or .toml file (default: local)")
    p.add_argument("--devices-dir", help="extra directory of device profiles")
    p.add_argument("--accept-new-host-key", action="store_true", help="SSH devices: record an unknown host key "
                   "(its fingerprint is printed) instead of refusing it")
    p.add_argument("--space", default="small", help="built-in space name or TOML file (default: small)")
    p.add_argument("--resolution", type=RESOLUTION, help="override the space's input resolution")
    p.add_argument("--store", required=True, help="measurement store (SQLite file; created if missing)")
    p.add_argument("--limit", type=POSITIVE, help="tune only the N heaviest layers (binary MACs); default: all")
    p.add_argument("--rounds", type=int_range(1, 20), default=3, help="rounds over the candidates of a layer "
                   "(default: 3; the median of the rounds decides)")
    p.add_argument("--warmup", type=NON_NEGATIVE, help="warm-up calls (default: the device profile's)")
    p.add_argument("--repeat", type=POSITIVE, help="timed samples per round (default: the device profile's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-layer lines")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("measurements", help="what a measurement store holds, per device and kind; or all of it as CSV")
    p.add_argument("store", help="measurement store (SQLite file)")
    p.add_argument("--device", help="only this device")
    p.add_argument("--csv", metavar="FILE", help="write every measurement to FILE as CSV instead")
    p.set_defaults(func=cmd_measurements)
