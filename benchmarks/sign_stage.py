"""The byte sign stage (one compare + `vmovmskps` per 8 channels) against the 64-bit sign loop it replaced.

    python benchmarks/sign_stage.py [--mcpu haswell] [--schedule LEGACY_X86] [--rounds 15]

Whole binary layers (the six of `benchmarks/tuned_layers.py`), each built twice for the same target and
schedule: as every x86 target with AVX builds it now (`binary.sign_bytes`) and with the 64-bit sign loop
(`schedule.sign8_applies` forced off: the kernel before), the two interleaved call by call in one process,
1 thread unless `TVM_NUM_THREADS` says otherwise; outputs checked equal. Prints medians and old / new per
layer. `--schedule` names a `schedule` constant (default: the target's default per layer; on an AMX CPU the
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
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    import numpy as np
    import tvm

    from nasbnn_hw.core.layers import LayerConfig
    from nasbnn_hw.deploy.kernels import schedule as S
    from nasbnn_hw.deploy.kernels.layer import build_layer
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    target = {"kind": "llvm", "mcpu": a.mcpu} if a.mcpu else "local"
    sched = getattr(S, a.schedule, None) if a.schedule else None
    if a.schedule and not isinstance(sched, S.CpuSchedule):
        sys.exit(f"error: --schedule {a.schedule!r} is not a schedule constant of nasbnn_hw.deploy.kernels.schedule")
    if not S.sign8_applies(resolve_target(target)):
        sys.exit(f"error: target {target} has no AVX: it builds the 64-bit sign loop only")
    dev = tvm.cpu(0)

    def ready(lay):
        return lay.executable["main"], [tvm.runtime.tensor(x.data, dev) if not x.is_output
                                        else tvm.runtime.empty(x.shape, x.dtype, dev) for x in lay.args]

    print(f"target {target}, schedule {a.schedule or 'default'}, {os.environ['TVM_NUM_THREADS']} thread(s)")
    print("| layer | 64-bit loop us | byte stage us | old / new |\n|---|---|---|---|")
    for name, ci, co, k, g, r in CASES:
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
        for _ in range(a.rounds):
            for i, (f, args) in enumerate((old, new)):
                f(*args)
                t = time.perf_counter()
                for _ in range(n):
                    f(*args)
                times[i].append((time.perf_counter() - t) / n * 1e6)
        if not np.array_equal(old[1][-1].numpy(), new[1][-1].numpy()):
            sys.exit(f"error: {name}: the two sign stages computed different outputs")
        o, w = (float(np.median(t)) for t in times)
        print(f"| {name} | {o:.1f} | {w:.1f} | {o / w:.3f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
