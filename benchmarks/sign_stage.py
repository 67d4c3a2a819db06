"""The byte sign stage (one compare + `vmovmskps` per 8 channels) against the 64-bit sign loop it replaced.

    python benchmarks/sign_stage.py [--mcpu haswell] [--schedule LEGACY_X86] [--rounds 9] [--processes 5]

Whole binary layers (the six of `benchmarks/tuned_layers.py`), each built twice for the same target and
schedule: as every x86 target with AVX builds it now (`binary.sign_bytes`) and with the 64-bit sign loop
(`schedule.sign8_applies` forced off: the kernel before), the two interleaved sample by sample, 1 thread
unless `TVM_NUM_THREADS` says otherwise; outputs checked equal. A layer's speed here depends on the process
(the same library ran 0.80-1.50x its neighbour's speed from one process to the next on the 3x3 layers, as
the profiler's stack depths address: docs/measurements.md), so `--processes` fresh processes each time
both, and the table gives the median over processes of each one's median ratio, with the range. `--schedule` names a `schedule` constant (default: the target's default per layer; on an AMX CPU the
AMX layers have their own int8 sign stage, so pass `LEGACY_X86` there). Add the CPU model (`lscpu`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tuned_layers import CASES  # noqa: E402 - the same six layers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mcpu", default=None, help="LLVM CPU to compile for (default: this one)")
    ap.add_argument("--schedule", default=None, help="a schedule constant, e.g. LEGACY_X86, AVX2_X86")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    from nasbnn_hw.deploy.kernels import schedule as S
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    target = {"kind": "llvm", "mcpu": a.mcpu} if a.mcpu else "local"
    sched = getattr(S, a.schedule, None) if a.schedule else None
    if a.schedule and not isinstance(sched, S.CpuSchedule):
        sys.exit(f"error: --schedule {a.schedule!r} is not a schedule constant of nasbnn_hw.deploy.kernels.schedule")
    if not S.sign8_applies(resolve_target(target)):
        sys.exit(f"error: target {target} has no AVX: it builds the 64-bit sign loop only")
    if a.worker is not None:
        return _worker(target, sched, a.rounds, a.worker)
    import json
    import subprocess
    print(f"target {target}, schedule {a.schedule or 'default'}, {os.environ['TVM_NUM_THREADS']} thread(s), "
          f"{a.processes} processes x {a.rounds} rounds")
    print("| layer | 64-bit loop us | byte stage us | old / new (median) | range over processes |\n|---|---|---|---|---|")
    for i, (name, *_) in enumerate(CASES):
        runs = []
        for _ in range(a.processes):
            r = subprocess.run([sys.executable, __file__, "--worker", str(i), "--rounds", str(a.rounds),
                                *(["--mcpu", a.mcpu] if a.mcpu else []), *(["--schedule", a.schedule] if a.schedule else [])],
                               capture_output=True, text=True)
            if r.returncode:
                sys.exit(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"error: worker failed ({r.returncode})")
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        ratios = sorted(o / w for o, w in runs)
        olds, news = sorted(o for o, _ in runs), sorted(w for _, w in runs)
        mid = len(runs) // 2
        print(f"| {name} | {olds[mid]:.1f} | {news[mid]:.1f} | {ratios[mid]:.3f}x | {ratios[0]:.2f}-{ratios[-1]:.2f}x |",
              flush=True)
    return 0


def _worker(target, sched, rounds: int, index: int) -> int:
    """One process: layer `index` built both ways, interleaved; prints [old us, new us] (medians) as JSON."""
    import json

    import numpy as np
    import tvm

    from nasbnn_hw.core.layers import LayerConfig
    from nasbnn_hw.deploy.kernels import schedule as S
    from nasbnn_hw.deploy.kernels.layer import build_layer
    dev = tvm.cpu(0)

    def ready(lay):
        return lay.executable["main"], [tvm.runtime.tensor(x.data, dev) if not x.is_output
                                        else tvm.runtime.empty(x.shape, x.dtype, dev) for x in lay.args]

    name, ci, co, k, g, r = CASES[index]
    cfg = LayerConfig("bconv", ci, co, k, g, 1, r)
    new = ready(build_layer(cfg, target, schedule=sched))
    keep = S.sign8_applies
    S.sign8_applies = lambda spec: False
    try:
        old = ready(build_layer(cfg, target, schedule=sched))
    finally:
        S.sign8_applies = keep
    n = max(20, int(2e9 / (ci * co * k * k * r * r / g)))   # about 2 ms per sample
    times = ([], [])
    for _ in range(rounds):
        for i, (f, args) in enumerate((old, new)):
            f(*args)
            t = time.perf_counter()
            for _ in range(n):
                f(*args)
            times[i].append((time.perf_counter() - t) / n * 1e6)
    if not np.array_equal(old[1][-1].numpy(), new[1][-1].numpy()):
        sys.exit(f"error: {name}: the two sign stages computed different outputs")
    print(json.dumps([float(np.median(t)) for t in times]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
