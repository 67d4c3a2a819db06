"""Whole binary layers at 1 thread against N threads, timed in pairs in one process.

    python benchmarks/thread_scaling.py [--threads 2] [--mcpu znver3] [--repeat 16] [--schedule amx]

Each of the six layers of `tuned_layers.py` is built once (the target's default schedule, or `--schedule`
where it builds the layer) and timed alternately with TVM's thread pool at 1 thread and at `--threads`
(TVM_NUM_THREADS and `runtime.config_threadpool` set between samples as `LocalRunner` sets them, a warm-up
call after each switch; samples of at least 10 ms at rotating stack depths). A pair is one sample of each, taken back to back, so a machine whose speed drifts
(a shared host) moves both alike; cross-process comparisons of the same build spread 0.6-1.5x on such a host.
Printed per layer: the medians, the median of the per-pair speed-ups 1 thread / N threads and their 10th-90th
percentile range. Add the CPU model (`lscpu`) to any figure you quote.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tuned_layers import CASES, _cfg, _target  # noqa: E402 - the same six layers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="the thread count compared with 1 (default 2)")
    ap.add_argument("--mcpu", help="compile for this LLVM CPU (e.g. znver3, haswell) instead of this one's")
    ap.add_argument("--repeat", type=int, default=16, help="pairs per layer (default 16)")
    ap.add_argument("--schedule", choices=("default", "word", "amx", "amxs"), default="default",
                    help="the schedule of every layer it builds (default: the target's default per layer)")
    a = ap.parse_args()
    if a.threads < 2 or a.repeat < 1:
        ap.error(f"--threads {a.threads} / --repeat {a.repeat}: need at least 2 threads and 1 pair")
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    import numpy as np
    import tvm

    from nasbnn_hw.deploy.kernels.layer import build_layer
    from nasbnn_hw.deploy.kernels.schedule import AMX_X86, AMXS_X86, default_schedule, target_defaults
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    from nasbnn_hw.profiling.runners.inputs import input_arrays
    from nasbnn_hw.profiling.runners.local import STACK_DEPTHS, at_stack_depth
    spec = resolve_target(_target(a.mcpu))
    pool = tvm.get_global_func("runtime.config_threadpool")
    pool(1, a.threads)     # the pool is made here, at N threads (one made at 1 stays at 1)
    dev = tvm.cpu(0)
    print(f"1 thread against {a.threads}, {a.repeat} pairs per layer, target {a.mcpu or 'this CPU'}")
    print(f"{'layer':22s} {'1T ms':>8s} {f'{a.threads}T ms':>8s} {'speed-up':>9s}  pairs 10-90 %   schedule")
    for name, *shape in CASES:
        cfg = _cfg(*shape)
        sched = {"word": target_defaults(spec)[0], "amx": AMX_X86, "amxs": AMXS_X86}.get(a.schedule)
        if sched is None or not sched.fits(cfg):
            sched = default_schedule(spec, cfg)
        lay = build_layer(cfg, spec, schedule=sched)
        args = [tvm.runtime.tensor(x, dev) for x in input_arrays(lay.args)]
        f = lay.executable.mod.time_evaluator("main", dev, number=20, repeat=1, min_repeat_ms=10)
        got: dict[int, list[float]] = {1: [], a.threads: []}
        for j in range(a.repeat):
            for th in ((1, a.threads) if j % 2 == 0 else (a.threads, 1)):
                # as `LocalRunner` sets threads: TVM runs a parallel loop inline only where TVM_NUM_THREADS
                # (read at each launch) is 1; a 1-thread pool alone hands every launch off
                os.environ["TVM_NUM_THREADS"] = str(th)
                pool(1, th)
                f(*args)
                got[th].append(at_stack_depth(j % STACK_DEPTHS, lambda: f(*args)).results[0])
        one, many = np.array(got[1]), np.array(got[a.threads])
        r = one / many
        print(f"{name:22s} {np.median(one) * 1e3:8.3f} {np.median(many) * 1e3:8.3f} {np.median(r):8.2f}x  "
              f"{np.quantile(r, 0.1):.2f}-{np.quantile(r, 0.9):.2f}      {sched.fingerprint()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
