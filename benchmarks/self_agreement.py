"""Does the device agree with itself? Two independent measurements of the same random subnets, per timing
protocol, with and without a competing process.

    python benchmarks/self_agreement.py [--spaces small16 small imagenet@64] [--subnets 20] [--threads 1]
                                        [--chunks 5] [--competitor off on]

Every subnet is compiled once; then two campaigns (A, then B) time every subnet in turn. Within a campaign
each subnet gets `chunks` short bursts, each burst timing the fixed reference kernel of the protocol
(`nasbnn_hw.profiling.timing.REFERENCE_LAYER`) right before the subnet. From the same samples every protocol's
estimate is computed, so they are compared on equal data:

- `median`: the median of the subnet's samples (the previous protocol);
- `min`: the fastest sample;
- `reference`: each burst's subnet median divided by the reference median of that burst, the median of
  those ratios times the device's reference time: the machine's current speed factors out.

Scores of B against A: Kendall tau, the share within +-10 %, the median deviation. `--competitor on` runs a
second process that keeps one core busy half of the time (0.5-2 s bursts at random) during both campaigns.
Each (space, competitor) case runs in its own process. Prints a table, then a JSON line.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import subprocess
import sys
import time


def _burn(stop, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.5, 2.0)
        x = 0
        while time.perf_counter() < end:
            x += 1
        stop.wait(rng.uniform(0.5, 2.0))


def _space(spec: str):
    from nasbnn_hw.core.space import get_space
    name, _, res = spec.partition("@")
    sp = get_space(name)
    return sp.with_resolution(int(res)) if res else sp


def worker(space_spec: str, n: int, threads: int, chunks: int, competitor: bool, repeat: int,
           raw_dir: str | None = None, references: tuple[str, ...] = ("layer",)) -> dict:
    import tempfile
    from pathlib import Path

    from cost_models.metrics import kendall_tau, within
    from nasbnn_hw.deploy.tvm_net import compile_random_subnet
    from nasbnn_hw.profiling.profiler import random_subnets
    from nasbnn_hw.profiling.runners.local import LocalRunner
    from nasbnn_hw.profiling.timing import ESTIMATORS, Protocol, estimate, reference_library
    space = _space(space_spec)
    archs = random_subnets(space, n, seed=11)
    runner = LocalRunner(threads=threads)
    proto = Protocol(bursts=chunks, repeat=repeat)
    with tempfile.TemporaryDirectory() as d:
        refs = {}
        if "layer" in references:
            refs["layer"] = reference_library(Path(d), "local")
        if "subnet" in references:  # a fixed subnet of the same space: the items' own working set
            net = compile_random_subnet(random_subnets(space, 1, seed=9973)[0], space, "local", seed=99)
            refs["subnet"] = (net.export(Path(d) / "reference-subnet.so"), net.arg_specs())
        libs = []
        for i, a in enumerate(archs):
            net = compile_random_subnet(a, space, "local", seed=i)
            libs.append((net.export(Path(d) / f"s{i}.so"), net.arg_specs()))
        stop = mp.Event()
        burner = mp.Process(target=_burn, args=(stop, 5), daemon=True) if competitor else None
        if burner:
            burner.start()
        try:
            baselines = {k: proto.calibrate_reference(runner, r) for k, r in refs.items()}
            campaigns = {k: [] for k in refs}
            for _ in range(2):  # campaign A with every reference, then B with every reference
                for k, r in refs.items():
                    campaigns[k].append([proto.measure(runner, lib, args, r) for lib, args in libs])
        finally:
            if burner:
                stop.set()
                burner.join()
    out = {"space": space_spec, "competitor": competitor, "threads": threads, "protocols": {}}
    for k in refs:
        for name in ESTIMATORS:
            if k != "layer" and name in ("median", "min"):
                continue  # the same raw statistics as with the layer reference
            a, b = ([estimate(m, name, baselines[k]) for m in c] for c in campaigns[k])
            dev = sorted(abs(y / x - 1) for x, y in zip(a, b))
            label = name if k == "layer" or name in ("median", "min") else f"{name}/{k}"
            out["protocols"][label] = {"kendall_tau": kendall_tau(a, b), "acc10": within(a, b, 0.10),
                                       "median_dev": dev[len(dev) // 2], "worst_dev": dev[-1],
                                       "range_ms": [min(a) * 1e3, max(a) * 1e3]}
    out["reference_drift"] = {k: [max(m.reference_s) / min(m.reference_s) for c in cs for m in c]
                              for k, cs in campaigns.items()}
    if raw_dir:
        from dataclasses import asdict
        Path(raw_dir).mkdir(parents=True, exist_ok=True)
        (Path(raw_dir) / f"{space_spec}-{'on' if competitor else 'off'}.json").write_text(json.dumps(
            {"baselines": baselines, "campaigns": {k: [[asdict(m) for m in c] for c in cs]
                                                   for k, cs in campaigns.items()}}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", nargs="+", default=["small16", "small", "imagenet@64"])
    ap.add_argument("--subnets", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=5, help="bursts per item")
    ap.add_argument("--repeat", type=int, default=5, help="samples per burst")
    ap.add_argument("--competitor", nargs="+", choices=["off", "on"], default=["off", "on"])
    ap.add_argument("--reference", nargs="+", choices=["layer", "subnet"], default=["layer"],
                    help="the reference timed beside each item: the fixed reference layer of the protocol, "
                         "and/or a fixed subnet of the same space (its working set matches the items')")
    ap.add_argument("--raw", metavar="DIR", help="also write every campaign's raw samples there (JSON)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.subnets, a.threads, a.chunks, a.worker[1] == "on", a.repeat,
                                a.raw, tuple(a.reference))))
        return 0
    results = []
    print("| space | competitor | protocol | Kendall tau | within ±10 % | median dev | worst dev | range ms |")
    print("|---|---|---|---|---|---|---|---|")
    for sp in a.spaces:
        for comp in a.competitor:
            p = subprocess.run([sys.executable, __file__, "--worker", sp, comp, "--subnets", str(a.subnets),
                                "--threads", str(a.threads), "--chunks", str(a.chunks), "--repeat", str(a.repeat),
                                "--reference", *a.reference]
                               + (["--raw", a.raw] if a.raw else []),
                               capture_output=True, text=True)
            if p.returncode:
                sys.stderr.write(p.stderr)
                return p.returncode
            r = json.loads(p.stdout.strip().splitlines()[-1])
            results.append(r)
            for name, m in r["protocols"].items():
                print(f"| {sp} | {comp} | {name} | {m['kendall_tau']:.3f} | {100 * m['acc10']:.0f} % | "
                      f"{100 * m['median_dev']:.1f} % | {100 * m['worst_dev']:.1f} % | "
                      f"{m['range_ms'][0]:.3f}-{m['range_ms'][1]:.3f} |", flush=True)
    print(json.dumps({"self_agreement": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
