"""Does the device agree with itself? Two independent measurements of the same random subnets, per timing
protocol, with and without a competing process, in one contiguous block per subnet or in rounds.

    python benchmarks/self_agreement.py [--spaces small16 small imagenet@64] [--subnets 20] [--threads 1]
                                        [--chunks 20] [--repeat 3] [--rounds 1 20] [--competitor off on]
                                        [--reference layer memory subnet] [--mcpu haswell]
                                        [--precision 0.01 [--max-rounds 60]] [--cache DIR] [--raw DIR]

Every subnet is compiled once (`--cache DIR` keeps them for later runs); then two campaigns (A, then B) time
every subnet. With `--rounds 1` a campaign times each subnet in one block of `chunks` bursts; with
`--rounds R` it visits every subnet R times, round by round, each visit taking chunks/R bursts, as
`profile --rounds R` (and the `local` profile) does. Each burst interleaves the fixed reference kernel of the
protocol (`nasbnn_hw.profiling.timing.REFERENCE_LAYER`) with the subnet, sample by sample. From the same
samples every estimator is computed, so they are compared on equal data:

- `median`, `min`: the median or fastest raw sample;
- `reference`, `bracket`: each sample (or burst median) against the reference beside it, times the device's
  reference time: the machine's current speed factors out;
- `low`, `bracket-low`: the 20th percentile instead of the median;
- these per visit, then the median over the visits; `protocol`: what the profiler stores, the 20th
  percentile of all the subnet's bracket-normalised samples pooled over its visits.

`--reference`: `layer` is the protocol's reference (a 64->64 3x3 layer that lives in L1), `memory` one that
streams 2 MB of weights per call, `subnet` a fixed subnet of the same space; each gets its own campaigns. `--mcpu haswell` compiles everything for AVX2 (runs on an AVX-512 CPU too, showing the AVX2 path).

Scores of B against A: Kendall tau, the largest swap (the largest difference, by A, between two subnets that
B orders the other way), the share within +-10 %, the median deviation. `--competitor on` runs a
second process that keeps one core busy half of the time (0.5-2 s bursts at random) during both campaigns;
`--competitor amx` the same with an AMX layer (x86 with AMX-INT8), `amx-steady` an AMX layer without pauses,
`amx-steady-b` that during campaign B only (one process: the baselines and campaign A are quiet); run under
`taskset -c 0` and the AMX neighbour takes the other CPUs.
Each (space, competitor, rounds) case runs in its own process. Prints a table, then a JSON line.
`--rescore FILE...` measures nothing: it scores raw files written by `--raw` again (the stored value of B
against A per reference) with the device verdict the tools give now.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _burn(stop, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.5, 2.0)
        x = 0
        while time.perf_counter() < end:
            x += 1
        stop.wait(rng.uniform(0.5, 2.0))


def _burn_amx(stop, seed: int, steady: bool = False) -> None:
    """As `_burn` (`steady`: without pauses), but the bursts run an AMX layer (256->256 3x3 at 14x14, int8
    tile products): a neighbour on the core's other hardware thread, which shares its AMX unit (on a 2-vCPU
    Xeon guest the two vCPUs did: an AMX layer ran 2.8x slower beside it, a word-kernel layer 1.17x)."""
    import os
    os.environ["TVM_NUM_THREADS"] = "1"
    others = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
    if others:   # the measurement pinned (`taskset -c 0 python ...`): the neighbour on the other CPUs
        os.sched_setaffinity(0, others)
    import tvm

    from nasbnn_hw.core.layers import LayerConfig
    from nasbnn_hw.deploy.kernels.layer import build_layer
    from nasbnn_hw.deploy.kernels.schedule import AMX_X86
    lay = build_layer(LayerConfig("bconv", 256, 256, 3, 1, 1, 14), "local", schedule=AMX_X86)
    dev = tvm.cpu(0)
    args = [tvm.runtime.empty(x.shape, x.dtype, dev) if x.is_output else tvm.runtime.tensor(x.data, dev)
            for x in lay.args]
    f = lay.executable.mod["main"]
    rng = random.Random(seed)
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.5, 2.0)
        while time.perf_counter() < end:
            f(*args)
        if not steady:
            stop.wait(rng.uniform(0.5, 2.0))


def _space(spec: str):
    from nasbnn_hw.core.space import get_space
    name, _, res = spec.partition("@")
    sp = get_space(name)
    return sp.with_resolution(int(res)) if res else sp


def _compiled(arch, space, i: int, where, space_spec: str, target="local", tag: str = ""):
    """(library, argument specs) of random subnet `i`, compiled once into `where` and reused from there."""
    from nasbnn_hw.deploy.tvm_net import compile_random_subnet
    from nasbnn_hw.profiling.runners.base import ArgSpec
    stem = where / f"{space_spec.replace('@', '-')}{tag}-{arch.short().replace('|', '_')}-s{i}"
    lib, spec = Path(f"{stem}.so"), Path(f"{stem}.json")   # not with_suffix: the arch's name holds dots
    if not (lib.exists() and spec.exists()):
        where.mkdir(parents=True, exist_ok=True)
        net = compile_random_subnet(arch, space, target, seed=i)
        net.export(lib)
        spec.write_text(json.dumps([[list(a.shape), a.dtype, a.is_output] for a in net.arg_specs()]))
    return lib, [ArgSpec(tuple(sh), dt, out) for sh, dt, out in json.loads(spec.read_text())]


def worker(space_spec: str, n: int, threads: int, chunks: int, competitor: str, repeat: int,
           raw_dir: str | None = None, references: tuple[str, ...] = ("layer",), rounds: int = 1,
           cache_dir: str | None = None, mcpu: str | None = None, precision: float = 0.0,
           max_rounds: int = 0, campaign_file: str | None = None, baselines_from: str | None = None) -> dict:
    """Both campaigns in this process, scored; or, with `campaign_file`, one campaign written there (raw), its
    reference baselines calibrated here or read from the campaign file `baselines_from` (an earlier process)."""
    from nasbnn_hw.profiling.profiler import TimingSettings, random_subnets
    from nasbnn_hw.profiling.runners.local import LocalRunner
    from nasbnn_hw.profiling.timing import Protocol, quantile_ci, reference_library
    space = _space(space_spec)
    target = {"kind": "llvm", "mcpu": mcpu} if mcpu else "local"
    archs = random_subnets(space, n, seed=11)
    runner = LocalRunner(threads=threads)
    # rounds > 1: a campaign visits every subnet `rounds` times, each visit taking 1/rounds of its samples,
    # so each subnet's samples spread over the whole campaign instead of one contiguous block
    proto = Protocol(bursts=max(1, chunks // rounds), repeat=repeat)
    cap = TimingSettings(reference=True, rounds=rounds, precision=precision, max_rounds=max_rounds).round_limit(rounds)
    with tempfile.TemporaryDirectory() as d:
        refs = {}
        if "layer" in references:   # the protocol's reference: a 64->64 3x3 layer at 8x8 that lives in L1
            refs["layer"] = reference_library(Path(d), target)
        if "memory" in references:  # a binary layer that streams 2 MB of weights per call (past a core's L2)
            from nasbnn_hw.core.layers import LayerConfig
            from nasbnn_hw.deploy.kernels import build_layer
            from nasbnn_hw.deploy.kernels.schedule import legacy_schedule
            lay = build_layer(LayerConfig("bconv", 4096, 4096, 1, 1, 1, 1), target, batch=1,
                              schedule=legacy_schedule(target))
            refs["memory"] = (lay.export(Path(d) / "reference-memory.so"), lay.args)
        if "subnet" in references:  # the profiler's reference subnet of this space (`subnet_reference_of`)
            from nasbnn_hw.deploy.kernels import resolve_target
            from nasbnn_hw.profiling.profiler import subnet_reference_of
            from nasbnn_hw.profiling.tuning import ScheduleBook
            spec = resolve_target(target)
            refs["subnet"] = subnet_reference_of(space, spec, ScheduleBook.load(None, "local", spec))[1](Path(d))
        libs = []
        for i, a in enumerate(archs):
            libs.append(_compiled(a, space, i, Path(cache_dir) if cache_dir else Path(d), space_spec, target,
                                  f"-{mcpu}" if mcpu else ""))
        ctx = mp.get_context("spawn")   # the AMX burner builds its own kernel (no TVM state forked)
        stop = ctx.Event()
        burner = None if competitor == "off" else \
            ctx.Process(target=_burn, args=(stop, 5), daemon=True) if competitor == "on" else \
            ctx.Process(target=_burn_amx, args=(stop, 5, competitor.startswith("amx-steady")), daemon=True)
        only_b = competitor.endswith("-b")   # quiet baselines and campaign A, the neighbour during B only
        if burner and not only_b:
            burner.start()
        try:
            if baselines_from:   # the store's baseline, calibrated once, is what a later process uses too
                baselines = json.loads(Path(baselines_from).read_text())["baselines"]
            else:
                baselines = {k: proto.calibrate_reference(runner, r) for k, r in refs.items()}
            campaigns = {k: [] for k in refs}
            for c in range(1 if campaign_file else 2):  # campaign A with every reference, then B with every one
                if burner and only_b and c == 1:
                    burner.start()
                    time.sleep(5)   # its kernel built and running
                for k, r in refs.items():
                    # per subnet: its visits; with --precision a subnet whose kept value is not yet that precise
                    # is visited again, up to max_rounds, as the profiler does (`TimingSettings.precision`)
                    per = [[] for _ in libs]
                    for i in range(cap):
                        for j, (lib, args) in enumerate(libs):
                            if len(per[j]) == i and (i < rounds or quantile_ci(
                                    [x for m in per[j] for x in m.normalised_samples(baselines[k])]) > precision):
                                per[j].append(proto.measure(runner, lib, args, r))
                    campaigns[k].append(per)
        finally:
            if burner and burner.is_alive():
                stop.set()
                burner.join()
    if campaign_file:
        from dataclasses import asdict
        Path(campaign_file).write_text(json.dumps({"baselines": baselines, "campaigns": {
            k: [[asdict(m) for m in v] for v in cs[0]] for k, cs in campaigns.items()}}))
        return {}
    return score(space_spec, competitor, threads, rounds, baselines, campaigns, raw_dir, mcpu)


def _item(m: dict):
    """An ItemTiming from its JSON form (asdict)."""
    from nasbnn_hw.profiling.timing import ItemTiming
    return ItemTiming(tuple(map(tuple, m["bursts"])), tuple(map(tuple, m["reference"])), m["number"])


def _read_campaign(path: str) -> tuple[dict, dict]:
    d = json.loads(Path(path).read_text())
    return d["baselines"], {k: [[_item(m) for m in v] for v in c] for k, c in d["campaigns"].items()}


def score(space_spec: str, competitor: str, threads: int, rounds: int, baselines: dict, campaigns: dict,
          raw_dir: str | None = None, mcpu: str | None = None) -> dict:
    """Campaign B against campaign A, per reference and estimator."""
    from cost_models.metrics import kendall_tau, largest_swap, within
    from nasbnn_hw.profiling.timing import ESTIMATORS, estimate, pooled_estimate
    refs = list(campaigns)
    out = {"space": space_spec, "competitor": competitor, "threads": threads, "protocols": {}}
    for k in refs:
        for name in (*ESTIMATORS, "protocol"):
            if k != "layer" and name in ("median", "min"):
                continue  # the same raw statistics as with the layer reference
            if name == "protocol":   # what the profiler stores: the pooled low quantile over all visits
                a, b = ([pooled_estimate([m.normalised_samples(baselines[k]) for m in v]) for v in c]
                        for c in campaigns[k])
            else:                    # an estimator per visit, the median over the visits
                a, b = ([statistics.median(estimate(m, name, baselines[k]) for m in v) for v in c]
                        for c in campaigns[k])
            dev = sorted(abs(y / x - 1) for x, y in zip(a, b))
            label = name if k == "layer" or name in ("median", "min") else f"{name}/{k}"
            out["protocols"][label] = {"kendall_tau": kendall_tau(a, b), "largest_swap": largest_swap(b, a),
                                       "acc10": within(b, a, 0.10),
                                       "median_dev": dev[len(dev) // 2], "worst_dev": dev[-1],
                                       "range_ms": [min(a) * 1e3, max(a) * 1e3]}
    out["rounds"] = rounds
    out["visits"] = {k: [len(v) for c in cs for v in c] for k, cs in campaigns.items()}   # per campaign, per subnet
    out["reference_drift"] = {k: [max(m.reference_s) / min(m.reference_s) for c in cs for v in c for m in v]
                              for k, cs in campaigns.items()}
    if raw_dir:
        from dataclasses import asdict
        Path(raw_dir).mkdir(parents=True, exist_ok=True)
        (Path(raw_dir) / f"{space_spec}{'-' + mcpu if mcpu else ''}-{competitor}-r{rounds}.json").write_text(json.dumps(
            {"baselines": baselines, "rounds": rounds,
             "campaigns": {k: [[[asdict(m) for m in v] for v in c] for c in cs]
                                                   for k, cs in campaigns.items()}}))
    return out


def rescore(files: list[str]) -> int:
    """Print, per raw file and reference, campaign B's stored values against A's and the device verdict."""
    from cost_models.metrics import evaluate
    from nasbnn_hw.profiling.timing import pooled_estimate, self_disagreement
    print("| file | reference | subnets | Kendall tau | largest swap | within ±10 % | median dev | worst dev | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in files:
        d = json.loads(Path(f).read_text())   # --raw: per reference, campaigns A and B of visits per subnet
        for ref, cs in d["campaigns"].items():
            a, b = ([pooled_estimate([_item(m).normalised_samples(d["baselines"][ref]) for m in v]) for v in c]
                    for c in cs)
            m = evaluate(b, a)
            dev = sorted(abs(y / x - 1) for x, y in zip(a, b))
            why = self_disagreement(m["kendall_tau"], m["largest_swap"], m["acc10"], len(a))
            print(f"| {f} | {ref} | {len(a)} | {m['kendall_tau']:.3f} | {100 * m['largest_swap']:.1f} % | "
                  f"{100 * m['acc10']:.0f} % | {100 * dev[len(dev) // 2]:.1f} % | {100 * dev[-1]:.1f} % | "
                  f"{'noise-dominated' if why else 'agrees'} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", nargs="+", default=["small16", "small", "imagenet@64"])
    ap.add_argument("--subnets", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=5, help="bursts per item")
    ap.add_argument("--repeat", type=int, default=5, help="samples per burst")
    ap.add_argument("--competitor", nargs="+", choices=["off", "on", "amx", "amx-steady", "amx-steady-b"],
                    default=["off", "on"],
                    help="on: a process keeping a core busy half of the time; amx: the same with an AMX layer "
                         "(x86 with AMX: the other hardware thread's neighbour competing for the core's AMX unit); "
                         "amx-steady: an AMX layer all the time; amx-steady-b: that during campaign B only (the "
                         "baselines and campaign A quiet: does the reference take the slowdown out?)")
    ap.add_argument("--reference", nargs="+", choices=["layer", "memory", "subnet"], default=["layer"],
                    help="the reference timed beside each item: the protocol's reference layer (64->64 3x3 at "
                         "8x8, in L1), a memory-bound layer (4096->4096 1x1 at 1x1: 2 MB of weights per call), "
                         "and/or a fixed subnet of the same space (its working set matches the items')")
    ap.add_argument("--mcpu", help="compile for this LLVM CPU instead of the host's (e.g. haswell: the AVX2 "
                                   "kernels, which an AVX-512 CPU runs too)")
    ap.add_argument("--rounds", type=int, nargs="+", default=[1],
                    help="visits per subnet and campaign (each with chunks/rounds bursts): 1 = one contiguous block "
                         "per subnet; R > 1 spreads its samples over the campaign, as `profile --rounds` does")
    ap.add_argument("--precision", type=float, default=0.0, metavar="FRACTION",
                    help="after --rounds, visit a subnet again (up to --max-rounds) while the 95 %% confidence "
                         "interval of its kept value is wider than +-FRACTION, as the profiler does with the "
                         "profile key `precision` (0: fixed rounds)")
    ap.add_argument("--max-rounds", type=int, default=0, help="with --precision: most visits (0: 3 x rounds)")
    ap.add_argument("--cache", metavar="DIR", help="keep the compiled subnets there and reuse them in later runs "
                                                   "(compiling dominates the run time at imagenet scale)")
    ap.add_argument("--raw", metavar="DIR", help="also write every campaign's raw samples there (JSON)")
    ap.add_argument("--processes", choices=["one", "two"], default="one",
                    help="one: both campaigns in one process (what the device's own re-measurement can see); two: "
                         "campaign B in a fresh process, with campaign A's reference baselines, as a later profile "
                         "run or another user would measure")
    ap.add_argument("--rescore", nargs="+", metavar="FILE",
                    help="measure nothing: score the raw files that --raw wrote (one per case) again, with the "
                         "verdict the tools give now (nasbnn_hw.profiling.timing.self_disagreement)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--campaign-file", help=argparse.SUPPRESS)
    ap.add_argument("--baselines-from", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.subnets, a.threads, a.chunks, a.worker[1], a.repeat,
                                a.raw, tuple(a.reference), int(a.worker[2]), a.cache, a.mcpu, a.precision,
                                a.max_rounds, a.campaign_file, a.baselines_from)))
        return 0
    if a.rescore:
        return rescore(a.rescore)
    results = []
    if any(r < 1 or a.chunks % r for r in a.rounds):
        ap.error(f"--rounds {a.rounds}: each must be >= 1 and divide --chunks {a.chunks}")
    print("| space | competitor | rounds | protocol | Kendall tau | largest swap | within ±10 % | median dev | worst dev "
          "| range ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for sp, comp, rounds in ((sp, comp, r) for sp in a.spaces for comp in a.competitor for r in a.rounds):
        cmd = [sys.executable, __file__, "--worker", sp, comp, str(rounds), "--subnets", str(a.subnets),
               "--threads", str(a.threads), "--chunks", str(a.chunks), "--repeat", str(a.repeat),
               "--reference", *a.reference] \
            + (["--raw", a.raw] if a.raw else []) + (["--cache", a.cache] if a.cache else []) \
            + (["--mcpu", a.mcpu] if a.mcpu else []) + ["--precision", str(a.precision), "--max-rounds", str(a.max_rounds)]
        with tempfile.TemporaryDirectory() as d:
            files = [str(Path(d) / f"campaign{i}.json") for i in range(2)] if a.processes == "two" else [None]
            for i, f in enumerate(files):
                extra = [] if f is None else ["--campaign-file", f] + (["--baselines-from", files[0]] if i else [])
                p = subprocess.run(cmd + extra, capture_output=True, text=True)
                if p.returncode:
                    sys.stderr.write(p.stderr)
                    return p.returncode
            if a.processes == "two":
                (base, ca), (_, cb) = _read_campaign(files[0]), _read_campaign(files[1])
                r = score(sp, comp, a.threads, rounds, base, {k: [ca[k], cb[k]] for k in ca}, a.raw, a.mcpu)
            else:
                r = json.loads(p.stdout.strip().splitlines()[-1])
        results.append(r)
        visits = [n for vs in r["visits"].values() for n in vs]
        shown = str(rounds) if max(visits) == rounds else f"{rounds}-{max(visits)} (mean {statistics.mean(visits):.1f})"
        for name, m in r["protocols"].items():
            print(f"| {sp} | {comp} | {shown} | {name} | {m['kendall_tau']:.3f} | {100 * m['largest_swap']:.1f} % | "
                  f"{100 * m['acc10']:.0f} % | "
                  f"{100 * m['median_dev']:.1f} % | {100 * m['worst_dev']:.1f} % | "
                  f"{m['range_ms'][0]:.3f}-{m['range_ms'][1]:.3f} |", flush=True)
    print(json.dumps({"self_agreement": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
