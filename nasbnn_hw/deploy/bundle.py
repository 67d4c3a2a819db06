"""The inference bundle: a directory that runs a compiled subnet on its device with nothing but a C library.

    bundle = write_bundle(net, "out/bundle", profile=load_profile("rpi4"), preprocess=Preprocess.imagenet(224))
    result = run_bundle("out/bundle", ["cat.ppm"])                 # here, when the bundle is built for this CPU
    result = run_bundle("out/bundle", ["cat.ppm"], exec_wrapper=["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"])

Contents (see the README written into each bundle):
    model.so       the TVM-compiled subnet (one function `main(x, *params, logits)`)
    params.bin     its parameters in call order: a 32-byte header ("NBHWPRM1", version, count, file size,
                   CRC-32 of the data), one 88-byte entry per tensor (DLPack type code and bits,
                   ndim, 8 dims, offset, size), the data 64-byte aligned; little-endian
    bundle.txt     the runner's settings: input and output shape, preprocessing, threads, file names
    nasbnn-run     the runner (nasbnn-run.c, built with the device profile's compiler); its TVM backend hooks
                   are its own (tvm_backend.h inlined): single thread or a pthread pool
    nasbnn-run.c   its source, one file, to rebuild on the board: cc -O2 -o nasbnn-run nasbnn-run.c -ldl -lm -lpthread
    labels.txt     class names, one per line (when the training data names them)
    manifest.json  provenance and a SHA-256 of every file (checked before the bundle is run or uploaded)
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nasbnn_hw.deploy.tvm_net import DeployError, TvmSubnet

__all__ = ["BUNDLE_FORMAT", "Preprocess", "BundleResult", "write_bundle", "open_bundle", "run_bundle",
           "write_params", "read_params", "emulator_for", "RUNNER_NAME", "check_bundle_out", "run_bundle_ssh"]

BUNDLE_FORMAT = "nasbnn-hw/bundle-v1"
RUNNER_NAME = "nasbnn-run"
PARAMS_MAGIC = b"NBHWPRM1"
_ENTRY = struct.Struct("<BBB5x8qQQ")      # code, bits, ndim, dims[8], offset, nbytes: 88 bytes
_HEADER = struct.Struct("<8sIIQQ")        # magic, version, count, total size, checksum: 32 bytes
_DL_CODES = {"int": 0, "uint": 1, "float": 2}
_FILES = ("model.so", "params.bin", "bundle.txt", RUNNER_NAME, f"{RUNNER_NAME}.c")


@dataclass(frozen=True)
class Preprocess:
    """What the runner does to an image before the model sees it: channel conversion (`gray`: "luma" as
    Pillow's RGB->L, or "mean" of the channels), resize of the shorter side to `resize` (0: the whole image
    to the model's resolution), centre crop, then (x / 255 - mean) / std per channel."""
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gray: str = "luma"

    @classmethod
    def imagenet(cls, resolution: int, channels: int = 3) -> "Preprocess":
        """The image-folder evaluation transform: resize to round(size / 0.875), centre crop, mean = std = 0.5."""
        return cls(int(round(resolution / 0.875)), (0.5,) * channels, (0.5,) * channels)

    @classmethod
    def for_splits(cls, splits, resolution: int, channels: int) -> "Preprocess":
        """The evaluation preprocessing of the data a model was trained on (`load_splits`)."""
        norm = getattr(splits, "normalisation", None)
        if norm is None:
            return cls.imagenet(resolution, channels)
        mean, std = norm
        return cls(0, tuple(float(v) for v in mean), tuple(float(v) for v in std), "mean")


@dataclass
class BundleResult:
    """What a run printed: per input (name, [(class, probability, label)]), the logits (inputs x classes),
    and the runner's latency line as numbers (ms; runs, warmup, threads, batch)."""
    top: list[tuple[str, list[tuple[int, float, str]]]]
    logits: np.ndarray | None
    latency: dict = field(default_factory=dict)
    inputs: np.ndarray | None = None


def _dl_type(dtype) -> tuple[int, int]:
    dt = np.dtype(dtype)
    kind = {"i": "int", "u": "uint", "f": "float"}.get(dt.kind)
    if kind is None or dt.byteorder == ">":
        raise DeployError(f"parameter dtype {dt} cannot go into a bundle")
    return _DL_CODES[kind], dt.itemsize * 8


def _checksum(arrays: Sequence[np.ndarray]) -> int:
    """CRC-32 (zlib's) of every tensor's bytes in order: the runner computes the same to catch a damaged copy
    (the manifest's SHA-256 is what the host checks)."""
    import zlib
    crc = 0
    for a in arrays:
        crc = zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"), crc)
    return crc


def write_params(path: str | Path, arrays: Sequence[np.ndarray]) -> int:
    """Write `arrays` (call order) as a params.bin file, atomically; returns its size in bytes."""
    from nasbnn_hw.utils import atomic_write_bytes
    arrays = [np.ascontiguousarray(a) for a in arrays]
    offset = _HEADER.size + _ENTRY.size * len(arrays)
    entries, layout = [], []
    for a in arrays:
        if a.ndim > 8:
            raise DeployError(f"a parameter of {a.ndim} dimensions cannot go into a bundle (at most 8)")
        offset = (offset + 63) // 64 * 64
        code, bits = _dl_type(a.dtype)
        entries.append(_ENTRY.pack(code, bits, a.ndim, *(list(a.shape) + [0] * (8 - a.ndim)), offset, a.nbytes))
        layout.append(offset)
        offset += a.nbytes
    buf = bytearray(offset)
    buf[: _HEADER.size] = _HEADER.pack(PARAMS_MAGIC, 1, len(arrays), offset, _checksum(arrays))
    pos = _HEADER.size
    for e in entries:
        buf[pos: pos + _ENTRY.size] = e
        pos += _ENTRY.size
    for a, off in zip(arrays, layout):
        buf[off: off + a.nbytes] = a.tobytes()
    atomic_write_bytes(path, bytes(buf))
    return offset


def read_params(path: str | Path) -> list[np.ndarray]:
    """The arrays of a params.bin file, with the checks the runner makes."""
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        raise DeployError(f"{path} is truncated: {len(data)} bytes, not even a header")
    magic, version, count, total, checksum = _HEADER.unpack_from(data)
    if magic != PARAMS_MAGIC or version != 1:
        raise DeployError(f"{path} is not a nasbnn-hw parameter file (version 1)")
    if total != len(data):
        raise DeployError(f"{path} is {'truncated' if len(data) < total else 'longer than written'}: {len(data)} "
                          f"bytes, its header says {total}")
    codes = {v: k for k, v in _DL_CODES.items()}
    out = []
    for i in range(count):
        code, bits, ndim, *rest = _ENTRY.unpack_from(data, _HEADER.size + i * _ENTRY.size)
        dims, off, nbytes = rest[:ndim], rest[8], rest[9]
        dtype = np.dtype(f"{codes.get(code, 'float')}{bits}")
        if nbytes != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize or off + nbytes > total:
            raise DeployError(f"{path}: tensor {i} does not fit the file")
        out.append(np.frombuffer(data, dtype, int(np.prod(dims, dtype=np.int64)), off).reshape(dims))
    if _checksum(out) != checksum:
        raise DeployError(f"{path} is damaged: its checksum does not match")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def runner_source() -> bytes:
    from nasbnn_hw.profiling.runners.harness import c_source
    return c_source("nasbnn_hw.deploy", "bundle_runner.c")


def _bundle_txt(net: TvmSubnet, pre: Preprocess, threads: int, labels: bool) -> str:
    n, c, h, w = net.input_shape
    if len(pre.mean) != c or len(pre.std) != c or min(pre.std) <= 0:
        raise DeployError(f"preprocessing needs a mean and a positive std per channel ({c}), got {pre}")
    if pre.gray not in ("luma", "mean"):
        raise DeployError(f"preprocessing gray={pre.gray!r} (allowed: luma, mean)")
    lines = ["nasbnn-bundle 1", "library model.so", "params params.bin", f"input {n} {c} {h} {w}",
             f"output {net.output_shape[0]} {net.output_shape[1]}", f"resize {int(pre.resize)}",
             "mean " + " ".join(f"{float(np.float32(v)):.9g}" for v in pre.mean),
             "std " + " ".join(f"{float(np.float32(v)):.9g}" for v in pre.std), f"gray {pre.gray}",
             f"threads {int(threads)}"]
    if labels:
        lines.append("labels labels.txt")
    return "\n".join(lines) + "\n"


def _readme(manifest: dict, compiler: str) -> str:
    n, c, h, w = manifest["input_shape"]
    pre = manifest["preprocess"]
    how = (f"shorter side resized to {pre['resize']}, centre crop {h}x{w}" if pre["resize"]
           else f"resized to {h}x{w}")
    return f"""# nasbnn-hw inference bundle

A binary subnet compiled for **{manifest['device']}** (`{manifest['target']}`, {manifest['arch']}),
{len(manifest['layers'])} layers, input {n}x{c}x{h}x{w}, {manifest['output_shape'][1]} classes.
It runs with nothing but the board's C library: no Python, numpy or TVM.

Copy this directory to the board, then:

    ./nasbnn-run photo.ppm                 # top-5 classes (images: PGM/PPM; also .npy or raw float32)
    ./nasbnn-run --benchmark               # latency: 5 warm-up calls, median/IQR of 50
    ./nasbnn-run --help

From the host, `nasbnn-hw run --device DEVICE --bundle THIS_DIR --input FILE...` does the copying over SSH.

Images get the preprocessing of the model's evaluation data: {how}, then (x / 255 - mean) / std with
mean {pre['mean']} and std {pre['std']}{'; grey from RGB as ' + pre['gray'] if c == 1 else ''}. A float32
`.npy` (C x H x W) or a raw float32 file of exactly {c * h * w} values is taken as the model's input as is.
Batch: the model takes {n} input(s) per call; more inputs run in successive calls.

If the prebuilt `nasbnn-run` does not start on the board (a C library older than the cross toolchain's),
build it there from its one source file:

    cc -O2 -std=gnu11 -o nasbnn-run nasbnn-run.c -rdynamic -ldl -lm -lpthread

(here it was built with `{compiler or 'cc'}`). `model.so` is native code: run only bundles you exported.
`manifest.json` records where the bundle came from and a SHA-256 of every file.
"""


def check_bundle_out(out: str | Path, inputs: Sequence[tuple[str, Path]] = (), force: bool = False) -> None:
    """Refuse a bundle directory that is a file, holds one of the `inputs` ((role, path)), is a non-empty
    directory that is not a bundle, or (unless `force`) an existing bundle."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DeployError(f"output bundle {str(out)!r} is an existing file; give a directory path")
    for role, p in inputs:
        p = Path(p)
        if p.exists() and (p.resolve() == out.resolve() or out.resolve() in p.resolve().parents):
            raise DeployError(f"output bundle {str(out)!r} holds the {role} {str(p)!r}; writing it would destroy "
                              "that file (choose another output directory)")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise DeployError(f"output bundle {str(out)!r} is a directory that is not a bundle; give a new or "
                              "empty directory")
        if not force:
            raise DeployError(f"output bundle {str(out)!r} exists already; pass --force to replace it")


def write_bundle(net: TvmSubnet, out: str | Path, *, profile=None, preprocess: Preprocess | None = None,
                 labels: Sequence[str] | None = None, provenance: dict | None = None, force: bool = False,
                 inputs: Sequence[tuple[str, Path]] = ()) -> Path:
    """Write the bundle directory `out` for `net` (compiled for `profile`'s target; None: this machine).
    The bundle is assembled in a temporary directory beside `out` and renamed into place, so a kill leaves
    either the old bundle or the new one. `inputs` ((role, path)) are files the bundle must not replace."""
    from nasbnn_hw.deploy.kernels.targets import export_library
    from nasbnn_hw.profiling.runners.harness import build_program
    from nasbnn_hw.utils import atomic_write_text
    out = Path(out)
    check_bundle_out(out, inputs, force)
    arch = profile.arch if profile is not None else platform.machine()
    compiler = (profile.cross_compiler if profile is not None and profile.cross_compiler else "")
    threads = int(getattr(profile, "threads", 1) or 1) if profile is not None else 1
    pre = preprocess or Preprocess.imagenet(net.input_shape[2], net.input_shape[1])
    if labels is not None and len(labels) != net.output_shape[1]:
        raise DeployError(f"{len(labels)} labels for {net.output_shape[1]} classes")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        export_library(net.executable, tmp / "model.so", net.target)
        write_params(tmp / "params.bin", net.params)
        (tmp / "bundle.txt").write_text(_bundle_txt(net, pre, threads, labels is not None))
        src = runner_source()
        (tmp / f"{RUNNER_NAME}.c").write_bytes(src)
        build_program(src, tmp / RUNNER_NAME, arch, compiler)
        if labels is not None:
            (tmp / "labels.txt").write_text("".join(" ".join(str(l).split()) + "\n" for l in labels))
        import tvm
        manifest = {"format": BUNDLE_FORMAT, "device": getattr(profile, "name", "local"),
                    "target": net.target.name, "arch": arch, "input_shape": list(net.input_shape),
                    "output_shape": list(net.output_shape), "preprocess": asdict(pre),
                    "layers": [l.to_dict() for l in net.layers], "tvm_version": tvm.__version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(provenance or {})}
        (tmp / "README.md").write_text(_readme(manifest, compiler))
        files = [f for f in _FILES + ("labels.txt", "README.md") if (tmp / f).exists()]
        manifest["files"] = {f: _sha256(tmp / f) for f in files}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1) + "\n")
        for f in tmp.iterdir():   # temporary files are created private; a bundle is meant to be copied
            f.chmod(0o755 if f.name in (RUNNER_NAME, "model.so") else 0o644)
        tmp.chmod(0o755)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def open_bundle(path: str | Path) -> dict:
    """The manifest of the bundle directory `path`, after checking every file against its SHA-256."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise DeployError(f"{str(path)!r} is not a bundle (no manifest.json; write one with "
                          "`nasbnn-hw export --format bundle`)")
    try:
        manifest = json.loads(mf.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DeployError(f"{mf}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise DeployError(f"{mf}: format {manifest.get('format') if isinstance(manifest, dict) else None!r} "
                          f"not supported (allowed: {BUNDLE_FORMAT})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not set(_FILES) <= set(files):
        raise DeployError(f"{mf}: 'files' must list {', '.join(_FILES)} with their SHA-256")
    for name, digest in files.items():
        f = path / name
        if "/" in name or name in (".", "..") or not f.is_file():
            raise DeployError(f"bundle {str(path)!r}: {name!r} is missing")
        if _sha256(f) != digest:
            raise DeployError(f"bundle {str(path)!r}: {name} is not the file it was exported with (changed or "
                              "damaged since); export the bundle again")
    for key in ("arch", "device", "target"):
        if not isinstance(manifest.get(key), str):
            raise DeployError(f"{mf}: '{key}' must be a string")
    for key, n in (("input_shape", 4), ("output_shape", 2)):
        v = manifest.get(key)
        if not (isinstance(v, list) and len(v) == n and all(type(d) is int and 1 <= d <= 1 << 24 for d in v)):
            raise DeployError(f"{mf}: '{key}' must be a list of {n} sizes from 1 to {1 << 24}, not {v!r:.60}")
    return manifest


def emulator_for(arch: str) -> list[str] | None:
    """The command prefix that runs `arch` programs on this machine: [] natively, qemu-user for aarch64
    (with the cross C library), None when nothing can."""
    from device_profiles import normalize_arch
    if normalize_arch(arch) == normalize_arch(platform.machine()):
        return []
    if arch == "aarch64" and shutil.which("qemu-aarch64") and Path("/usr/aarch64-linux-gnu/lib").is_dir():
        return ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
    return None


def parse_output(stdout: str, names: Sequence[str]) -> tuple[list, dict]:
    """(top, latency) from the runner's standard output; `names` maps input index -> the caller's name."""
    top, latency = [], {}
    for line in stdout.splitlines():
        if line.startswith("input "):
            idx = int(line.split()[1])
            top.append((names[idx] if idx < len(names) else line.split(None, 2)[2], []))
        elif line.startswith("  ") and top:
            parts = line.split(None, 3)
            top[-1][1].append((int(parts[1]), float(parts[2]), parts[3] if len(parts) > 3 else ""))
        elif line.startswith("latency_ms "):
            for kv in line.split()[1:]:
                k, v = kv.split("=", 1)
                latency[k] = float(v) if k in ("median", "iqr", "min", "max") else int(v)
    return top, latency


def runner_args(n_inputs: int, *, top: int = 5, warmup: int | None = None, repeat: int | None = None,
                threads: int | None = None, dump: bool = False) -> list[str]:
    """The runner's command-line arguments for inputs named input0000, ... in its working directory, the
    bundle in `bundle/`; logits go to logits.bin (and the preprocessed inputs to inputs.bin)."""
    args = ["--bundle", "bundle", "--top", str(int(top)), "--logits", "logits.bin"]
    for opt, v in (("--warmup", warmup), ("--repeat", repeat), ("--threads", threads)):
        if v is not None:
            args += [opt, str(int(v))]
    if dump:
        args += ["--dump-input", "inputs.bin"]
    return args + ["--"] + [f"input{i:04d}" for i in range(n_inputs)]


def _staged_inputs(inputs: Sequence[str | Path | np.ndarray], chw: Sequence[int]) -> tuple[list[bytes | Path], list[str]]:
    """(contents, the caller's names) of the inputs: files (any name: they reach the runner as input0000, ...)
    or float32 arrays (the model's input)."""
    data, names = [], []
    for i, x in enumerate(inputs):
        if isinstance(x, np.ndarray):
            data.append(np.ascontiguousarray(x, np.float32).reshape(*chw).tobytes())
            names.append(f"array {i}")
        else:
            if not Path(x).is_file():
                raise DeployError(f"input {str(x)!r} does not exist (or is not a file)")
            data.append(Path(x))
            names.append(str(x))
    if not names:
        raise DeployError("no inputs given")
    return data, names


def _result(stdout: str, names: Sequence[str], logits: bytes, classes: int, dumped: bytes | None,
            chw: Sequence[int]) -> BundleResult:
    top_k, latency = parse_output(stdout, names)
    out = np.frombuffer(logits, np.float32)
    if out.size != len(names) * classes:
        raise DeployError(f"the bundle's runner wrote {out.size} logits, expected {len(names)} x {classes}")
    inputs = np.frombuffer(dumped, np.float32).reshape(len(names), *chw) if dumped is not None else None
    return BundleResult(top_k, out.reshape(len(names), classes).copy(), latency, inputs)


def run_bundle(bundle: str | Path, inputs: Sequence[str | Path | np.ndarray], *, exec_wrapper: Sequence[str] = (),
               top: int = 5, warmup: int | None = None, repeat: int | None = None, threads: int | None = None,
               dump_inputs: bool = False, timeout_s: float = 600) -> BundleResult:
    """Run the bundle's runner in a process on this machine (through `exec_wrapper`, e.g. qemu-user), on
    `inputs`: files (any name: they are copied to neutral names first) or float32 arrays (the model's input)."""
    bundle = Path(bundle)
    manifest = open_bundle(bundle)
    chw = manifest["input_shape"][1:]
    data, names = _staged_inputs(inputs, chw)
    with tempfile.TemporaryDirectory(prefix="nasbnn-run-") as wd:
        wd = Path(wd)
        (wd / "bundle").symlink_to(bundle.resolve())
        for i, d in enumerate(data):
            dst = wd / f"input{i:04d}"
            shutil.copyfile(d, dst) if isinstance(d, Path) else dst.write_bytes(d)
        cmd = [*exec_wrapper, str(wd / "bundle" / RUNNER_NAME),
               *runner_args(len(names), top=top, warmup=warmup, repeat=repeat, threads=threads, dump=dump_inputs)]
        try:
            r = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            raise DeployError(f"cannot start {cmd[0]!r} (install it)") from None
        except subprocess.TimeoutExpired:
            raise DeployError(f"the bundle's runner did not finish within {timeout_s:g} s") from None
        if r.returncode:
            raise DeployError(_runner_error(r.stderr, names))
        return _result(r.stdout, names, (wd / "logits.bin").read_bytes(), manifest["output_shape"][1],
                       (wd / "inputs.bin").read_bytes() if dump_inputs else None, chw)


def run_bundle_ssh(runner, bundle: str | Path, inputs: Sequence[str | Path | np.ndarray], *, top: int = 5,
                   warmup: int | None = None, repeat: int | None = None, threads: int | None = None,
                   dump_inputs: bool = False) -> BundleResult:
    """`run_bundle` on an SSH board through `runner` (an `SSHRunner`): the bundle and the inputs are uploaded
    to a fresh directory of its session (inputs under neutral names), run there, and removed."""
    from nasbnn_hw.profiling.runners.errors import KernelError
    bundle = Path(bundle)
    manifest = open_bundle(bundle)
    chw = manifest["input_shape"][1:]
    data, names = _staged_inputs(inputs, chw)
    files = {f"bundle/{name}": (bundle / name).read_bytes() for name in manifest["files"]}
    files.update({f"input{i:04d}": d.read_bytes() if isinstance(d, Path) else d for i, d in enumerate(data)})
    fetch = ["logits.bin"] + (["inputs.bin"] if dump_inputs else [])
    try:
        out, got = runner.run_program(files, f"bundle/{RUNNER_NAME}", runner_args(
            len(names), top=top, warmup=warmup, repeat=repeat, threads=threads, dump=dump_inputs),
            fetch=fetch, source=f"bundle/{RUNNER_NAME}.c")
    except KernelError as e:
        raise DeployError(f"device '{runner.device}': {_runner_error(str(e), names)}") from None
    return _result(out, names, got["logits.bin"], manifest["output_shape"][1], got.get("inputs.bin"), chw)


def _runner_error(stderr: str, names: Sequence[str]) -> str:
    """The runner's one error line, with neutral input names replaced by the caller's."""
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    msg = next((l for l in reversed(lines) if l.startswith(f"{RUNNER_NAME}:")), lines[-1] if lines else "no message")
    for i, name in enumerate(names):
        msg = msg.replace(f"input{i:04d}", repr(name))
    return msg.replace(f"{RUNNER_NAME}: ", "the bundle's runner: ", 1)
