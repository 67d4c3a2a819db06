"""Whole binary layers (and optionally whole subnets) of this tree against those of a git revision.

    python benchmarks/commit_layers.py [--base HEAD] [--mcpu znver3] [--rounds 5] [--threads 1] [--subnets] [--paired]

The revision (`--base`, default HEAD: the last commit, so uncommitted kernel changes are what is measured) is
checked out into a temporary directory (`git worktree`, removed after). Each round runs one process per side,
alternating which goes first; each process builds the six layers of `tuned_layers.py` with the target's default
schedule (as every build without a tuned store takes them) and times them with samples spread over stack depths
(`runners.local.at_stack_depth`). With `--subnets` the smallest and largest imagenet subnets at 224 are timed
too. Printed: median ms per side over rounds and base / this (> 1: this tree is faster), with the spread of the
per-round ratios. Add the CPU model (`lscpu`) to any figure you quote.

`--paired`: for a machine whose speed drifts between processes (a shared host; per-round ratios spreading
0.6-1.5x). Each side builds its kernels once, in its own tree, and exports them as shared libraries; then each
round one process loads both sides' libraries and times them in pairs, base and this one after the other at the
same stack depth (alternating which goes first), so a drift slower than one sample moves both alike. Printed:
medians of each side, the median and the range (10th-90th percentile) of the per-pair ratios base / this.
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


# time_evaluator's arguments: a layer 20 calls per sample of >= 10 ms, a whole subnet one call per >= 50 ms
LAYER_SAMPLING = {"number": 20, "repeat": 1, "min_repeat_ms": 10}
SUBNET_SAMPLING = {"number": 1, "repeat": 1, "min_repeat_ms": 50}


def _timed_cases(mcpu: str | None, subnets: bool):
    """(name, compiled object with `executable` and `export`, argument specs, time_evaluator arguments) of the
    six layers and, with `subnets`, the smallest and largest imagenet subnets, as every build without a tuned
    store makes them."""
    from nasbnn_hw.deploy.kernels.layer import build_layer
    for name, *shape in CASES:
        lay = build_layer(_cfg(*shape), _target(mcpu))
        yield name, lay, lay.args, LAYER_SAMPLING
    if subnets:
        from nasbnn_hw.core.sampling import largest, smallest
        from nasbnn_hw.core.space import get_space
        from nasbnn_hw.deploy.tvm_net import compile_random_subnet
        space = get_space("imagenet")
        for which, arch in (("smallest", smallest(space)), ("largest", largest(space))):
            net = compile_random_subnet(arch, space, _target(mcpu))
            yield f"{which} subnet", net, net.arg_specs(), SUBNET_SAMPLING


def worker(repeat: int, mcpu: str | None, subnets: bool) -> dict:
    import numpy as np
    import tvm

    from nasbnn_hw.profiling.runners.inputs import input_arrays
    from nasbnn_hw.profiling.runners.local import STACK_DEPTHS, at_stack_depth
    dev = tvm.cpu(0)
    fns = {}
    for name, obj, specs, sampling in _timed_cases(mcpu, subnets):
        fns[name] = (obj.executable.mod.time_evaluator("main", dev, **sampling),
                     [tvm.runtime.tensor(a, dev) for a in input_arrays(specs)])
    out = {}
    for name, (f, t) in fns.items():
        f(*t)
        out[name] = float(np.median([at_stack_depth(j % STACK_DEPTHS, lambda: f(*t)).results[0]
                                     for j in range(repeat)]))
    return out


def build_worker(out: Path, mcpu: str | None, subnets: bool) -> None:
    """--paired, in the side's own tree: each case's kernel to `out/<i>.so`, its arguments (`input_arrays`,
    as the local runner makes them) to `out/<i>.npz`, the names and sampling to `out/cases.json`."""
    import numpy as np

    from nasbnn_hw.profiling.runners.inputs import input_arrays
    cases = []
    for i, (name, obj, specs, sampling) in enumerate(_timed_cases(mcpu, subnets)):
        obj.export(out / f"{i}.so")
        np.savez(out / f"{i}.npz", *input_arrays(specs))
        cases.append({"name": name, "sampling": sampling})
    (out / "cases.json").write_text(json.dumps(cases))


def paired_worker(dirs: list[Path], repeat: int, first: int) -> dict:
    """Load both sides' libraries (`build_worker`) and time each case in pairs, side `first` first in even
    pairs, at the same stack depth; per case the list of [base s, this s] pairs."""
    import numpy as np
    import tvm

    from nasbnn_hw.profiling.runners.local import STACK_DEPTHS, at_stack_depth
    dev = tvm.cpu(0)
    out = {}
    for i, case in enumerate(json.loads((dirs[0] / "cases.json").read_text())):
        fns = []
        for d in dirs:
            data = np.load(d / f"{i}.npz")
            args = [tvm.runtime.tensor(data[f"arr_{j}"], dev) for j in range(len(data.files))]
            f = tvm.runtime.load_module(str(d / f"{i}.so")).time_evaluator("main", dev, **case["sampling"])
            f(*args)
            fns.append((f, args))
        pairs = []
        for j in range(repeat):
            got = {}
            for side in ((first, 1 - first) if j % 2 == 0 else (1 - first, first)):
                f, args = fns[side]
                got[side] = at_stack_depth(j % STACK_DEPTHS, lambda: f(*args)).results[0]
            pairs.append([got[0], got[1]])
        out[case["name"]] = pairs
    return out


def _run(cmd, side: str, **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        sys.exit(f"{side} worker failed: {(r.stderr.strip() or str(r.returncode)).splitlines()[-1]}")
    return r.stdout


def paired(args, base_dir: Path, tmp: Path, env: dict) -> dict:
    """--paired: build each side in its own tree, then `args.rounds` timing processes of both."""
    dirs = [tmp / "lib-base", tmp / "lib-this"]
    for side, root, d in (("base", base_dir, dirs[0]), ("this", ROOT, dirs[1])):
        d.mkdir()
        _run([sys.executable, str(Path(__file__).resolve()), "--build-worker", str(d),
              *(["--mcpu", args.mcpu] if args.mcpu else []), *(["--subnets"] if args.subnets else [])],
             side, cwd=tmp, env=dict(env, PYTHONPATH=str(root)))
        print(f"{side} built", file=sys.stderr)
    pairs: dict = {}
    for rnd in range(args.rounds):
        out = _run([sys.executable, str(Path(__file__).resolve()), "--paired-worker", str(dirs[0]), str(dirs[1]),
                    "--repeat", str(args.repeat), "--first", str(rnd % 2)], "timing", cwd=tmp,
                   env=dict(env, PYTHONPATH=str(ROOT)))
        for name, ps in json.loads(out.strip().splitlines()[-1]).items():
            pairs.setdefault(name, []).extend(ps)
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    return pairs


def unpaired(args, base_dir: Path, tmp: Path, env: dict) -> dict:
    """Without --paired: `args.rounds` rounds of one worker process per side (alternating which goes first)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--repeat", str(args.repeat),
           *(["--mcpu", args.mcpu] if args.mcpu else []), *(["--subnets"] if args.subnets else [])]
    runs = {"base": [], "this": []}
    for rnd in range(args.rounds):
        for side in (("base", "this") if rnd % 2 == 0 else ("this", "base")):
            root = base_dir if side == "base" else ROOT
            out = _run(cmd, side, cwd=tmp, env=dict(env, PYTHONPATH=str(root)))
            runs[side].append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    return runs


