"""Whole-subnet latency: TVM binary kernels vs onnxruntime fp32 vs PyTorch eager, batch 1.

    python benchmarks/subnet_latency.py [--spaces imagenet small] [--random 5] [--threads 1] [--repeat 10]

Subnets: largest, smallest and N uniform random ones of each space (seeded), weights from a randomly
initialised supernet (latency does not depend on the values). Each engine runs in its own process.
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


def worker(engine: str, space_name: str, n_random: int, repeat: int, threads: int) -> dict:
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
        else:
            import tvm

            from nasbnn_hw.deploy.tvm_net import compile_subnet
            t0 = time.perf_counter()
            net = compile_subnet(model)
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
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "SPACE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.random, args.repeat, args.threads[0])))
        return 0
    for t in args.threads:
        env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
        for sp in args.spaces:
            res = {}
            for engine in ("tvm", "ort", "torch"):
                r = subprocess.run([sys.executable, __file__, "--worker", engine, sp, "--random", str(args.random),
                                    "--threads", str(t), "--repeat", str(args.repeat)], env=env,
                                   capture_output=True, text=True)
                if r.returncode:
                    print(r.stderr[-3000:], file=sys.stderr)
                    return 1
                res[engine] = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"\nspace {sp}, {t} thread(s), batch 1 (median ms)")
            print(f"{'subnet':9s} {'TVM bin':>9s} {'ORT fp32':>9s} {'torch':>9s} {'ORT/TVM':>8s} {'torch/TVM':>9s} "
                  f"{'rel err':>8s} {'compile s':>9s}  arch")
            for name, v in res["tvm"].items():
                b, o, e = v["s"], res["ort"][name]["s"], res["torch"][name]["s"]
                print(f"{name:9s} {b * 1e3:9.3f} {o * 1e3:9.3f} {e * 1e3:9.3f} {o / b:7.1f}x {e / b:8.1f}x "
                      f"{v['rel_err']:8.1e} {v['compile_s']:9.1f}  {v['arch']}")
            for name, v in res["tvm"].items():
                if "why" in v:
                    print(f"  {name}: {v['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
