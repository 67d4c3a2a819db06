"""Whole binary layers with the legacy, the default and the tuned kernel schedule, against PyTorch fp32.

    python benchmarks/tuned_layers.py [--threads 1] [--rounds 3] [--store tuned.db] [--mcpu haswell]

1. Tunes the six layers below on this machine (`tune_layers`, the code behind `nasbnn-hw tune`) into
   `--store` (a temporary store by default; an existing store's winners are reused: tuning resumes).
2. Then, `--rounds` times, alternating: one process times TVM with the legacy schedule (the one tile every
   CPU had before schedules were chosen per target), the target's word schedule (64-bit XOR + popcount, the
   default before the nibble strategy), its feature-based default and the tuned schedule side by side
   (interleaved samples, the same arguments), one process times torch `F.conv2d` alone.

`--mcpu NAME` compiles for that LLVM CPU instead of this one's: `--mcpu haswell` shows the AVX2 kernels
(no AVX-512) on any x86-64 CPU that has AVX2; torch is then held to AVX2 too (`--torch-isa`, default auto:
ATen, oneDNN and MKL, `binary_conv.TORCH_AVX2_ENV`).

The binary layer is the whole half-block the deployed network runs (sign + bit-pack + XOR/popcount conv +
BN + shortcut + RPReLU, `build_layer`); torch is the fp32 convolution alone. Printed per layer: median ms
of each, torch / binary for both schedules, tuned / default, binary MACs per second per core, and which
schedule won. Add the CPU model (`lscpu`) to any figure you quote.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from binary_conv import TORCH_ISAS, _macs, torch_env, worker_torch  # noqa: E402 - the same torch baseline

CASES = [  # (name, c_in, c_out, kernel, groups, resolution)
    ("256->256 14x14 3x3", 256, 256, 3, 1, 14),
    ("128->128 28x28 3x3", 128, 128, 3, 1, 28),
    ("512->512 7x7 1x1", 512, 512, 1, 1, 7),
    ("96->96 28x28 5x5 g2", 96, 96, 5, 2, 28),
    ("768->768 7x7 3x3 g8", 768, 768, 3, 8, 7),
    ("192->384 14x14 1x1", 192, 384, 1, 1, 14),
]


def _cfg(ci, co, k, g, r):
    from nasbnn_hw.core.layers import LayerConfig
    return LayerConfig("bconv", ci, co, k, g, 1, r)


def _target(mcpu):
    return {"kind": "llvm", "mcpu": mcpu} if mcpu else "local"


def tune(store: str, mcpu=None) -> None:
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.profiling.profiler import TimingSettings
    from nasbnn_hw.profiling.store import MeasurementStore
    from nasbnn_hw.profiling.tuning import tune_layers
    with MeasurementStore(store) as st:
        rep = tune_layers(get_space("imagenet"), "local", st, target=_target(mcpu), layers=[_cfg(*c[1:]) for c in CASES],
                          timing=TimingSettings(warmup=3, repeat=10, min_sample_ms=2.0, bursts=1), rounds=3,
                          progress=True)
    print(f"tuning: {rep.summary()}", file=sys.stderr)


def worker_tvm(store: str, repeat: int, mcpu=None) -> dict:
    import numpy as np
    import tvm

    from nasbnn_hw.deploy.kernels.layer import build_layer
    from nasbnn_hw.deploy.kernels.schedule import default_schedule, legacy_schedule
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    from nasbnn_hw.profiling.runners.local import STACK_DEPTHS, at_stack_depth
    from nasbnn_hw.profiling.tuning import ScheduleBook
    target = _target(mcpu)
    book = ScheduleBook.load(store, "local", target)
    spec = resolve_target(target)
    legacy, word = legacy_schedule(spec), default_schedule(spec)  # without a layer: the word schedule
    dev = tvm.cpu(0)
    out = {}
    for name, *shape in CASES:
        cfg = _cfg(*shape)
        fns = []
        kinds = ("legacy", "word", "default", "tuned")
        for sched in (legacy, word, None, book(cfg)):
            lay = build_layer(cfg, target, schedule=sched)
            t = [tvm.runtime.empty(a.shape, a.dtype, dev) if a.is_output else tvm.runtime.tensor(a.data, dev)
                 for a in lay.args]
            lay.executable["main"](*t)
            fns.append((lay.executable.mod.time_evaluator("main", dev, number=20, repeat=1, min_repeat_ms=10), t))
        samples = [[] for _ in fns]
        for j in range(repeat):  # interleaved: all schedules see the same state of the machine; the samples
            for i, (f, t) in enumerate(fns):   # spread over call depths, as the profiler's (stack page offsets)
                samples[i].append(at_stack_depth(j % STACK_DEPTHS, lambda: f(*t)).results[0])
        out[name] = {**{k: float(np.median(v)) for k, v in zip(kinds, samples)},
                     "schedule": book(cfg).fingerprint(), "default_schedule": default_schedule(spec, cfg).fingerprint()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--store", help="measurement store for the tuned schedules (default: a temporary one)")
    ap.add_argument("--mcpu", help="compile for this LLVM CPU (e.g. haswell: the AVX2 kernels) instead of this one's")
    ap.add_argument("--torch-isa", choices=TORCH_ISAS, default="auto",
                    help="PyTorch's instruction set: auto (AVX2 where --mcpu has no AVX-512), native or avx2")
    ap.add_argument("--worker", choices=("tune", "tvm", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "tune":
        tune(args.store, args.mcpu)
        return 0
    if args.worker:
        res = (worker_tvm(args.store, args.repeat, args.mcpu) if args.worker == "tvm"
               else worker_torch(args.repeat, args.threads, CASES))
        print(json.dumps(res))
        return 0
    tmp = tempfile.TemporaryDirectory()
    store = args.store or str(Path(tmp.name) / "tuned.db")
    env = dict(os.environ, TVM_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))

    mcpu = ["--mcpu", args.mcpu] if args.mcpu else []
    torch_extra = torch_env(args.mcpu, args.torch_isa)

    def run(worker):
        r = subprocess.run([sys.executable, __file__, "--worker", worker, "--threads", str(args.threads),
                            "--repeat", str(args.repeat), "--store", store, *mcpu],
                           env=dict(env, **torch_extra) if worker == "torch" else env, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{worker} worker failed: {(r.stderr.strip() or str(r.returncode)).splitlines()[-1]}")
        return json.loads(r.stdout.strip().splitlines()[-1])
    env1 = dict(env, TVM_NUM_THREADS="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, __file__, "--worker", "tune", "--store", store, *mcpu], env=env1, check=True)
    tvm_runs, torch_runs = [], []
    for rnd in range(args.rounds):
        for w in (("tvm", "torch") if rnd % 2 == 0 else ("torch", "tvm")):
            (tvm_runs if w == "tvm" else torch_runs).append(run(w))
    print(f"\n{args.threads} thread(s), {args.rounds} rounds (medians), schedules tuned at 1 thread, target "
          f"{args.mcpu or 'this CPU'}; torch {'held to AVX2' if torch_extra else 'on this CPU'}")
    print("x torch: torch fp32 conv time / whole binary layer time; G bMAC/s: the tuned layer, per core; "
          "word: the target's 64-bit XOR + popcount schedule")
    print(f"{'layer':22s} {'torch ms':>9s} {'legacy ms':>10s} {'word ms':>8s} {'default ms':>11s} {'tuned ms':>9s} "
          f"{'x legacy':>9s} {'x word':>7s} {'x default':>10s} {'x tuned':>8s} {'word/def':>9s} {'G bMAC/s':>9s}  "
          f"default; tuned schedule")
    for name, *shape in CASES:
        f = statistics.median(r[name] for r in torch_runs)
        lg, w, d, t = (statistics.median(r[name][k] for r in tvm_runs) for k in ("legacy", "word", "default", "tuned"))
        print(f"{name:22s} {f * 1e3:9.3f} {lg * 1e3:10.3f} {w * 1e3:8.3f} {d * 1e3:11.3f} {t * 1e3:9.3f} "
              f"{f / lg:8.1f}x {f / w:6.1f}x {f / d:9.1f}x {f / t:7.1f}x {w / d:8.2f}x "
              f"{_macs(*shape) / t / args.threads / 1e9:9.0f}  {tvm_runs[0][name]['default_schedule']}; "
              f"{tvm_runs[0][name]['schedule']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
