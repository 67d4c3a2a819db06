"""Every binary layer of an imagenet subnet, the legacy tile against the AMX schedule, whole layers.

    python benchmarks/amx_layers.py [--subnet largest|smallest | --layer IN,OUT,K,GROUPS,STRIDE,RES ...] [--repeat 5]

Needs a CPU with AMX-INT8 (the `local` target names it). Each distinct layer of the subnet at 224 is
(or each `--layer`) built with each schedule (legacy, amx, and amxs where it builds) and timed interleaved (`--repeat` samples of at least 5 ms each, medians), in this
process, at the thread count TVM_NUM_THREADS gives (set it to 1 for per-core figures). Printed per layer:
the times, legacy / amx and legacy / amxs, output pixels, the AMX int8 weights' size, the tile loop's order
(pixel- or channel-major, `amx.AMX_CHANNEL_MAJOR_WEIGHTS`) and the default's strategy for the layer
(`schedule.default_schedule`; "word" for the legacy tile); last, the sums over the subnet's layers.
Add the CPU model (`lscpu`) to any figure you quote.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subnet", choices=("largest", "smallest"), default="smallest")
    ap.add_argument("--layer", action="append", default=[], metavar="IN,OUT,K,GROUPS,STRIDE,RES",
                    help="time these binary layers instead of a subnet's (repeatable), e.g. 256,256,3,1,1,14")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    from nasbnn_hw.deploy.kernels.layer import LayerConfig
    given = []
    for spec in a.layer:
        try:
            i, o, k, g, st, r = (int(v) for v in spec.split(","))
            given.append(LayerConfig("bconv", i, o, k, g, st, r))
        except ValueError:
            ap.error(f"--layer {spec!r}: expected six integers IN,OUT,K,GROUPS,STRIDE,RES")
    import tvm

    from nasbnn_hw.core.sampling import largest, smallest
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.deploy.kernels.amx import AMX_CHANNEL_MAJOR_WEIGHTS, amx_weight_bytes
    from nasbnn_hw.deploy.kernels.layer import build_layer
    from nasbnn_hw.deploy.kernels.schedule import AMX_X86, AMXS_X86, LEGACY_X86, default_schedule, has_feature
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    from nasbnn_hw.deploy.tvm_net import subnet_layers
    from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet
    if not has_feature(resolve_target("local"), "amx-int8"):
        print("this CPU has no AMX-INT8: nothing to compare", file=sys.stderr)
        return 2
    space = get_space("imagenet")
    if given:
        layers, title = given, "given layers"
    else:
        arch = (largest if a.subnet == "largest" else smallest)(space)
        layers = subnet_layers(extract_subnet(SuperBNN(space).eval(), arch).eval())
        title = f"imagenet {a.subnet} subnet at {space.resolution}"
    dev = tvm.cpu(0)

    def timer(lay):
        t = [tvm.runtime.empty(x.shape, x.dtype, dev) if x.is_output else tvm.runtime.tensor(x.data, dev)
             for x in lay.args]
        lay.executable["main"](*t)
        f = lay.executable.mod.time_evaluator("main", dev, number=10, repeat=1, min_repeat_ms=5)
        return lambda: f(*t).results[0]

    spec = resolve_target("local")
    seen, total = {}, {"legacy": 0.0, "amx": 0.0, "default": 0.0}
    print(f"{title}: legacy tile against AMX, whole layers (ms)")
    print(f"{'layer':38s} {'legacy':>8s} {'amx':>8s} {'amxs':>8s} {'leg/amx':>8s} {'leg/amxs':>8s} {'out px':>7s} "
          f"{'wts MB':>7s} order    default")
    for cfg in layers:
        if cfg.kind != "bconv" or not AMX_X86.fits(cfg):
            continue
        if cfg.key() not in seen:
            scheds = [LEGACY_X86, AMX_X86] + ([AMXS_X86] if AMXS_X86.fits(cfg) else [])
            fns = [timer(build_layer(cfg, "local", schedule=s)) for s in scheds]
            samples = [[] for _ in fns]
            for _ in range(a.repeat):
                for i, f in enumerate(fns):
                    samples[i].append(f())
            t = {s.strategy: statistics.median(v) * 1e3 for s, v in zip(scheds, samples)}
            d = default_schedule(spec, cfg).strategy
            t["default"] = t.get(d, t["word"])
            seen[cfg.key()] = t
            out = ((cfg.resolution + 2 * (cfg.kernel // 2) - cfg.kernel) // cfg.stride + 1) ** 2
            order = "channel" if amx_weight_bytes(cfg) > AMX_CHANNEL_MAJOR_WEIGHTS else "pixel"
            s_ms, s_x = (f"{t['amxs']:8.4f}", f"{t['word'] / t['amxs']:7.2f}x") if "amxs" in t else ("-", "-")
            print(f"{cfg.key():38s} {t['word']:8.4f} {t['amx']:8.4f} {s_ms:>8s} {t['word'] / t['amx']:7.2f}x "
                  f"{s_x:>8s} {out:7d} {amx_weight_bytes(cfg) / 1e6:7.2f} {order:8s} {d if d in t else 'word'}",
                  flush=True)
        t = seen[cfg.key()]
        total = {"legacy": total["legacy"] + t["word"], "amx": total["amx"] + t["amx"],
                 "default": total["default"] + t["default"]}
    print(f"sum over the layers AMX builds: legacy {total['legacy']:.3f} ms, AMX {total['amx']:.3f} ms, "
          f"the default's choice {total['default']:.3f} ms (legacy / default {total['legacy'] / total['default']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
