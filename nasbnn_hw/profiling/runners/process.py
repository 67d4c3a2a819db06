"""Run a library through the C harness in a local process, optionally under an emulator.

The same harness that runs on SSH boards, but here: useful to check a cross-compiled library under
`qemu-aarch64` (numerics are real, emulated times are not latency) or to time a library without TVM's
runtime in the process.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from nasbnn_hw.profiling.runners.base import ArgSpec, ClosingRunner, Timing
from nasbnn_hw.profiling.runners.errors import DeviceSetupError, KernelError
from nasbnn_hw.profiling.runners.harness import build_harness, parse_samples, write_spec
from nasbnn_hw.profiling.runners.inputs import input_arrays


class HarnessProcessRunner(ClosingRunner):
    """`time_library` through the harness built for `arch` with `compiler`, run as
    `[*exec_wrapper, harness, spec]` in a fresh temporary directory."""

    def __init__(self, arch: str = "x86_64", compiler: str = "", exec_wrapper: Sequence[str] = (),
                 threads: int = 1, seed: int = 0, timeout_s: float = 300, device: str | None = None):
        self.arch, self.compiler, self.exec_wrapper = arch, compiler, list(exec_wrapper)
        self.threads, self.seed, self.timeout_s = threads, seed, timeout_s
        self.device = device or (f"{arch} (emulated)" if self.exec_wrapper else arch)
        self._exe: Path | None = None

    def time_library(self, lib_path: Path, args: Sequence[ArgSpec], *, warmup: int, repeat: int,
                     number: int = 1, return_outputs: bool = False) -> Timing:
        lib_path = Path(lib_path).resolve()
        if not lib_path.is_file():
            raise KernelError(f"kernel library {lib_path} does not exist")
        self._exe = self._exe or build_harness(self.arch, self.compiler)
        arrays = input_arrays(args, self.seed)
        given = {i: f"in{i}.bin" for i, a in enumerate(args) if a.data is not None and not a.is_output}
        spec = write_spec(args, lib="kernel.so", warmup=warmup, repeat=repeat, number=number,
                          threads=self.threads, seed=self.seed, outputs=return_outputs, input_files=given)
        with tempfile.TemporaryDirectory(prefix="nasbnn-harness-") as wd:
            (Path(wd) / "kernel.so").symlink_to(lib_path)
            for i, name in given.items():
                arrays[i].tofile(Path(wd) / name)
            try:
                r = subprocess.run([*self.exec_wrapper, str(self._exe), "-"], input=spec, cwd=wd,
                                   capture_output=True, text=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise KernelError(f"{self.device}: {lib_path.name} did not finish within {self.timeout_s:g} s") from None
            if r.returncode:
                raise KernelError(f"{self.device}: harness exited with status {r.returncode} on {lib_path.name}: "
                                  f"{r.stderr.strip()[-600:]}")
            samples = parse_samples(r.stdout)
            outputs = None
            if return_outputs:
                outputs = tuple(np.fromfile(Path(wd) / f"out{i}.bin", dtype=a.dtype).reshape(a.shape)
                                for i, a in enumerate(args) if a.is_output)
        return Timing(samples, outputs)

    def board_info(self) -> dict:
        """What the harness says about itself when run through the emulator (proves both work), as
        `SSHRunner.board_info`: {"uname_m": this machine, "harness_arch", "cpus"}."""
        import platform
        import shutil
        if self.exec_wrapper and shutil.which(self.exec_wrapper[0]) is None:
            raise DeviceSetupError(f"device '{self.device}': the emulator {self.exec_wrapper[0]!r} is not "
                                   "installed (Debian: apt install qemu-user libc6-dev-arm64-cross)")
        self._exe = self._exe or build_harness(self.arch, self.compiler)
        try:
            r = subprocess.run([*self.exec_wrapper, str(self._exe), "--info"], capture_output=True, text=True,
                               timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise DeviceSetupError(f"device '{self.device}': the harness did not answer within "
                                   f"{self.timeout_s:g} s") from None
        if r.returncode:
            raise DeviceSetupError(f"device '{self.device}': the {self.arch} harness does not run under "
                                   f"{' '.join(self.exec_wrapper) or 'this machine'} (status {r.returncode}): "
                                   f"{r.stderr.strip()[-400:]}")
        fields = dict(f.split("=", 1) for f in r.stdout.split() if "=" in f)
        return {"uname_m": platform.machine(), "harness_arch": fields.get("arch", ""), "cpus": fields.get("cpus", "")}

    def close(self) -> None:
        pass
