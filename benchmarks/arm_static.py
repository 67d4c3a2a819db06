"""ARM without a board: the static throughput of the compiled binary-conv inner loops, by llvm-mca.

For each layer shape, each ARM candidate schedule (`schedule.ARM_CANDIDATES`; the target's default first:
the 64-bit word tiles, their dense-row variants, and the byte strategy, whose `cnt` sums stay in 8-bit lanes)
is compiled for aarch64 NEON; the hottest innermost loop of the assembly (the one with the most `cnt` vector
popcounts) goes through `llvm-mca -mcpu=cortex-a72` and `cortex-a76`. Each `cnt v.16b` counts 128 bits, so

    estimated binary MACs per cycle = 128 * (cnt.16b per iteration) * useful / (cycles per iteration, "Block RThroughput")

where `useful` is the share of the counted bits that are binary MACs (`useful_fraction`: a group of 48
channels fills 75 % of a 64-bit word, so the word tiles count 25 % spare bits there; dense kernel rows only
at the end of each row; bytes for the byte strategy)
and per core G binary MAC/s = that x the clock (Raspberry Pi 4, A72: 1.5 GHz; Pi 5, A76: 2.4 GHz). It is a
ceiling: the loop alone, data in L1, no packing or epilogue (nor, for the byte strategy, the widening of the
8-bit sums once per chunk of up to 31 bytes, outside the loop). As a check of the method, the same estimate is
made for this machine's CPU (x86: vector popcounts `vpopcntq`; on AVX2 the word schedule's `vpsadbw` per
256 bits, or the nibble strategy's `vpshufb` per 32 x 4 bits; or scalar `popcnt` per 64) and printed beside the measured whole binary conv (`--measure`).

    python benchmarks/arm_static.py [--shapes all|quick] [--measure]

Needs Debian's `llvm` (llvm-mca) and TVM; no board, no emulator.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

# (C_in, C_out, resolution, kernel, groups): the six layers of the kernel issue, stride 1
SHAPES = {"256->256 14x14 3x3": (256, 256, 14, 3, 1), "128->128 28x28 3x3": (128, 128, 28, 3, 1),
          "512->512 7x7 1x1": (512, 512, 7, 1, 1), "96->96 28x28 5x5 g2": (96, 96, 28, 5, 2),
          "768->768 7x7 3x3 g8": (768, 768, 7, 3, 8), "192->384 14x14 1x1": (192, 384, 14, 1, 1)}
ARM_CPUS = {"cortex-a72": 1.5, "cortex-a76": 2.4}

_LABEL = re.compile(r"^(\.?L\w+):")
_BRANCH = re.compile(r"^\s+(b\.\w+|b|cbnz|cbz|tbnz|tbz|j\w+|loop)\s+.*?(\.?L\w+)\s*$")


def innermost_loops(asm: str) -> list[list[str]]:
    """Bodies of the innermost loops: from a label to the last backward branch to it, containing no other
    such loop."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, l in enumerate(lines) if (m := _LABEL.match(l))}
    loops = []
    for i, line in enumerate(lines):
        m = _BRANCH.match(line)
        if m and m.group(2) in labels and labels[m.group(2)] < i:
            loops.append((labels[m.group(2)], i))
    inner = [(a, b) for a, b in loops if not any(a < a2 and b2 <= b and (a2, b2) != (a, b) for a2, b2 in loops)]
    return [[l for l in lines[a + 1: b + 1] if l.strip() and not l.strip().startswith((".", "//", "#", ";"))]
            for a, b in inner]


