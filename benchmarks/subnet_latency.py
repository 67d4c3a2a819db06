"""Whole-subnet latency: TVM binary kernels vs onnxruntime fp32 vs PyTorch eager, batch 1.

    python benchmarks/subnet_latency.py [--spaces imagenet small] [--random 5] [--threads 1] [--repeat 10]
        [--store tuned.db [--tune]] [--legacy] [--word] [--mcpu haswell]

Subnets: largest, smallest and N uniform random ones of each space (seeded), weights from a randomly
initialised supernet (latency does not depend on the values). Each engine runs in its own process.
TVM engines: `TVM` with the target's default kernel schedules; `--legacy` adds `legacy` (the one tile every
CPU had before schedules were chosen per target); `--store` adds `tuned` (the store's tuned schedules for
device `local`; `--tune` first tunes every binary layer of the subnets into it, `nasbnn-hw tune`'s code);
`--word` adds `word` (the target's 64-bit XOR + popcount schedule on every layer: the default before the
nibble and byte strategies). `--mcpu NAME` compiles the TVM engines for that LLVM CPU (`haswell`: the AVX2
kernels on any x86-64 CPU with AVX2); PyTorch is then held to AVX2 too (`--torch-isa`, default auto:
ATen, oneDNN and MKL, `binary_conv.TORCH_AVX2_ENV`), while onnxruntime still picks its kernels from this CPU
(MLAS reads CPUID; no setting holds it to AVX2).
The TVM column also reports the largest relative difference of its logits to PyTorch's, and below the table,
for a difference above 1e-4, whether binary activations at values within rounding of zero explain it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from binary_conv import TORCH_ISAS, torch_env  # noqa: E402 - the same AVX2 environment for PyTorch


def _archs(space, n_random: int):
    from nasbnn_hw.core.sampling import largest, sample_uniform, smallest
    rng = random.Random(1)
    return [("largest", largest(space)), ("smallest", smallest(space))] + [
        (f"random{i}", sample_uniform(space, rng)) for i in range(n_random)]


def _models(space_name: str, n_random: int):
    import torch

    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet
    space = get_space(space_name)
    torch.manual_seed(0)
    sup = SuperBNN(space).eval()
    for name, arch in _archs(space, n_random):
        yield name, arch, extract_subnet(sup, arch).eval(), space


def _median_time(fn, repeat: int, min_s: float = 0.2) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    number = max(1, int(min_s / one / repeat) + 1)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    samples.sort()
    return samples[len(samples) // 2]


def _target(mcpu: str | None):
    return {"kind": "llvm", "mcpu": mcpu} if mcpu else "local"


def _schedules(engine: str, store: str | None, target):
    from nasbnn_hw.deploy.kernels.schedule import default_schedule, legacy_schedule
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    from nasbnn_hw.profiling.tuning import ScheduleBook
    if engine in ("legacy", "word"):
        spec = resolve_target(target)
        s = legacy_schedule(spec) if engine == "legacy" else default_schedule(spec)  # no layer: the word one
        return lambda cfg: s
    return ScheduleBook.load(store, "local", target) if engine == "tuned" else None


def tune(space_name: str, n_random: int, store: str, mcpu: str | None = None) -> None:
    from nasbnn_hw.deploy.tvm_net import subnet_layers
    from nasbnn_hw.profiling.profiler import TimingSettings
    from nasbnn_hw.profiling.store import MeasurementStore
    from nasbnn_hw.profiling.tuning import tune_layers
    layers, space = [], None
    for _, _, model, space in _models(space_name, n_random):
        layers += subnet_layers(model, space.resolution)
    with MeasurementStore(store) as st:
        rep = tune_layers(space, "local", st, target=_target(mcpu), layers=layers, timing=TimingSettings(warmup=3, repeat=10,
                          min_sample_ms=2.0), rounds=3, progress=True)
    print(f"tuning {space_name}: {rep.summary()}", file=sys.stderr)


def worker(engine: str, space_name: str, n_random: int, repeat: int, threads: int, store: str | None = None,
           mcpu: str | None = None) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    out = {}
    for name, arch, model, space in _models(space_name, n_random):
        x = torch.randn(1, space.in_channels, space.resolution, space.resolution,
                        generator=torch.Generator().manual_seed(0))
        if engine == "torch":
            with torch.no_grad():
                out[name] = {"s": _median_time(lambda: model(x), repeat)}
        elif engine == "ort":
            import io

            import onnxruntime as ort
            buf = io.BytesIO()
            with torch.no_grad():
                torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"],
                                  output_names=["logits"])
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
            feed = {"input": x.numpy()}
            out[name] = {"s": _median_time(lambda: sess.run(None, feed), repeat)}
        else:  # a TVM engine: tvm (default schedules), legacy, word, tuned
            import tvm

            from nasbnn_hw.deploy.tvm_net import compile_subnet
            t0 = time.perf_counter()
            net = compile_subnet(model, target=_target(mcpu), schedules=_schedules(engine, store, _target(mcpu)))
            compile_s = time.perf_counter() - t0
            with torch.no_grad():
                ref = model(x).numpy()
            got = net(x.numpy())
            dev = tvm.cpu(0)
            args = [tvm.runtime.tensor(x.numpy(), dev), *(tvm.runtime.tensor(p, dev) for p in net.params),
                    tvm.runtime.empty(net.output_shape, "float32", dev)]
            f = net.executable.mod.time_evaluator("main", dev, number=5, repeat=repeat, min_repeat_ms=100)
            rel = float(np.abs(got - ref).max() / np.abs(ref).max())
            out[name] = {"s": float(np.median(f(*args).results)), "compile_s": compile_s, "rel_err": rel}
            if rel > 1e-4:   # rounding (a sign at a value within rounding of zero) or a bug: say which
                from nasbnn_hw.deploy.agreement import explain
                out[name]["why"] = str(explain(model, x, got))
        out[name]["arch"] = arch.short()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", nargs="+", default=["imagenet", "small"])
    ap.add_argument("--random", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--store", help="measurement store with tuned schedules of device local: adds the `tuned` engine")
    ap.add_argument("--tune", action="store_true", help="with --store: first tune the subnets' layers into it")
    ap.add_argument("--legacy", action="store_true", help="add the `legacy` engine (the pre-per-target tile)")
    ap.add_argument("--word", action="store_true", help="add the `word` engine (64-bit XOR + popcount everywhere)")
    ap.add_argument("--mcpu", help="compile the TVM engines for this LLVM CPU (e.g. haswell: the AVX2 kernels)")
    ap.add_argument("--torch-isa", choices=TORCH_ISAS, default="auto",
                    help="PyTorch's instruction set: auto (AVX2 where --mcpu has no AVX-512), native or avx2")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "SPACE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.worker[0] == "tune":
            tune(args.worker[1], args.random, args.store, args.mcpu)
            return 0
        print(json.dumps(worker(args.worker[0], args.worker[1], args.random, args.repeat, args.threads[0],
                                args.store, args.mcpu)))
        return 0
    tvms = ["tvm"] + (["legacy"] if args.legacy else []) + (["word"] if args.word else []) + (
        ["tuned"] if args.store else [])
    extra = (["--store", args.store] if args.store else []) + (["--mcpu", args.mcpu] if args.mcpu else [])
    torch_extra = torch_env(args.mcpu, args.torch_isa)
    if args.tune and args.store:
        for sp in args.spaces:
            subprocess.run([sys.executable, __file__, "--worker", "tune", sp, "--random", str(args.random), *extra],
                           env=dict(os.environ, TVM_NUM_THREADS="1", OMP_NUM_THREADS="1"), check=True)
    for t in args.threads:
        env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
        for sp in args.spaces:
            res = {}
            for engine in (*tvms, "ort", "torch"):
                r = subprocess.run([sys.executable, __file__, "--worker", engine, sp, "--random", str(args.random),
                                    "--threads", str(t), "--repeat", str(args.repeat), *extra],
                                   env=dict(env, **torch_extra) if engine == "torch" else env,
                                   capture_output=True, text=True)
                if r.returncode:
                    print(r.stderr[-3000:], file=sys.stderr)
                    return 1
                res[engine] = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"\nspace {sp}, {t} thread(s), batch 1 (median ms)")
            heads = "".join(f" {k + ' ms':>10s} {'ORT/' + k:>11s}" for k in tvms[1:])
            print(f"{'subnet':9s} {'TVM bin':>9s} {'ORT fp32':>9s} {'torch':>9s} {'ORT/TVM':>8s} {'torch/TVM':>9s}"
                  f"{heads} {'rel err':>8s} {'compile s':>9s}  arch")
            for name, v in res["tvm"].items():
                b, o, e = v["s"], res["ort"][name]["s"], res["torch"][name]["s"]
                cols = "".join(f" {res[k][name]['s'] * 1e3:10.3f} {o / res[k][name]['s']:10.1f}x" for k in tvms[1:])
                print(f"{name:9s} {b * 1e3:9.3f} {o * 1e3:9.3f} {e * 1e3:9.3f} {o / b:7.1f}x {e / b:8.1f}x"
                      f"{cols} {v['rel_err']:8.1e} {v['compile_s']:9.1f}  {v['arch']}")
            for name, v in res["tvm"].items():
                if "why" in v:
                    print(f"  {name}: {v['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
