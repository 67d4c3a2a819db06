"""Build (and cache) the C timing harness for a board's architecture, and write its spec files.

The binary is cached under `$NASBNN_HW_CACHE` (default `$XDG_CACHE_HOME/nasbnn-hw`, i.e. ~/.cache/nasbnn-hw)
by architecture and a hash of the source and the compiler command, so a changed harness.c or compiler is
rebuilt and a campaign compiles it once.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Sequence

from nasbnn_hw.profiling.runners.base import ArgSpec
from nasbnn_hw.profiling.runners.errors import DeviceSetupError
from nasbnn_hw.profiling.runners.inputs import dl_type

HARNESS_NAME = "nasbnn-harness"
HARNESS_VERSION = 1
# ELF e_machine values of the architectures we can name
# libm is linked (not as-needed) so that kernels calling expf, tanhf, ... find it in the process
CFLAGS = ("-O2", "-std=gnu11")
LDFLAGS = ("-rdynamic", "-ldl", "-Wl,--no-as-needed", "-lm", "-Wl,--as-needed", "-lpthread")
_ELF_MACHINE = {"x86_64": 62, "aarch64": 183, "arm": 40, "riscv64": 243, "x86": 3}


def c_source(package: str, name: str) -> bytes:
    """The C file `name` of `package` as one self-contained source: each `#include "tvm_backend.h"` (and any
    other quoted include of this package) replaced by that file, so it builds (here, or on a board) alone."""
    root = resources.files(package)
    lines = []
    for line in root.joinpath(name).read_bytes().splitlines(keepends=True):
        s = line.strip()
        if s.startswith(b'#include "') and s.endswith(b'"'):
            inc = s[len(b'#include "'):-1].decode()
            pkg = "nasbnn_hw.profiling.runners" if inc == "tvm_backend.h" else package
            lines.append(c_source(pkg, inc))
        else:
            lines.append(line)
    return b"".join(lines)


def harness_source() -> bytes:
    return c_source("nasbnn_hw.profiling.runners", "harness.c")


def cache_dir() -> Path:
    if os.environ.get("NASBNN_HW_CACHE"):
        return Path(os.environ["NASBNN_HW_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "nasbnn-hw"


def elf_machine(path: Path) -> int | None:
    head = Path(path).read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def build_program(src: bytes, exe: Path, arch: str, compiler: str = "") -> Path:
    """Compile the one-file C program `src` to `exe` (atomically) for `arch` with `compiler` (default `cc`),
    with the flags every loader of TVM libraries needs, and check the result's ELF machine."""
    cmd = shlex.split(compiler or "cc")
    if not shutil.which(cmd[0]):
        raise DeviceSetupError(f"compiler {cmd[0]!r} for {arch} not found; install it (Debian: gcc-{arch}-linux-gnu) "
                               "or set cross_compiler in the device profile")
    exe = Path(exe)
    exe.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=exe.parent) as tmp:
        c_file = Path(tmp) / f"{exe.name}.c"
        c_file.write_bytes(src)
        tmp_exe = Path(tmp) / exe.name
        r = subprocess.run([*cmd, *CFLAGS, "-o", str(tmp_exe), str(c_file), *LDFLAGS], capture_output=True, text=True,
                           timeout=300)
        if r.returncode:
            raise DeviceSetupError(f"building {exe.name} with {' '.join(cmd)} failed: {r.stderr.strip()[-800:]}")
        want = _ELF_MACHINE.get(arch)
        got = elf_machine(tmp_exe)
        if want is not None and got != want:
            raise DeviceSetupError(f"compiler {' '.join(cmd)!r} builds for ELF machine {got}, not {arch} ({want}); "
                                   "set cross_compiler in the device profile")
        os.replace(tmp_exe, exe)
    return exe


def build_harness(arch: str, compiler: str = "", cache: Path | None = None) -> Path:
    """The harness executable for `arch` (a `uname -m` name), compiled with `compiler` (default `cc`)."""
    cmd = shlex.split(compiler or "cc")
    src = harness_source()
    key = hashlib.sha256(b"\0".join([src, " ".join(cmd + list(CFLAGS + LDFLAGS)).encode(), arch.encode()])).hexdigest()[:16]
    exe = (cache or cache_dir()) / "harness" / f"{arch}-{key}" / HARNESS_NAME
    return exe if exe.is_file() else build_program(src, exe, arch, compiler)


def write_spec(args: Sequence[ArgSpec], *, lib: str, warmup: int, repeat: int, number: int, threads: int,
               seed: int, outputs: bool, input_files: dict[int, str]) -> str:
    """The harness spec text; `input_files` maps argument index -> file name of given data."""
    lines = [f"nasbnn-harness {HARNESS_VERSION}", f"lib {lib}", f"warmup {int(warmup)}", f"repeat {int(repeat)}",
             f"number {int(number)}", f"threads {int(threads)}", f"seed {int(seed)}", f"outputs {int(outputs)}"]
    for i, a in enumerate(args):
        code, bits = dl_type(a.dtype)
        dims = " ".join(str(int(d)) for d in a.shape)
        lines.append(f"arg {'out' if a.is_output else 'in'} {code} {bits} {len(a.shape)} {dims} "
                     f"{input_files.get(i, 'gen')}".replace("  ", " "))
    return "\n".join(lines) + "\n"


def parse_samples(stdout: str) -> tuple[float, ...]:
    return tuple(float(line.split()[1]) for line in stdout.splitlines() if line.startswith("sample "))
