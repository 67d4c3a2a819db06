"""The latency floor: how much of a small layer's or subnet's time is a fixed cost rather than work.

    python benchmarks/latency_floor.py [--threads 1 2] [--subnets 12] [--repeat 15]

Per layer kind (binary 3x3, binary 1x1, stem) a series of sizes at one resolution is compiled and timed
(medians of repeats, each sample >= 2 ms of calls); a least-squares line `time = fixed + work / rate` per
kind through the small sizes gives the fixed cost (intercept) and each layer's excess over its work. Whole small16 subnets (the
smallest, the largest and random ones) are timed the same way; their line against OPs gives the
whole-subnet fixed cost. Each thread count runs in its own process, through `LocalRunner(threads=T)` as
`profile --device local` does.
Prints one table per thread count, then a JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

LAYERS = {
    "bconv 3x3": [("bconv", c, c, 3, 1, 1, r) for c, r in ((16, 8), (32, 8), (64, 8), (64, 16), (128, 14),
                                                           (256, 14))],
    "bconv 1x1": [("bconv", c, 2 * c, 1, 1, 1, r) for c, r in ((16, 8), (32, 8), (64, 8), (64, 16), (128, 14),
                                                               (256, 14))],
    "stem": [("stem", 1, c, 3, 1, 2, r) for c, r in ((8, 16), (16, 16), (16, 28), (32, 28), (32, 56))],
}


SMALL_MOPS = 0.04


def _time_us(lib_path, args, repeat: int, threads: int) -> float:
    from nasbnn_hw.profiling.runners.local import LocalRunner
    r = LocalRunner(threads=threads)
    probe = r.time_library(lib_path, args, warmup=3, repeat=1, number=1).median
    number = max(1, int(2e-3 / max(probe, 1e-7)))
    return r.time_library(lib_path, args, warmup=20, repeat=repeat, number=number).median * 1e6


def _fit(xs, ys):
    import numpy as np
    a = np.vstack([np.ones(len(xs)), np.asarray(xs, float)]).T
    (b0, b1), *_ = np.linalg.lstsq(a, np.asarray(ys, float), rcond=None)
    return float(b0), float(b1)


def worker(n_subnets: int, repeat: int, threads: int) -> dict:
    import tempfile
    from pathlib import Path

    from nasbnn_hw.deploy.tvm_net import compile_random_subnet
    from nasbnn_hw.deploy.kernels import build_layer
    from nasbnn_hw.core.layers import LayerConfig, count_ops
    from nasbnn_hw.profiling.profiler import random_subnets
    from nasbnn_hw.core.sampling import largest, smallest
    from nasbnn_hw.core.space import get_space
    out = {"layers": {}, "subnets": []}
    with tempfile.TemporaryDirectory() as d:
        for kind, cfgs in LAYERS.items():
            rows = []
            for t in cfgs:
                cfg = LayerConfig(*t)
                lay = build_layer(cfg, "local")
                us = _time_us(lay.export(Path(d) / f"{cfg.key()}.so"), lay.args, repeat, threads)
                rows.append({"layer": cfg.key(), "mops": (cfg.flops() + cfg.bops() / 64) / 1e6, "us": us})
            out["layers"][kind] = rows
        space = get_space("small16")
        archs = [("smallest", smallest(space)), ("largest", largest(space))]
        archs += [(f"random{i}", a) for i, a in enumerate(random_subnets(space, n_subnets, seed=7))]
        for name, arch in archs:
            net = compile_random_subnet(arch, space, "local")
            us = _time_us(net.export(Path(d) / f"{name}.so"), net.arg_specs(), repeat, threads)
            out["subnets"].append({"name": name, "mops": count_ops(arch, space).ops / 1e6, "us": us,
                                   "layers": len(net.layers)})
    return out


def report(threads: int, res: dict) -> dict:
    print(f"\n## {threads} thread(s)\n")
    print("| kind | layer | M OPs | us | work us (small-size fit) | excess us |")
    print("|---|---|---|---|---|---|")
    summary = {"threads": threads, "fixed_us": {}}
    for kind, rows in res["layers"].items():
        # the line through the small sizes (up to 0.04 M OPs, where a call does little work and the vector
        # efficiency is alike): its intercept is what a call costs beyond its work
        small = [r for r in rows if r["mops"] <= SMALL_MOPS]
        fixed, slope = _fit([r["mops"] for r in small], [r["us"] for r in small])
        summary["fixed_us"][kind] = fixed
        for r in rows:
            work = slope * r["mops"]
            print(f"| {kind} | {r['layer']} | {r['mops']:.4f} | {r['us']:.2f} | {work:.2f} | {r['us'] - work:.2f} |")
    subs = res["subnets"]
    fixed, slope = _fit([s["mops"] for s in subs], [s["us"] for s in subs])
    smallest = next(s for s in subs if s["name"] == "smallest")
    largest = next(s for s in subs if s["name"] == "largest")
    summary.update(subnet_fixed_us=fixed, smallest_us=smallest["us"], largest_us=largest["us"],
                   subnet_us=[s["us"] for s in subs])
    print("\nfixed cost per layer call (intercept): " +
          ", ".join(f"{k} {v:.2f} us" for k, v in summary["fixed_us"].items()))
    print(f"small16 subnets: smallest {smallest['us']:.1f} us ({smallest['layers']} layers), "
          f"largest {largest['us']:.1f} us, fixed part of a subnet (intercept vs OPs) {fixed:.1f} us, "
          f"largest / smallest {largest['us'] / smallest['us']:.2f}x")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--subnets", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.subnets, a.repeat, a.threads[0])))
        return 0
    summaries = []
    for t in a.threads:
        p = subprocess.run([sys.executable, __file__, "--worker", "--threads", str(t), "--subnets", str(a.subnets),
                            "--repeat", str(a.repeat)], capture_output=True, text=True, check=True)
        summaries.append(report(t, json.loads(p.stdout.strip().splitlines()[-1])))
    print("\n" + json.dumps({"latency_floor": summaries}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
