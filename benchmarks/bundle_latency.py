"""The inference bundle against TVM's own runtime, on this machine: size, latency, agreement.

For each subnet (random weights; speed does not depend on them) of a space:
* bundle size (model.so, params.bin, the runner);
* latency: the bundle's runner (`nasbnn-run --benchmark`, its own process) against the same compiled model
  timed in-process by TVM's `time_evaluator` (a separate Python process with TVM loaded), alternated, each
  the median of its repeats, rounds repeated; the ratio runner / TVM per round and its median;
* agreement with PyTorch (max relative error, same top-1) through the runner here, and under qemu-aarch64
  for an aarch64 build of the same subnet (`--emulated`; numerics only, emulated time is not latency).
Run: `python benchmarks/bundle_latency.py [--space imagenet --res 224 --archs smallest,largest --threads 1]`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TVM_CHILD = r"""
import json, os, sys
import numpy as np, tvm
from nasbnn_hw.deploy.tvm_net import TvmSubnet
net = TvmSubnet.load(sys.argv[1])
warmup, repeat = int(sys.argv[2]), int(sys.argv[3])
dev = tvm.cpu(0)
args = [tvm.runtime.tensor(np.random.default_rng(0).uniform(-1, 1, net.input_shape).astype("float32"), dev)]
args += [tvm.runtime.tensor(p, dev) for p in net.params] + [tvm.runtime.empty(net.output_shape, "float32", dev)]
f = net.executable.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=0)
for _ in range(warmup):
    net.executable["main"](*args)
print(json.dumps({"median": float(np.median(f(*args).results)) * 1e3}))
"""


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def runner_ms(bundle: Path, warmup: int, repeat: int, threads: int) -> float:
    r = subprocess.run([str(bundle / "nasbnn-run"), "--benchmark", "--warmup", str(warmup), "--repeat", str(repeat),
                        "--threads", str(threads)], capture_output=True, text=True, check=True)
    line = next(l for l in r.stdout.splitlines() if l.startswith("latency_ms "))
    return float(dict(kv.split("=") for kv in line.split()[1:])["median"])


def tvm_ms(lib: Path, warmup: int, repeat: int, threads: int) -> float:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", TVM_CHILD, str(lib), str(warmup), str(repeat)], capture_output=True,
                       text=True, check=True, env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])["median"]


def main() -> None:
    import torch

    from device_profiles import load_profile
    from nasbnn_hw.core.arch import Arch
    from nasbnn_hw.core.sampling import largest, smallest
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.deploy.bundle import emulator_for, run_bundle, write_bundle
    from nasbnn_hw.deploy.tvm_net import compile_subnet
    from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="imagenet")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--archs", default="smallest,largest", help="comma list of smallest, largest or arch JSON files")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--emulated", action="store_true", help="also check an aarch64 build under qemu-aarch64")
    args = ap.parse_args()
    space = get_space(args.space)
    if args.res != space.resolution:
        space = space.with_resolution(args.res)
    torch.manual_seed(0)
    sup = SuperBNN(space).eval()
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs; {args.space} at {args.res}x{args.res}, {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.repeat} repeats, runner and TVM alternated, each in its own process")
    print(f"{'subnet':10s} {'bundle MB':>9s} {'model.so':>9s} {'params':>8s} {'runner ms':>10s} {'TVM ms':>8s} "
          f"{'ratio':>6s}  agreement here{' / emulated aarch64' if args.emulated else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.archs.split(","):
            arch = {"smallest": smallest, "largest": largest}[name](space) if name in ("smallest", "largest") \
                else Arch.from_dict(json.loads(Path(name).read_text()))
            model = extract_subnet(sup, arch).eval()
            net = compile_subnet(model, target="local")
            d = Path(tmp) / name.replace("/", "_")
            write_bundle(net, d / "bundle", profile=load_profile("local"))
            net.export(d / "model.so")
            sizes = {f.name: f.stat().st_size for f in (d / "bundle").iterdir()}
            rows = []
            for _ in range(args.rounds):
                a = runner_ms(d / "bundle", 3, args.repeat, args.threads)
                b = tvm_ms(d / "model.so", 3, args.repeat, args.threads)
                rows.append((a, b, a / b))
            x = torch.randn(3, *net.input_shape[1:], generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                ref = model(x).numpy()

            notes = []

            def agree(logits):
                rel = float(np.abs(logits - ref).max() / np.abs(ref).max())
                if rel > 1e-4:   # rounding (a sign at a value within rounding of zero) or a bug: say which
                    from nasbnn_hw.deploy.agreement import explain
                    notes.append(str(explain(model, x, logits)))
                return f"{rel:.1e} {'same top-1' if (logits.argmax(1) == ref.argmax(1)).all() else 'TOP-1 DIFFERS'}"
            here = agree(run_bundle(d / "bundle", list(x.numpy())).logits)
            emu = ""
            if args.emulated and emulator_for("aarch64") is not None:
                prof = load_profile("qemu-aarch64")
                write_bundle(compile_subnet(model, target=prof), d / "arm", profile=prof)
                t = time.time()
                emu = f" / {agree(run_bundle(d / 'arm', list(x.numpy()), exec_wrapper=emulator_for('aarch64')).logits)}" \
                      f" ({time.time() - t:.0f} s emulated)"
            med = [statistics.median(c) for c in zip(*rows)]
            print(f"{name:10s} {sum(sizes.values()) / 1e6:9.2f} {sizes['model.so'] / 1e6:9.2f} "
                  f"{sizes['params.bin'] / 1e6:8.2f} {med[0]:10.3f} {med[1]:8.3f} {med[2]:6.3f}  {here}{emu}")
            for note in dict.fromkeys(notes):
                print(f"  {name}: {note}")


if __name__ == "__main__":
    main()
