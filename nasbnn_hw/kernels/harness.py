"""Run an exported kernel library without TVM on the target: a small C program (`kernel_harness.c` beside this file)
loads the library, feeds it raw argument files and writes the outputs. Used to check cross-compiled
(aarch64) libraries under `qemu-aarch64` and usable on a board that has only a C compiler's output."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np

from ..runners.base import ArgSpec
from .layer import KernelBuildError

_DL_CODES = {"i": 0, "u": 1, "f": 2}


def include_dirs() -> list[str]:
    import tvm
    import tvm_ffi.libinfo
    dirs = [tvm.libinfo.find_include_path(), tvm_ffi.libinfo.find_include_path(),
            tvm_ffi.libinfo.find_dlpack_include_path()]
    flat = []
    for d in dirs:
        flat.extend(d if isinstance(d, (list, tuple)) else [d])
    return list(dict.fromkeys(flat))


def build_harness(out: str | Path, cc: str = "gcc") -> Path:
    """Compile the harness with `cc` (e.g. aarch64-linux-gnu-gcc) to `out`."""
    path = Path(__file__).resolve().parent / "kernel_harness.c"
    out = Path(out)
    cmd = [cc, "-O2", *(f"-I{d}" for d in include_dirs()), str(path), "-o", str(out), "-ldl", "-rdynamic"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise KernelBuildError(f"compiling the kernel harness with {cc} failed: {r.stderr.strip().splitlines()[-1:]}")
    return out


def run_with_harness(harness: str | Path, lib: str | Path, args: Sequence[ArgSpec], workdir: str | Path,
                     prefix: Sequence[str] = (), repeat: int = 0, env: dict | None = None,
                     timeout: float = 300) -> tuple[list[np.ndarray], list[float]]:
    """Call `lib` once on `args` (inputs need `data`) through the harness, optionally under an emulator
    `prefix` (e.g. ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]). Returns (outputs, timed seconds)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, a in enumerate(args):
        dt = np.dtype(a.dtype)
        path = workdir / f"arg{i}.bin"
        if not a.is_output:
            if a.data is None:
                raise KernelBuildError(f"argument {i} needs data to run through the harness")
            np.ascontiguousarray(a.data, dt).tofile(path)
        lines.append(" ".join(["out" if a.is_output else "in", str(_DL_CODES[dt.kind]), str(dt.itemsize * 8),
                               str(len(a.shape)), *map(str, a.shape), str(path)]))
    spec = workdir / "spec.txt"
    spec.write_text("\n".join(lines) + "\n")
    r = subprocess.run([*prefix, str(harness), str(lib), str(spec), str(repeat)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if r.returncode:
        raise KernelBuildError(f"kernel harness failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
    times = [float(v) for v in r.stdout.split("seconds:")[-1].split()]
    outs = [np.fromfile(workdir / f"arg{i}.bin", a.dtype).reshape(a.shape) for i, a in enumerate(args) if a.is_output]
    return outs, times
