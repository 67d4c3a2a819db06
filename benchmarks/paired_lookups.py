"""Paired groups against joined 32 + 16-lane lookups: whole binary layers (sign + pack + nibble lookups +
BN + shortcut + RPReLU) of the AVX2 code, per layer shape.

    python benchmarks/paired_lookups.py [--mcpu haswell] [--threads 1] [--samples 24] [--pixels 7 4 2]

Groups of 48 output channels cannot be tiled by 32-lane lookups: the nibble strategy joins a 32- and a
16-lane lookup per group (`NIBBLE_X86_48`, the AVX2 default before pairs); the pairs strategy looks up 16
channels of each of two groups per 32-lane step (`PAIRS_X86`: 3 shuffles per 96 channels, not 4). For each
shape: the joined tile and the pairs tile at each `--pixels`, built from the same random arguments, checked to
give the same output, then timed sample by sample in alternation in this process, each sample (at least 5 ms
of calls) at the next of the runner's call depths. Printed: medians in us and joined / pairs (> 1: pairs
faster). 16-channel groups (small spaces) are compared with the target's default before pairs (dense rows).
`--mcpu` defaults to haswell (the AVX2 code, which runs on an AVX-512 CPU too). Then a JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

CASES = [  # (c_in, c_out, kernel, groups, stride, resolution)
    (96, 96, 5, 2, 1, 28),      # benchmarks/tuned_layers.py's grouped 5x5
    (96, 96, 3, 2, 1, 28),
    (96, 96, 5, 2, 2, 28),      # stride 2
    (192, 192, 5, 4, 1, 14),
    (192, 192, 3, 4, 1, 14),
    (384, 384, 3, 8, 1, 7),
    (768, 768, 5, 16, 1, 7),
    (32, 32, 3, 2, 1, 16),      # 16 per group
    (32, 32, 5, 2, 1, 16),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mcpu", default="haswell", help="compile for this LLVM CPU (default haswell: the AVX2 kernels)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=24, help="samples per kernel (each >= 5 ms of calls)")
    ap.add_argument("--pixels", type=int, nargs="+", default=[7, 4, 2], help="pixel tiles of the pairs kernel")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    import numpy as np
    import tvm
    tvm.get_global_func("runtime.config_threadpool")(1, a.threads)   # as LocalRunner sizes the pool

    from dataclasses import replace

    from nasbnn_hw.core.layers import LayerConfig
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.deploy.kernels.layer import build_layer
    from nasbnn_hw.deploy.kernels.schedule import JOINED_LANES, PAIRS_X86, target_defaults
    from nasbnn_hw.profiling.runners.local import STACK_DEPTHS, at_stack_depth
    target = {"kind": "llvm", "mcpu": a.mcpu}
    word, others = target_defaults(resolve_target(target))
    before = [s for s in others if s.strategy != "pairs"]
    print(f"target {a.mcpu}, {a.threads} thread(s), medians of {a.samples} interleaved samples")
    rows = []
    dev = tvm.cpu(0)
    for ci, co, k, g, st, res in CASES:
        cfg = LayerConfig("bconv", ci, co, k, g, st, res)
        name = f"{ci}->{co} {res}x{res} {k}x{k} g{g}" + (f" s{st}" if st > 1 else "")
        base = next((s for s in before if s.fits(cfg) and s.tile_of(cfg)[2] in (s.vector, JOINED_LANES)), word)
        scheds = {"before": base, **{f"pairs p{p}": replace(PAIRS_X86, pixels=p) for p in a.pixels}}
        scheds = {n: s for n, s in scheds.items() if n == "before" or s.fits(cfg)}
        fns, outs = {}, {}
        for n, sch in scheds.items():
            lay = build_layer(cfg, target=target, schedule=sch, seed=0)
            ts = [tvm.runtime.empty(x.shape, x.dtype, dev) if x.is_output else tvm.runtime.tensor(x.data, dev)
                  for x in lay.args]
            lay.executable["main"](*ts)
            outs[n] = ts[-1].numpy()
            fns[n] = (lay.executable.mod.time_evaluator("main", dev, number=10, repeat=1, min_repeat_ms=5), ts)
        for n, o in outs.items():
            if not np.array_equal(o, outs["before"]):
                print(f"{name}: {n} computes another output than {base.fingerprint()}", file=sys.stderr)
                return 1
        times = {n: [] for n in fns}
        for j in range(a.samples):  # interleaved, each sample at the next call depth
            for n, (ev, ts) in fns.items():
                times[n].append(at_stack_depth(j % STACK_DEPTHS, lambda: ev(*ts)).results[0] * 1e6)
        med = {n: statistics.median(v) for n, v in times.items()}
        ratios = {n: med["before"] / v for n, v in med.items() if n != "before"}
        rows.append({"layer": name, "before": base.fingerprint(), "us": med, "before_over": ratios})
        print(f"{name:<24} {base.fingerprint():<30} {med['before']:8.2f} us  " + "  ".join(
            f"{n} {med[n]:8.2f} us ({r:.2f}x)" for n, r in ratios.items()), flush=True)
    print(json.dumps({"paired_lookups": {"mcpu": a.mcpu, "threads": a.threads, "rows": rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
