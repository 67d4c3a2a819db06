"""Whole binary layers (and optionally whole subnets) of this tree against those of a git revision.

    python benchmarks/commit_layers.py [--base HEAD] [--mcpu znver3] [--rounds 5] [--threads 1] [--subnets]

The revision (`--base`, default HEAD: the last commit, so uncommitted kernel changes are what is measured) is
checked out into a temporary directory (`git worktree`, removed after). Each round runs one process per side,
alternating which goes first; each process builds the six layers of `tuned_layers.py` with the target's default
schedule (as every build without a tuned store takes them) and times them with samples spread over stack depths
(`runners.local.at_stack_depth`). With `--subnets` the smallest and largest imagenet subnets at 224 are timed
too. Printed: median ms per side over rounds and base / this (> 1: this tree is faster), with the spread of the
per-round ratios. Add the CPU model (`lscpu`) to any figure you quote.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tuned_layers import CASES, _cfg, _target  # noqa: E402 - the same six layers


def worker(repeat: int, mcpu: str | None, subnets: bool) -> dict:
    import numpy as np
    import tvm

    from nasbnn_hw.deploy.kernels.layer import build_layer
    from nasbnn_hw.profiling.runners.local import STACK_DEPTHS, at_stack_depth
    dev = tvm.cpu(0)
    fns = {}
    for name, *shape in CASES:
        lay = build_layer(_cfg(*shape), _target(mcpu))
        t = [tvm.runtime.empty(a.shape, a.dtype, dev) if a.is_output else tvm.runtime.tensor(a.data, dev)
             for a in lay.args]
        fns[name] = (lay.executable.mod.time_evaluator("main", dev, number=20, repeat=1, min_repeat_ms=10), t)
    if subnets:
        from nasbnn_hw.core.sampling import largest, smallest
        from nasbnn_hw.core.space import get_space
        from nasbnn_hw.deploy.tvm_net import compile_random_subnet
        space = get_space("imagenet")
        for which, arch in (("smallest", smallest(space)), ("largest", largest(space))):
            net = compile_random_subnet(arch, space, _target(mcpu))
            t = [tvm.runtime.empty(a.shape, a.dtype, dev) if a.is_output else tvm.runtime.tensor(a.data, dev)
                 for a in net.arg_specs()]
            fns[f"{which} subnet"] = (net.executable.mod.time_evaluator("main", dev, number=1, repeat=1,
                                                                        min_repeat_ms=50), t)
    out = {}
    for name, (f, t) in fns.items():
        f(*t)
        out[name] = float(np.median([at_stack_depth(j % STACK_DEPTHS, lambda: f(*t)).results[0]
                                     for j in range(repeat)]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD", help="git revision to compare with (default: HEAD)")
    ap.add_argument("--mcpu", help="compile for this LLVM CPU (e.g. znver3, haswell) instead of this one's")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--subnets", action="store_true", help="also the smallest and largest imagenet subnets")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.repeat, args.mcpu, args.subnets)))
        return 0
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], capture_output=True, text=True)
    if rev.returncode:
        sys.exit(f"--base {args.base!r}: not a revision of {ROOT} ({rev.stderr.strip().splitlines()[-1]})")
    env = dict(os.environ, TVM_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--repeat", str(args.repeat),
           *(["--mcpu", args.mcpu] if args.mcpu else []), *(["--subnets"] if args.subnets else [])]
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_dir), args.base],
                       check=True)
        try:
            runs = {"base": [], "this": []}
            for rnd in range(args.rounds):
                for side in (("base", "this") if rnd % 2 == 0 else ("this", "base")):
                    root = base_dir if side == "base" else ROOT
                    r = subprocess.run(cmd, cwd=tmp, env=dict(env, PYTHONPATH=str(root)), capture_output=True,
                                       text=True)
                    if r.returncode:
                        sys.exit(f"{side} worker failed: {(r.stderr.strip() or str(r.returncode)).splitlines()[-1]}")
                    runs[side].append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_dir)], check=False)
    print(f"\n{args.threads} thread(s), {args.rounds} rounds, target {args.mcpu or 'this CPU'}; base {args.base} "
          f"({rev.stdout.strip()}) against this tree; default schedules")
    print(f"{'case':22s} {'base ms':>9s} {'this ms':>9s} {'base/this':>10s}  per-round range")
    for name in runs["this"][0]:
        b = statistics.median(r[name] for r in runs["base"])
        t = statistics.median(r[name] for r in runs["this"])
        per = [rb[name] / rt[name] for rb, rt in zip(runs["base"], runs["this"])]
        print(f"{name:22s} {b * 1e3:9.3f} {t * 1e3:9.3f} {b / t:9.2f}x  {min(per):.2f}-{max(per):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
