"""Which reference absorbs a fresh process's speed? Per fresh process, the space's reference subnet and a few
random subnets, each timed in units of the protocol's L1 reference layer.

    python benchmarks/reference_placement.py [--space imagenet@64] [--subnets 5] [--processes 6] [--rounds 10]
                                             [--mcpu haswell] [--cache DIR] [--hugepages off on]

The L1 reference layer (`nasbnn_hw.profiling.timing.REFERENCE_LAYER`) is placement-independent: its working
set fits a core's L1, so a process's memory placement does not change its speed. Whole subnets of a large
space stream 1-3 MB of weights per call, so their speed in a fresh process depends on where that process's
memory lands. If every subnet moves with the reference subnet from process to process, the profiler's
reference subnet (`subnet_reference_of`) absorbs the shift and the subnets' ratio to it stays put; if the
reference subnet moved alone, rescaling it by its ratio to the L1 layer would be the fix.

Each process measures every item `rounds` times, round by round (`Protocol(bursts=5, repeat=3)`), and keeps
the pooled 20th percentile (`pooled_estimate`). Prints one row per process, then each item's range over the
processes (max/min) in layer units and relative to the reference subnet, then a JSON line. `--hugepages off on`
alternates processes without and with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc backs its large blocks
with transparent huge pages, whose 2 MB frames fix the cache sets a buffer maps to) and scores each group.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(space_spec: str, n: int, rounds: int, cache: str, mcpu: str | None) -> dict:
    from self_agreement import _compiled, _space
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.profiling.profiler import random_subnets, subnet_reference_of
    from nasbnn_hw.profiling.runners.local import LocalRunner
    from nasbnn_hw.profiling.timing import Protocol, pooled_estimate, reference_library
    from nasbnn_hw.profiling.tuning import ScheduleBook
    space = _space(space_spec)
    target = {"kind": "llvm", "mcpu": mcpu} if mcpu else "local"
    spec = resolve_target(target)
    with tempfile.TemporaryDirectory() as d:
        layer = reference_library(Path(d), target)
        items = {"reference subnet": subnet_reference_of(space, spec, ScheduleBook.load(None, "local", spec))[1](Path(d))}
        for i, a in enumerate(random_subnets(space, n, seed=11)):
            items[f"subnet {i}"] = _compiled(a, space, i, Path(cache), space_spec, target, f"-{mcpu}" if mcpu else "")
        runner, proto = LocalRunner(), Protocol(bursts=5, repeat=3)
        per = {k: [] for k in items}
        for _ in range(rounds):
            for k, (lib, args) in items.items():
                per[k].append(proto.measure(runner, lib, args, layer).normalised_samples(1.0))
    return {k: pooled_estimate(v) for k, v in per.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="imagenet@64")
    ap.add_argument("--subnets", type=int, default=5)
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--mcpu", help="compile for this LLVM CPU (e.g. haswell: the AVX2 kernels)")
    ap.add_argument("--cache", metavar="DIR", help="keep the compiled subnets there (as self_agreement.py --cache)")
    ap.add_argument("--hugepages", nargs="+", choices=["off", "on"], default=["off"],
                    help="on: processes run with GLIBC_TUNABLES=glibc.malloc.hugetlb=1; off on: alternate")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.space, a.subnets, a.rounds, a.cache, a.mcpu)))
        return 0
    with tempfile.TemporaryDirectory() as d:
        cache = a.cache or d   # compiled once, by the first process; every process then loads the same files
        cmd = [sys.executable, __file__, "--child", "--space", a.space, "--subnets", str(a.subnets),
               "--rounds", str(a.rounds), "--cache", cache] + (["--mcpu", a.mcpu] if a.mcpu else [])
        rows = {h: [] for h in a.hugepages}
        for p in range(a.processes * len(a.hugepages)):
            h = a.hugepages[p % len(a.hugepages)]
            env = dict(os.environ, **({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"} if h == "on" else {}))
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode:
                sys.stderr.write(r.stderr)
                return r.returncode
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows[h].append(row)
            if p == 0:
                print("| process | huge pages | " + " | ".join(row) + " |  (times the L1 reference layer)")
                print("|---" * (len(row) + 2) + "|")
            print(f"| {p + 1} | {h} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |", flush=True)
    out = {}
    for h, rs in rows.items():
        keys = list(rs[0])
        span = {k: max(r[k] for r in rs) / min(r[k] for r in rs) for k in keys}
        rel = {k: max(r[k] / r[keys[0]] for r in rs) / min(r[k] / r[keys[0]] for r in rs) for k in keys[1:]}
        print(f"huge pages {h}: range over processes, layer units: "
              + ", ".join(f"{k} {v:.3f}" for k, v in span.items()))
        print(f"huge pages {h}: range over processes, / reference subnet: "
              + ", ".join(f"{k} {v:.3f}" for k, v in rel.items()))
        out[h] = {"processes": rs, "range_layer_units": span, "range_vs_reference_subnet": rel}
    print(json.dumps({"reference_placement": {"space": a.space, "mcpu": a.mcpu, "hugepages": out}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