def _print_unpaired(runs: dict) -> None:
    print(f"{'case':22s} {'base ms':>9s} {'this ms':>9s} {'base/this':>10s}  per-round range")
    for name in runs["this"][0]:
        b = statistics.median(r[name] for r in runs["base"])
        t = statistics.median(r[name] for r in runs["this"])
        per = [rb[name] / rt[name] for rb, rt in zip(runs["base"], runs["this"])]
        print(f"{name:22s} {b * 1e3:9.3f} {t * 1e3:9.3f} {b / t:9.2f}x  {min(per):.2f}-{max(per):.2f}")


def _print_paired(pairs: dict) -> None:
    import numpy as np
    print(f"{'case':22s} {'base ms':>9s} {'this ms':>9s} {'base/this':>10s}  pairs 10-90 %")
    for name, ps in pairs.items():
        a = np.array(ps)
        r = a[:, 0] / a[:, 1]
        print(f"{name:22s} {np.median(a[:, 0]) * 1e3:9.3f} {np.median(a[:, 1]) * 1e3:9.3f} {np.median(r):9.2f}x  "
              f"{np.quantile(r, 0.1):.2f}-{np.quantile(r, 0.9):.2f} ({len(r)} pairs)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD", help="git revision to compare with (default: HEAD)")
    ap.add_argument("--mcpu", help="compile for this LLVM CPU (e.g. znver3, haswell) instead of this one's")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--subnets", action="store_true", help="also the smallest and largest imagenet subnets")
    ap.add_argument("--paired", action="store_true",
                    help="time both sides in one process per round, in pairs (a machine that drifts between processes)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--build-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--paired-worker", type=Path, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.repeat, args.mcpu, args.subnets)))
        return 0
    if args.build_worker:
        build_worker(args.build_worker, args.mcpu, args.subnets)
        return 0
    if args.paired_worker:
        print(json.dumps(paired_worker(args.paired_worker, args.repeat, args.first)))
        return 0
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], capture_output=True, text=True)
    if rev.returncode:
        sys.exit(f"--base {args.base!r}: not a revision of {ROOT} ({rev.stderr.strip().splitlines()[-1]})")
    env = dict(os.environ, TVM_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_dir), args.base],
                       check=True)
        try:
            result = (paired if args.paired else unpaired)(args, base_dir, Path(tmp), env)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_dir)], check=False)
    print(f"\n{args.threads} thread(s), {args.rounds} rounds, target {args.mcpu or 'this CPU'}; base {args.base} "
          f"({rev.stdout.strip()}) against this tree; default schedules{'; paired in one process' if args.paired else ''}")
    (_print_paired if args.paired else _print_unpaired)(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
