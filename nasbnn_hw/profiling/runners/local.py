"""LocalRunner: load the kernel library into this process and time it with TVM's time_evaluator."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Sequence

from nasbnn_hw.utils import WorkDir
from nasbnn_hw.profiling.runners.base import ArgSpec, ClosingRunner, Timing
from nasbnn_hw.profiling.runners.errors import KernelError
from nasbnn_hw.profiling.runners.inputs import DEFAULT_SEED, input_arrays


# How many call depths `time_interleaved` can spread an item's samples over (`stack_depths`). A kernel keeps
# its small buffers and spilled registers on the stack, whose offset within a page the OS randomises per
# process; at some offsets against the heap data a kernel ran 15-50 % slower (about 1 in 8 of them; AVX2 builds,
# docs/measurements.md), so one process's latency of an item was not another's.
STACK_DEPTHS = 8


def at_stack_depth(depth: int, fn):
    """`fn()` called `depth` levels deeper on the C stack (each level is a builtin calling back into Python,
    a few hundred bytes of C frames), so that the kernel it runs keeps its stack data at another offset."""
    if depth <= 0:
        return fn()
    return next(map(lambda _: at_stack_depth(depth - 1, fn), (0,)))


class LocalRunner(ClosingRunner):
    """Times kernels on this machine's CPU. `threads` > 0 sizes TVM's thread pool (process-wide).
    `stack_depths`: the call depths `time_interleaved` may be asked to time at (`at_stack_depth`)."""

    def __init__(self, device: str = "local", *, threads: int = 0, seed: int = DEFAULT_SEED,
                 stack_depths: int = STACK_DEPTHS):
        self.device = device
        self.threads = threads
        self.seed = seed
        self.stack_depths = stack_depths
        self._threads_set = False
        self._copies: WorkDir | None = None
        self._modules: dict[str, object] = {}

    def _load(self, tvm, lib_path: Path):
        """Load through a copy named by content: the dynamic loader caches libraries by path, so a new
        library written to a path loaded before would otherwise silently run the old code."""
        digest = hashlib.sha256(lib_path.read_bytes()).hexdigest()[:24]
        if digest not in self._modules:
            if self._copies is None:
                self._copies = WorkDir("nasbnn-local-")
            copy = Path(self._copies.name) / f"{digest}.so"
            shutil.copyfile(lib_path, copy)
            self._modules[digest] = tvm.runtime.load_module(str(copy))
        return self._modules[digest]

    @classmethod
    def from_profile(cls, profile, **kw) -> "LocalRunner":
        return cls(profile.name, threads=profile.threads, **kw)

    def _configure_threads(self, tvm) -> None:
        if self.threads > 0 and not self._threads_set:
            # TVM runs a parallel loop inline only when its concurrency (TVM_NUM_THREADS, read at each
            # launch) is 1; config_threadpool alone keeps a 1-thread pool whose every launch costs a
            # hand-off (measured 8-10 us on a 2-vCPU VM). Both are process-wide.
            os.environ["TVM_NUM_THREADS"] = str(self.threads)
            # mode 1 = "big cores" in TVM's affinity modes: every core on a homogeneous CPU
            tvm.get_global_func("runtime.config_threadpool")(1, self.threads)
            self._threads_set = True

    def _prepared(self, tvm, lib_path: Path, args: Sequence[ArgSpec], warmup: int):
        """(library, tensors) for `lib_path`, loaded, with its inputs made and `warmup` calls done."""
        self._configure_threads(tvm)
        try:
            lib = self._load(tvm, Path(lib_path))
            fn = lib["main"]
        except Exception as e:  # noqa: BLE001 - TVM raises several FFI error types
            raise KernelError(f"cannot load kernel library {lib_path}: {e}") from e
        tensors = [tvm.runtime.tensor(a, tvm.cpu(0)) for a in input_arrays(args, self.seed)]
        try:
            for _ in range(warmup):
                fn(*tensors)
        except Exception as e:  # noqa: BLE001
            raise KernelError(f"kernel {lib_path} failed: {e}") from e
        return lib, tensors

    def time_library(self, lib_path: Path, args: Sequence[ArgSpec], *, warmup: int, repeat: int,
                     number: int = 1, return_outputs: bool = False) -> Timing:
        import tvm
        lib, tensors = self._prepared(tvm, lib_path, args, warmup)
        try:
            timer = lib.time_evaluator("main", tvm.cpu(0), number=number, repeat=repeat)
            samples = tuple(float(s) for s in timer(*tensors).results)
        except Exception as e:  # noqa: BLE001
            raise KernelError(f"kernel {lib_path} failed: {e}") from e
        outputs = None
        if return_outputs:
            outputs = tuple(t.numpy() for t, a in zip(tensors, args) if a.is_output)
        return Timing(samples, outputs)

    def time_interleaved(self, items: Sequence[tuple[Path, Sequence[ArgSpec], int]], *, warmup: int,
                         repeat: int, depths: Sequence[int] | None = None) -> list[tuple[float, ...]]:
        """Time several libraries sample by sample: `repeat` rounds, each one sample (the mean of its
        `number` calls) of every item in turn, so that adjacent samples of different items see the same
        state of a machine whose speed changes from one millisecond to the next. `items`: (library,
        arguments, number); `depths`: each item's call depth (`at_stack_depth`, below `stack_depths`; default
        0). Returns each item's samples (seconds per call)."""
        import tvm
        depths = list(depths) if depths is not None else [0] * len(items)
        if len(depths) != len(items) or not all(0 <= d < max(1, self.stack_depths) for d in depths):
            raise ValueError(f"depths {depths}: one per item, each in 0..{max(1, self.stack_depths) - 1}")
        evals = []
        for lib_path, args, number in items:
            lib, tensors = self._prepared(tvm, lib_path, args, warmup)
            evals.append((lib.time_evaluator("main", tvm.cpu(0), number=number, repeat=1), tensors))
        out: list[list[float]] = [[] for _ in items]
        try:
            for _ in range(repeat):
                for (ev, tensors), samples, d in zip(evals, out, depths):
                    samples.append(float(at_stack_depth(d, lambda: ev(*tensors)).results[0]))
        except Exception as e:  # noqa: BLE001
            raise KernelError(f"kernel failed while timing: {e}") from e
        return [tuple(s) for s in out]

    def close(self) -> None:
        self._modules.clear()
        if self._copies is not None:     # loaded libraries stay mapped; only the files go
            self._copies.cleanup()
            self._copies = None