def popcount_bits(body: list[str], arch: str) -> int:
    """Bits counted by one iteration of `body`: the popcount instructions times their width."""
    text = "\n".join(body)
    if arch == "aarch64":
        return 128 * len(re.findall(r"\bcnt\s+v\d+\.16b", text)) + 64 * len(re.findall(r"\bcnt\s+v\d+\.8b", text))
    bits = 0
    for m in re.finditer(r"\bvpopcnt[qd]\s+%?([xyz])mm", text):
        bits += {"x": 128, "y": 256, "z": 512}[m.group(1)]
    sad = sum({"x": 128, "y": 256, "z": 512}[m.group(1)]
              for m in re.finditer(r"\bvpsadbw\s+.*?%?([xyz])mm\d+\s*$", text, re.M))
    bits += sad
    if not sad:  # the nibble strategy: each vpshufb looks up one 4-bit nibble per byte lane
        bits += sum({"x": 64, "y": 128, "z": 256}[m.group(1)]
                    for m in re.finditer(r"\bvpshufb\s+.*?%?([xyz])mm\d+\s*$", text, re.M))
    bits += 64 * len(re.findall(r"\bpopcnt[qa-z]*\s", text))
    return bits


def useful_fraction(strategy: str, c_in: int, groups: int, kernel: int) -> float:
    """Share of the popcounted bits that are binary MACs: the rest are spare bits of a group's last word (or
    byte), which XOR to 0. Dense rows leave spare bits only at the end of a kernel row."""
    from nasbnn_hw.deploy.kernels.binary import WORD_BITS, dense_words, words_per_group
    cg = c_in // groups
    if strategy == "dense":
        return kernel * cg / (WORD_BITS * dense_words(cg, kernel))
    if strategy in ("byte", "nibble", "pairs"):
        return cg / (8 * -(-cg // 8))
    return cg / (WORD_BITS * words_per_group(cg))


def mca_cycles(body: list[str], triple: str, cpu: str) -> float:
    """llvm-mca's Block RThroughput (cycles per iteration) of the loop body."""
    att = [] if triple.startswith("aarch64") else [".att_syntax"]
    r = subprocess.run(["llvm-mca", f"-mtriple={triple}", f"-mcpu={cpu}", "-iterations=200"],
                       input="\n".join(att + body) + "\n", capture_output=True, text=True)
    m = re.search(r"Block RThroughput:\s*([\d.]+)", r.stdout)
    if r.returncode or not m:
        raise RuntimeError(f"llvm-mca failed: {r.stderr.strip()[-300:]}")
    return float(m.group(1))


def hot_loop(ex, arch: str) -> list[str]:
    asm = ex.mod.inspect_source("asm")
    loops = [b for b in innermost_loops(asm) if popcount_bits(b, arch)]
    if not loops:
        raise RuntimeError("no popcount loop found in the assembly")
    return max(loops, key=lambda b: popcount_bits(b, arch))


def build(shape, target, schedule=None):
    from nasbnn_hw.deploy.kernels.layer import build_binary_conv
    c_in, c_out, res, k, g = shape
    return build_binary_conv(c_in, c_out, k, g, 1, res, target=target, tile=schedule and schedule.tile())


def host_cpu() -> tuple[str, str, float]:
    """(llvm cpu name, lscpu model, GHz) of this machine."""
    import platform
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "?")
    r = subprocess.run(["llc", "--version"], capture_output=True, text=True).stdout
    cpu = next((l.split(":", 1)[1].strip() for l in r.splitlines() if "Host CPU" in l), "native")
    mhz = [float(l.split(":")[1]) for l in open("/proc/cpuinfo") if l.startswith("cpu MHz")]
    return cpu, f"{model} ({platform.machine()})", (sum(mhz) / len(mhz) / 1e3 if mhz else 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", choices=("all", "quick"), default="all")
    ap.add_argument("--measure", action="store_true", help="also time the binary conv on this machine")
    args = ap.parse_args()
    if not shutil.which("llvm-mca"):
        print("llvm-mca not found: apt install llvm", file=sys.stderr)
        return 1
    from nasbnn_hw.core.layers import LayerConfig
    from nasbnn_hw.deploy.kernels.schedule import LEGACY_ARM, candidate_schedules, default_schedule
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    shapes = dict(list(SHAPES.items())[:2]) if args.shapes == "quick" else SHAPES
    cpu, model, ghz = host_cpu()
    arm = resolve_target("aarch64-neon")
    print(f"# aarch64 NEON, llvm-mca (cycles per loop iteration = Block RThroughput); reference: the word tile "
          f"{LEGACY_ARM.fingerprint()} (the ARM default before schedules per strategy)")
    print(f"{'layer':22s} {'schedule':>28s} " + " ".join(f"{c + ' MAC/cyc':>18s}" for c in ARM_CPUS)
          + "   " + " ".join(f"{c + ' G/s':>15s}" for c in ARM_CPUS))
    best = {}
    for name, shape in shapes.items():
        c_in, c_out, res, k, g = shape
        cands = candidate_schedules(arm, LayerConfig("bconv", c_in, c_out, k, g, 1, res))
        rows = []
        for sch in sorted(cands, key=lambda s: s != LEGACY_ARM):
            try:
                body = hot_loop(build(shape, arm, sch).executable, "aarch64")
            except Exception as e:  # noqa: BLE001 - a schedule that does not build or vectorise is skipped
                print(f"{name:22s} {sch.fingerprint():>28s} skipped: {str(e).splitlines()[-1][:80]}")
                continue
            bits = popcount_bits(body, "aarch64") * useful_fraction(sch.strategy, c_in, g, k)
            per = {c: bits / mca_cycles(body, "aarch64", c) for c in ARM_CPUS}
            rows.append((sch, per))
            tag = "default" if sch == cands[0] else ""
            print(f"{name:22s} {sch.fingerprint():>28s} "
                  + " ".join(f"{per[c]:18.1f}" for c in ARM_CPUS) + "   "
                  + " ".join(f"{per[c] * ARM_CPUS[c]:15.1f}" for c in ARM_CPUS) + f"  {tag}")
        if rows:
            top = max(rows, key=lambda r: r[1]["cortex-a72"])
            best[name] = (rows[0], top)
    print(f"\n# best schedule by the A72 estimate against the word tile {LEGACY_ARM.fingerprint()}")
    for name, (ref, top) in best.items():
        print(f"{name:22s} word {ref[1]['cortex-a72']:6.1f} MAC/cycle, best {top[0].fingerprint()} "
              f"{top[1]['cortex-a72']:6.1f} ({top[1]['cortex-a72'] / ref[1]['cortex-a72']:.2f}x); "
              f"A76 {top[1]['cortex-a76'] / ref[1]['cortex-a76']:.2f}x")
    print(f"\n# check of the method on this machine: {model}, llvm cpu {cpu}, {ghz:.2f} GHz")
    host = {"kind": "llvm", "mcpu": cpu}  # the CPU llvm-mca models (Debian's LLVM may name an older one)
    host_spec = resolve_target(host)
    for name, shape in shapes.items():
        c_in, c_out, res, k, g = shape
        lay = build(shape, host, default_schedule(host_spec, LayerConfig("bconv", c_in, c_out, k, g, 1, res)))
        body = hot_loop(lay.executable, "x86_64")
        strategy = default_schedule(host_spec, LayerConfig("bconv", c_in, c_out, k, g, 1, res)).strategy
        est = popcount_bits(body, "x86_64") * useful_fraction(strategy, c_in, g, k) / mca_cycles(body, "x86_64", cpu)
        line = f"{name:22s} estimated {est:6.1f} MAC/cycle = {est * ghz:6.1f} G/s (loop ceiling)"
        if args.measure:
            from nasbnn_hw.profiling.runners.local import LocalRunner
            c_in, c_out, res, k, g = shape
            macs = res * res * c_out * (c_in // g) * k * k
            with LocalRunner(threads=1) as r:
                t = r.time_library(lay.export(f"/tmp/arm_static_{c_in}_{k}.so"), lay.args, warmup=5, repeat=20,
                                   number=10)
            import statistics
            s = statistics.median(t.samples)
            line += f"; measured whole conv {macs / s / 1e9:6.1f} G/s (pack + epilogue included)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
