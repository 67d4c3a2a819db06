"""Binary conv (TVM, bit-packed XOR + popcount) against PyTorch fp32 conv2d on this CPU.

    python benchmarks/binary_conv.py [--threads 1 2] [--repeat 30]

Each (engine, thread count) runs in its own process (TVM's thread pool and torch's intra-op pool are both
sized at start-up, and torch slows down in a process where TVM's pool has run). The binary time includes
binarising + bit-packing the float input (the whole kernel a layer runs); torch is `F.conv2d` alone.
Printed: median ms, torch / binary ratio, and binary multiply-accumulates per second per core.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = [  # (name, c_in, c_out, kernel, groups, resolution)
    ("256->256 14x14 3x3", 256, 256, 3, 1, 14),
    ("128->128 28x28 3x3", 128, 128, 3, 1, 28),
    ("512->512 7x7 1x1", 512, 512, 1, 1, 7),
    ("384->384 14x14 5x5 g4", 384, 384, 5, 4, 14),
    ("192->384 14x14 1x1", 192, 384, 1, 1, 14),   # beside tuned_layers.py's whole layer: the epilogue's share
]


# Holds PyTorch's CPU kernels to AVX2: ATen's own, oneDNN's, and MKL's. 1x1 convolutions run as MKL GEMMs,
# which ONEDNN_MAX_CPU_ISA does not reach (on an AVX-512 Xeon they ran 1.5x faster than the AVX2 build).
TORCH_AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
TORCH_ISAS = ("auto", "native", "avx2")


def torch_env(mcpu: str | None, isa: str = "auto") -> dict:
    """Extra environment for a process that times PyTorch: `avx2` holds it to AVX2 (`TORCH_AVX2_ENV`),
    `native` leaves it to this CPU, `auto` holds it to AVX2 when the TVM kernels are compiled for an `mcpu`
    without AVX-512 (the same instruction set on both sides of a ratio)."""
    if isa == "auto":
        if not mcpu:
            return {}
        from nasbnn_hw.deploy.kernels import resolve_target
        from nasbnn_hw.deploy.kernels.schedule import has_feature
        isa = "native" if has_feature(resolve_target({"kind": "llvm", "mcpu": mcpu}), "avx512f") else "avx2"
    if isa not in ("native", "avx2"):
        raise ValueError(f"torch ISA {isa!r}: expected one of {', '.join(TORCH_ISAS)}")
    return dict(TORCH_AVX2_ENV) if isa == "avx2" else {}


def _macs(c_in, c_out, k, g, r):
    return r * r * c_out * (c_in // g) * k * k


def worker_tvm(repeat: int) -> dict:
    import numpy as np
    import tvm

    from nasbnn_hw.core.layers import LayerConfig
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.deploy.kernels.layer import build_binary_conv
    from nasbnn_hw.deploy.kernels.schedule import default_schedule
    out = {}
    dev = tvm.cpu(0)
    spec = resolve_target("local")
    for name, ci, co, k, g, r in CASES:   # each layer with its default schedule, as a build of it would take
        sched = default_schedule(spec, LayerConfig("bconv", ci, co, k, g, 1, r))
        lay = build_binary_conv(ci, co, k, g, 1, r, tile=sched.tile())
        tensors = [tvm.runtime.empty(a.shape, a.dtype, dev) if a.is_output else tvm.runtime.tensor(a.data, dev)
                   for a in lay.args]
        f = lay.executable.mod.time_evaluator("main", dev, number=50, repeat=repeat, min_repeat_ms=30)
        lay.executable["main"](*tensors)
        out[name] = float(np.median(f(*tensors).results))
    return out


def worker_torch(repeat: int, threads: int, cases=CASES) -> dict:
    """torch `F.conv2d` alone on each (name, c_in, c_out, kernel, groups, resolution): median seconds."""
    import time

    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    out = {}
    with torch.no_grad():
        for name, ci, co, k, g, r in cases:
            x, w = torch.randn(1, ci, r, r), torch.randn(co, ci // g, k, k)
            for _ in range(20):
                F.conv2d(x, w, padding=k // 2, groups=g)
            n = 20
            samples = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                for _ in range(n):
                    F.conv2d(x, w, padding=k // 2, groups=g)
                samples.append((time.perf_counter() - t0) / n)
            samples.sort()
            out[name] = samples[len(samples) // 2]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--worker", choices=("tvm", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        t = args.threads[0]
        res = worker_tvm(args.repeat) if args.worker == "tvm" else worker_torch(args.repeat, t)
        print(json.dumps(res))
        return 0
    for t in args.threads:
        env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
        res = {}
        for engine in ("tvm", "torch"):
            r = subprocess.run([sys.executable, __file__, "--worker", engine, "--threads", str(t), "--repeat",
                                str(args.repeat)], env=env, capture_output=True, text=True, check=True)
            res[engine] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"\n{t} thread(s)")
        print(f"{'layer':26s} {'binary ms':>10s} {'torch ms':>10s} {'ratio':>7s} {'G bMAC/s/core':>14s}")
        for name, ci, co, k, g, r in CASES:
            b, f = res["tvm"][name], res["torch"][name]
            print(f"{name:26s} {b * 1e3:10.4f} {f * 1e3:10.4f} {f / b:6.1f}x {_macs(ci, co, k, g, r) / b / t / 1e9:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
