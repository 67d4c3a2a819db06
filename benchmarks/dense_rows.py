"""Dense kernel rows against one word per tap: the binary conv alone (sign + pack + XOR/popcount, int32 out),
word schedule and its dense-row variant, per layer shape.

    python benchmarks/dense_rows.py [--mcpu haswell] [--threads 1] [--samples 24]

Layers whose groups leave spare bits in their last word (48 or 96 channels per group, 16 or 32) read fewer
words per kernel row when the row's taps are packed back to back (`binary.dense_windows`). For each shape both
kernels are built with the target's word tile (`strategy` word and dense), checked to give the same output,
then timed sample by sample in alternation in this process, each sample (at least 5 ms of calls) at the next
of the runner's call depths; printed: medians in us, word / dense (> 1: dense faster), and the words per
output the two read.
`--mcpu haswell` builds the AVX2 code (runs on an AVX-512 CPU too). Then a JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

CASES = [  # (c_in, c_out, kernel, groups, stride, resolution)
    (96, 96, 5, 2, 1, 28),      # 48 per group (benchmarks/tuned_layers.py)
    (768, 768, 3, 8, 1, 7),     # 96 per group (benchmarks/tuned_layers.py)
    (384, 384, 5, 4, 1, 14),    # 96 per group, 5x5
    (96, 96, 5, 2, 2, 28),      # stride 2
    (64, 64, 3, 2, 1, 28),      # 32 per group
    (16, 16, 3, 1, 1, 8),       # small16's narrowest layer
    (32, 32, 3, 1, 1, 16),
    (48, 48, 5, 1, 1, 16),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mcpu", help="compile for this LLVM CPU (e.g. haswell: the AVX2 kernels)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=24, help="samples per kernel (each >= 5 ms of calls)")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    import numpy as np
    import tvm
    tvm.get_global_func("runtime.config_threadpool")(1, a.threads)   # as LocalRunner sizes the pool

    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.deploy.kernels.binary import dense_words, words_per_group
    from nasbnn_hw.deploy.kernels.layer import build_binary_conv
    from nasbnn_hw.deploy.kernels.schedule import target_defaults
    from nasbnn_hw.profiling.runners.local import STACK_DEPTHS, at_stack_depth
    target = {"kind": "llvm", "mcpu": a.mcpu} if a.mcpu else "local"
    word = target_defaults(resolve_target(target))[0]
    print(f"target {a.mcpu or 'this CPU'}, word tile {word.fingerprint()}, {a.threads} thread(s), medians of "
          f"{a.samples} interleaved samples")
    print(f"{'layer':<26}{'words':>8}{'word us':>10}{'dense us':>10}{'word/dense':>12}")
    rows = []
    dev = tvm.cpu(0)
    for ci, co, k, g, st, res in CASES:
        name = f"{ci}->{co} {res}x{res} {k}x{k}" + (f" g{g}" if g > 1 else "") + (f" s{st}" if st > 1 else "")
        fns, outs = {}, {}
        for strategy in ("word", "dense"):
            lay = build_binary_conv(ci, co, k, g, st, res, target=target, tile={**word.tile(), "strategy": strategy})
            ts = [tvm.runtime.empty(x.shape, x.dtype, dev) if x.is_output else tvm.runtime.tensor(x.data, dev)
                  for x in lay.args]
            lay.executable["main"](*ts)
            outs[strategy] = ts[-1].numpy()
            fns[strategy] = (lay.executable.mod.time_evaluator("main", dev, number=10, repeat=1, min_repeat_ms=5), ts)
        if not np.array_equal(outs["word"], outs["dense"]):
            print(f"{name}: the dense kernel's output differs from the word kernel's", file=sys.stderr)
            return 1
        times = {s: [] for s in fns}
        for j in range(a.samples):  # interleaved, each sample at the next call depth (stack page offsets, as
            for s, (ev, ts) in fns.items():   # the profiler and benchmarks/tuned_layers.py spread them)
                times[s].append(at_stack_depth(j % STACK_DEPTHS, lambda: ev(*ts)).results[0] * 1e6)
        med = {s: statistics.median(v) for s, v in times.items()}
        cg = ci // g
        words = f"{k * k * words_per_group(cg)}/{k * dense_words(cg, k)}"
        rows.append({"layer": name, "words_per_output": words, "word_us": med["word"], "dense_us": med["dense"],
                     "ratio": med["word"] / med["dense"]})
        print(f"{name:<26}{words:>8}{med['word']:>10.2f}{med['dense']:>10.2f}{med['word'] / med['dense']:>11.2f}x",
              flush=True)
    print(json.dumps({"dense_rows": {"mcpu": a.mcpu, "threads": a.threads, "rows": rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
