"""Time the Bi-Teacher training step eager against fused (`TrainConfig.compile`: TorchInductor-compiled
element-wise chains), and optionally against the eager step of a previous git commit.

Each (case, mode) runs in its own process; modes alternate within each round. A process runs `--warmup`
steps, then `--steps` more; the step time is the median of those after the warm-up that compiled nothing.
It also reports the compile time (the wall time of the calls that compiled, and of the first step), the
graphs and recompilations over all its steps, and the peak RSS (ru_maxrss of the process; compiler processes
not included). Cases: imagenet batch 2 at 224, small batch 128 at 28, small16 batch 128 at 16.

    python benchmarks/step_fused.py --threads 2 --steps 30 --rounds 2
    python benchmarks/step_fused.py --cases small16 --steps 200          # recompilations over 200 steps
    python benchmarks/step_fused.py --baseline-commit HEAD~1 --steps 30  # also time the previous commit
    python benchmarks/step_fused.py --modes eager --baseline-commit HEAD  # the working tree against HEAD

A fresh TorchInductor cache directory per fused process makes each compile time a cold one
(`--warm-cache`: one shared directory, so only the first fused process compiles from scratch).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {"imagenet": ("imagenet", 2, 224), "small": ("small", 128, 28), "small16": ("small16", 128, 16)}
MODES = ("eager", "fused", "baseline")


def child(args) -> None:
    """One process: `--warmup` + `--steps` train steps of one case and mode; prints one JSON line."""
    import random
    import resource
    import time

    import torch

    import nasbnn_hw
    from nasbnn_hw import get_space
    from nasbnn_hw.data.sets import Splits, TensorData
    from nasbnn_hw.train.trainer import SupernetTrainer, TrainConfig
    root = Path(nasbnn_hw.__file__).resolve().parent.parent
    if args.expect_root and root != Path(args.expect_root).resolve():
        raise SystemExit(f"nasbnn_hw imported from {root}, expected {args.expect_root}")
    torch.set_num_threads(args.threads)
    random.seed(0)
    space_name, batch, res = CASES[args.case]
    space = get_space(space_name).with_resolution(res)
    n = batch * 4  # four distinct batches, cycled
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(n, space.in_channels, res, res, generator=g),
                      torch.randint(0, space.num_classes, (n,), generator=g), space.num_classes, "random")
    splits = Splits(data, data.subset(range(batch)), data.subset(range(batch)))
    kw = {"compile": True} if args.child == "fused" else {}
    with tempfile.TemporaryDirectory() as out:
        tr = SupernetTrainer(space, splits, TrainConfig(epochs=1, batch_size=batch, **kw), out, progress=False)
        stats = None
        if args.child == "fused":
            from nasbnn_hw.nn import fused
            stats = fused.compile_stats
        times, compiled = [], []
        for i in range(args.warmup + args.steps):
            j = i % 4
            x, y = data.images[j * batch:(j + 1) * batch], data.labels[j * batch:(j + 1) * batch]
            before = stats()["graphs"] if stats else 0
            t = time.perf_counter()
            tr.train_step(x, y)
            times.append(time.perf_counter() - t)
            compiled.append((stats()["graphs"] if stats else 0) != before)
            tr.global_step += 1
    timed = [t for i, (t, c) in enumerate(zip(times, compiled)) if i >= args.warmup and not c]
    rec = {"case": args.case, "mode": args.child, "root": str(root), "steps": len(times),
           "median_s": statistics.median(timed) if timed else None, "timed_steps": len(timed),
           "first_step_s": round(times[0], 3), "compile_steps": sum(compiled),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if stats:
        rec.update(stats())
    print(json.dumps(rec), flush=True)


def _worktree(rev: str) -> Path:
    """A detached worktree of `rev` in a temporary directory (removed at the end of the run)."""
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True,
                             capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        raise SystemExit(f"--baseline-commit {rev!r}: not a commit of {ROOT}") from None
    path = Path(tempfile.mkdtemp(prefix="nasbnn_baseline_")) / sha[:12]
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), sha], check=True,
                   capture_output=True)
    return path


def _run_child(case, mode, args, root: Path, cache_dir: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if cache_dir:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "fused" if mode == "fused" else "eager",
           "--case", case, "--threads", str(args.threads), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--expect-root", str(root)]
    p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"{case}/{mode} failed (exit {p.returncode})")
    rec = json.loads(p.stdout.strip().splitlines()[-1])
    rec["mode"] = mode
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="steps timed after the warm-up (per process)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="processes per (case, mode), alternated")
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    ap.add_argument("--baseline-commit", metavar="REV", help="also time the eager step of this commit")
    ap.add_argument("--modes", nargs="+", choices=("eager", "fused"), default=["eager", "fused"],
                    help="this tree's modes to time (default both; e.g. `--modes eager --baseline-commit HEAD`)")
    ap.add_argument("--warm-cache", action="store_true", help="one TorchInductor cache for all fused processes")
    ap.add_argument("--json", help="also write every record to this file")
    ap.add_argument("--child", choices=("eager", "fused"), help=argparse.SUPPRESS)
    ap.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--expect-root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for name in ("threads", "steps", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} {getattr(args, name)} is not allowed; expected an integer >= 1")
    if args.warmup < 0:
        raise SystemExit(f"--warmup {args.warmup} is not allowed; expected an integer >= 0")
    if args.child:
        child(args)
        return
    modes = list(dict.fromkeys(args.modes)) + (["baseline"] if args.baseline_commit else [])
    base = _worktree(args.baseline_commit) if args.baseline_commit else None
    shared = tempfile.mkdtemp(prefix="nasbnn_inductor_") if args.warm_cache else None
    print(f"threads={args.threads}, warm-up {args.warmup}, median of {args.steps} steps, {args.rounds} "
          f"round(s) alternating {', '.join(modes)}" + (f"; baseline {args.baseline_commit} at {base}" if base
                                                         else ""), flush=True)
    records = []
    try:
        for case in args.cases:
            for r in range(args.rounds):
                for mode in (modes if r % 2 == 0 else modes[::-1]):
                    cache = shared or (tempfile.mkdtemp(prefix="nasbnn_inductor_") if mode == "fused" else None)
                    rec = _run_child(case, mode, args, base if mode == "baseline" else ROOT, cache)
                    if cache and not shared:
                        shutil.rmtree(cache, ignore_errors=True)
                    rec["round"] = r
                    records.append(rec)
                    extra = (f" compile {rec['compile_s']:.1f} s, graphs {rec['graphs']}, recompiles "
                             f"{rec['recompiles']}" if mode == "fused" else "")
                    print(f"  {case:9s} {mode:8s} round {r}: {rec['median_s']:.4f} s/step, first step "
                          f"{rec['first_step_s']:.2f} s, peak {rec['peak_rss_mib']:.0f} MiB{extra}", flush=True)
    finally:
        if base:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
            shutil.rmtree(base.parent, ignore_errors=True)
        if shared:
            shutil.rmtree(shared, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    _summary(records, modes, args)


def _summary(records, modes, args):
    print(f"\n{'case':9s} {'mode':8s} {'s/step':>8s} {'peak MiB':>9s} {'compile s':>10s} {'graphs':>7s} "
          f"{'recompiles':>10s}   (medians over rounds; recompiles: max over rounds, {args.warmup + args.steps} "
          "steps each)")
    for case in args.cases:
        med = {}
        for mode in modes:
            rs = [r for r in records if r["case"] == case and r["mode"] == mode and r["median_s"]]
            if not rs:
                continue
            med[mode] = statistics.median(r["median_s"] for r in rs)
            rss = max(r["peak_rss_mib"] for r in rs)
            comp = (f"{statistics.median(r['compile_s'] for r in rs):10.1f} {max(r['graphs'] for r in rs):7d} "
                    f"{max(r['recompiles'] for r in rs):10d}" if mode == "fused" else f"{'':10s} {'':7s} {'':10s}")
            print(f"{case:9s} {mode:8s} {med[mode]:8.4f} {rss:9.0f} {comp}")
        ratios = [f"eager/fused {med['eager'] / med['fused']:.2f}x"] if {"eager", "fused"} <= med.keys() else []
        if "baseline" in med:
            ratios += [f"baseline/fused {med['baseline'] / med['fused']:.2f}x" if "fused" in med else "",
                       f"baseline/eager {med['baseline'] / med['eager']:.2f}x" if "eager" in med else ""]
        print(f"{case:9s} {'ratios':8s} " + ", ".join(x for x in ratios if x))


if __name__ == "__main__":
    main()
