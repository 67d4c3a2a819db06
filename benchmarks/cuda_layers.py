"""The CUDA kernels on a GPU: built here, run on a GPU machine that has only the TVM runtime.

    python benchmarks/cuda_layers.py prepare DIR [--arch sm_90] [--subnets] [--python 3.12]
    python benchmarks/cuda_layers.py run DIR [--repeat 30] [--out results.json]      # on the GPU machine

`prepare` (here, with the TVM compiler) writes to DIR:
- the six layers of `benchmarks/tuned_layers.py` (with `--subnets` also the smallest and the largest imagenet
  subnet at 224, random weights), each built for CUDA with the default tile (`schedule.gpu_schedule`: thread
  blocks of pixel x channel tiles, sums in registers), the generic schedule (one thread per output, the
  kernel before it) and, for layers, the other tiles of `schedule.GPU_TILE_VARIANTS`; each library holds x86 host code and the CUDA source (TVM 0.27 compiles CUDA source
  when a library is loaded, through a callback: `run` registers one that calls nvcc for the GPU's own
  architecture);
- the arguments of each (`.npz`) and the output this machine's CPU kernels compute from them;
- `runtime/`: TVM's Python package without its compiler library (the runtime alone, about 17 MB) and the
  `tvm_ffi` package for the GPU machine's Python (`--python`; pip downloads the wheel when that is not the
  Python running here).

`run` (on the GPU machine: PyTorch and nvcc, no TVM installed) loads each library with that runtime,
which compiles its CUDA source with nvcc, checks the output against the CPU's, times
it (TVM's `time_evaluator`: medians of `--repeat` samples) and PyTorch's cuDNN convolution alone, fp32 and fp16
(channels-last); subnets against the same PyTorch network, fp32 and fp16. Prints a table with ratios; writes
every figure to `--out` (JSON). `--device cpu` runs the same on this machine's CPU (libraries prepared with
`--target local`): how the tests check the kit without a GPU.

On a GPU machine that has the repository and a copy of the folder (`.gpu/` is ignored by git, so copy it
beside the checkout), the whole check is one command:

    python benchmarks/cuda_layers.py prepare .gpu --subnets                  # here
    python3 benchmarks/cuda_layers.py run .gpu --out cuda.json               # there (nvcc: minutes)
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # nasbnn_hw, where it is not installed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tuned_layers import CASES as LAYERS  # noqa: E402 - the same six layers: (name, c_in, c_out, kernel, groups, resolution)
RTOL = 1e-4   # float epilogues: the GPU contracts multiply-adds into FMAs, the CPU code may not


# ----------------------------------------------------------------------------------------------- prepare
def _runtime(dst: Path, python: str) -> None:
    """TVM's Python package without libtvm_compiler.so, and tvm_ffi for `python` (e.g. "3.12")."""
    import tvm
    import tvm_ffi
    src = Path(tvm.__file__).parent
    shutil.copytree(src, dst / "tvm", ignore=shutil.ignore_patterns("libtvm_compiler.so", "__pycache__", "3rdparty",
                                                                     "src", "*.a"))
    tag = python.replace(".", "")
    own = f"{sys.version_info.major}{sys.version_info.minor}"
    ffi = dst / f"py{tag}"
    if tag == own:
        shutil.copytree(Path(tvm_ffi.__file__).parent, ffi / "tvm_ffi", ignore=shutil.ignore_patterns("__pycache__"))
        return
    from importlib.metadata import version
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--python-version", python, "--implementation", "cp",
                            *(a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                          "manylinux2014_x86_64") for a in ("--platform", p)),
                            "-d", tmp, f"apache-tvm-ffi=={version('apache-tvm-ffi')}"],
                           capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode or not wheels:
            sys.exit(f"error: could not download the tvm_ffi wheel for Python {python}: "
                     f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(ffi)


def _kernels(layer: bool):
    """(name, `GpuTile` or None) of each CUDA kernel to time: the default tile first, the generic schedule,
    and for single layers the other tile variants (`schedule.GPU_TILE_VARIANTS`)."""
    from nasbnn_hw.deploy.kernels.schedule import GPU_TILE, GPU_TILE_VARIANTS
    tiles = GPU_TILE_VARIANTS if layer else (GPU_TILE,)
    return [(GPU_TILE.fingerprint(), GPU_TILE), ("generic", None),
            *((t.fingerprint(), t) for t in tiles if t != GPU_TILE)]


def _cuda_target(arch: str) -> dict:
    return {"kind": "cuda", "arch": arch, "host": {"kind": "llvm"}}


def _save(path: Path, arrays: list, expected) -> None:
    import numpy as np
    np.savez(path, expected=expected, **{f"a{i:03d}": a for i, a in enumerate(arrays)})


def prepare(out: Path, arch: str, subnets: bool, python: str, target: str | None, quick: bool) -> None:
    import numpy as np

    from nasbnn_hw.core.layers import LayerConfig
    from nasbnn_hw.deploy.kernels.layer import build_layer
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} is not empty (choose a new folder)")
    out.mkdir(parents=True, exist_ok=True)
    tgt = target or _cuda_target(arch)
    code = "host code" if target else "CUDA source, compiled by nvcc on the GPU machine when loaded"
    items = []
    layers = LAYERS[:2] if quick else LAYERS
    for i, (name, ci, co, k, g, r) in enumerate(layers):
        t0 = time.perf_counter()
        cfg = LayerConfig("bconv", ci, co, k, g, 1, r)
        libs = {}
        for kind, tile in _kernels(layer=True):
            lay = build_layer(cfg, tgt, seed=i, gpu_tile=tile)
            libs[kind] = lay.export(out / f"layer{i}_{kind}.so").name
        params = {n: a.data for n, a in zip(lay.arg_names[1:-1], lay.args[1:-1])}
        cpu = build_layer(cfg, "local", seed=i, params=params)    # the same logical weights, this CPU's layout
        expected = cpu.run({"x": lay.args[0].data})
        _save(out / f"layer{i}.npz", [a.data for a in lay.args[:-1]], expected)
        items.append({"name": name, "kind": "layer", "config": cfg.to_dict(), "libs": libs, "args": f"layer{i}.npz",
                      "output_shape": list(lay.args[-1].shape)})
        print(f"prepared {name} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    if subnets:
        from nasbnn_hw.core.sampling import largest, smallest
        from nasbnn_hw.core.space import get_space
        from nasbnn_hw.deploy.tvm_net import compile_subnet
        from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet
        import torch
        space = get_space("imagenet")
        for name, arch_fn in (("smallest", smallest), ("largest", largest)):
            t0 = time.perf_counter()
            torch.manual_seed(0)
            model = extract_subnet(SuperBNN(space), arch_fn(space)).eval()
            libs = {}
            for kind, tile in _kernels(layer=False):
                net = compile_subnet(model, target=tgt, resolution=224, gpu_tile=tile)
                libs[kind] = Path(net.export(out / f"{name}_{kind}.so")).name
                (out / f"{name}_{kind}.npz").unlink()   # the parameters travel once, below
            x = np.random.default_rng(0).standard_normal(net.input_shape).astype(np.float32)
            expected = compile_subnet(model, target="local", resolution=224)(x)
            _save(out / f"{name}.npz", [x, *net.params], expected)
            items.append({"name": f"imagenet {name} 224", "kind": "subnet", "arch": arch_fn(space).to_json(),
                          "space": "imagenet", "libs": libs, "args": f"{name}.npz",
                          "output_shape": list(net.output_shape)})
            print(f"prepared subnet {name} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    _runtime(out / "runtime", python)
    from nasbnn_hw.deploy.kernels.schedule import GPU_SCHEDULE_ID
    (out / "manifest.json").write_text(json.dumps({"target": tgt, "code": code, "default": GPU_SCHEDULE_ID,
                                                   "items": items}, indent=1))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(items)} items, {size / 2**20:.1f} MiB", file=sys.stderr)


# --------------------------------------------------------------------------------------------------- run
def _import_runtime(folder: Path):
    """The prepared runtime-only TVM (ahead of any installed one)."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    if not (folder / "runtime" / tag).is_dir():
        have = sorted(p.name for p in (folder / "runtime").glob("py*"))
        sys.exit(f"error: {folder}/runtime holds tvm_ffi for {have}, not this Python ({tag}): prepare with "
                 f"--python {sys.version_info.major}.{sys.version_info.minor}")
    sys.path[:0] = [str(folder / "runtime" / tag), str(folder / "runtime")]
    import tvm
    if not tvm.base._RUNTIME_ONLY or not tvm.__file__.startswith(str(folder.resolve())):
        sys.exit(f"error: imported {tvm.__file__}, not the runtime-only TVM of {folder}")
    return tvm


def _load_cuda_runtime(folder: Path) -> None:
    """TVM's CUDA runtime library (a runtime-only TVM does not load its device libraries itself). Its
    libcudart.so.13 comes from PyTorch's CUDA packages (loaded by soname once torch has started CUDA) or
    the CUDA toolkit."""
    import ctypes
    import glob
    import torch
    if not torch.cuda.is_available():
        sys.exit("error: PyTorch sees no CUDA device here (use --device cpu to check the kit on a CPU)")
    torch.cuda.init()
    lib = folder / "runtime" / "tvm" / "lib" / "libtvm_runtime_cuda.so"
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        return
    except OSError as e:
        if "libcudart" not in str(e):
            raise
    for cand in sorted(glob.glob(f"{sys.prefix}/lib/python3*/site-packages/nvidia/*/lib/libcudart.so.*")
                       + glob.glob("/usr/local/cuda*/lib*/libcudart.so.*")):
        try:
            ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue
    sys.exit("error: TVM's CUDA runtime needs libcudart.so.13, found neither in PyTorch's packages nor in "
             "/usr/local/cuda*")


def _register_nvcc() -> str:
    """Compile the libraries' CUDA source with nvcc for this GPU when they are loaded (TVM's runtime calls
    back into Python)."""
    import tvm_ffi
    import torch
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}{'a' if major >= 9 else ''}"
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code):
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "k.cu", Path(tmp) / "k.cubin"
            src.write_text(code)
            subprocess.run([nvcc, "--cubin", "-O3", f"-arch={arch}", "-o", str(dst), str(src)], check=True)
            return bytearray(dst.read_bytes())
    return arch


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _time_torch(fn, device: str, repeat: int, number: int) -> float:
    import torch
    for _ in range(5):
        fn()
    samples = []
    for _ in range(repeat):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(number):
                fn()
            b.record()
            torch.cuda.synchronize()
            samples.append(a.elapsed_time(b) / 1e3 / number)
        else:
            t = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - t) / number)
    return _median(samples)


def _torch_times(item: dict, device: str, repeat: int, number: int) -> dict:
    """PyTorch on the same device: the fp32 convolution alone (layers) or the whole network (subnets),
    fp32 NCHW and fp16 channels-last (fp16 on a GPU only)."""
    import torch
    torch.backends.cudnn.benchmark = True
    if item["kind"] == "layer":
        c = item["config"]
        net = torch.nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel"], c["stride"], c["kernel"] // 2,
                              groups=c["groups"], bias=False)
        x = torch.randn(1, c["in_channels"], c["resolution"], c["resolution"], device=device)
    else:
        from nasbnn_hw.core.arch import Arch
        from nasbnn_hw.core.space import get_space
        from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet
        net = extract_subnet(SuperBNN(get_space(item["space"])), Arch.from_json(item["arch"]))
        x = torch.randn(1, 3, 224, 224, device=device)
    net = net.eval().to(device)
    out = {}
    with torch.no_grad():
        out["torch_fp32_s"] = _time_torch(lambda: net(x), device, repeat, number)
        if device == "cuda":
            net = net.half().to(memory_format=torch.channels_last)
            x16 = x.half().to(memory_format=torch.channels_last)
            out["torch_fp16_s"] = _time_torch(lambda: net(x16), device, repeat, number)
    return out


def run(folder: Path, device: str, repeat: int, out_json: Path | None) -> int:
    import numpy as np
    folder = folder.resolve()
    manifest = json.loads((folder / "manifest.json").read_text())
    tvm = _import_runtime(folder)
    if device == "cuda":
        _load_cuda_runtime(folder)
    arch = _register_nvcc() if device == "cuda" else "cpu"
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    if not dev.exist:
        sys.exit(f"error: no {device} device here")
    rows, failed = [], 0
    for item in manifest["items"]:
        data = np.load(folder / item["args"])
        arrays = [data[k] for k in sorted(k for k in data.files if k.startswith("a"))]
        expected = data["expected"]
        args = [tvm.runtime.tensor(a, dev) for a in arrays]
        row = {"name": item["name"], "kind": item["kind"]}
        for kind, lib in item["libs"].items():
            t0 = time.perf_counter()
            mod = tvm.runtime.load_module(str(folder / lib))
            row[f"{kind}_load_s"] = time.perf_counter() - t0
            res = tvm.runtime.empty(tuple(item["output_shape"]), "float32", dev)
            mod["main"](*args, res)
            got = res.numpy()
            err = float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), 1e-30))
            row[f"{kind}_max_rel_diff"] = err
            if item["kind"] == "subnet":
                row[f"{kind}_top1_agrees"] = bool(np.argmax(got) == np.argmax(expected))
            ok = err <= RTOL or item["kind"] == "subnet"   # subnets: sign flips at values within rounding of 0
            if not ok:
                failed += 1
                print(f"MISMATCH {item['name']} {kind}: max relative difference {err:.2e} (allowed {RTOL})")
            ev = mod.time_evaluator("main", dev, number=10, repeat=repeat, min_repeat_ms=20)
            row[f"{kind}_s"] = _median(list(ev(*args, res).results))
        row.update(_torch_times(item, device, repeat, 10))
        rows.append(row)
        print(f"{item['name']}: " + ", ".join(f"{k[:-2]} {v * 1e3:.4f} ms" for k, v in row.items()
                                            if k.endswith("_s") and not k.endswith("load_s")), flush=True)
    print(f"\n{device} ({arch}; libraries: {manifest.get('code', '?')}); medians of {repeat} samples, ms; "
          f"x = PyTorch / the default tile ({manifest['default']})")
    head = "| item | torch fp32 | torch fp16 | generic | default | best tile | x fp32 | x fp16 | default / generic |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for r in rows:
        f16, tiled = r.get("torch_fp16_s"), r[f"{manifest['default']}_s"]
        tiles = {k[:-2]: v for k, v in r.items() if k.startswith("cuda-") and k.endswith("_s")}
        best = min(tiles, key=tiles.get)
        half = (f"{f16 * 1e3:.4f}", f"{f16 / tiled:.2f}x") if f16 else ("-", "-")
        print(f"| {r['name']} | {r['torch_fp32_s'] * 1e3:.4f} | {half[0]} | {r['generic_s'] * 1e3:.4f} | "
              f"{tiled * 1e3:.4f} | {best} {tiles[best] * 1e3:.4f} | {r['torch_fp32_s'] / tiled:.2f}x | {half[1]} | "
              f"{r['generic_s'] / tiled:.2f}x |")
    if out_json:
        out_json.write_text(json.dumps({"device": device, "arch": arch, "rows": rows}, indent=1))
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="build the libraries and the runtime folder (here)")
    p.add_argument("folder", type=Path)
    p.add_argument("--arch", default="sm_90", help="CUDA architecture named in the target (default sm_90: H100/H200)")
    p.add_argument("--subnets", action="store_true", help="also the smallest and largest imagenet subnet at 224")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python, for its tvm_ffi (default 3.12)")
    p.add_argument("--target", default=None, help="build for this target instead of CUDA (`local`: the CPU check)")
    p.add_argument("--quick", action="store_true", help="two layers only")
    r = sub.add_parser("run", help="load, check and time the libraries (on the GPU machine)")
    r.add_argument("folder", type=Path)
    r.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    r.add_argument("--repeat", type=int, default=30)
    r.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.cmd == "prepare":
        if not re.fullmatch(r"sm_\d{2,3}a?", a.arch):
            sys.exit(f"error: --arch {a.arch!r} is not a CUDA architecture (allowed: sm_NN, e.g. sm_90, sm_87)")
        if not re.fullmatch(r"3\.\d{1,2}", a.python):
            sys.exit(f"error: --python {a.python!r} is not a Python version (allowed: 3.N, e.g. 3.12)")
        prepare(a.folder, a.arch, a.subnets, a.python, a.target, a.quick)
        return 0
    if not (a.folder / "manifest.json").is_file():
        sys.exit(f"error: {a.folder} holds no manifest.json (run `prepare` first)")
    if a.repeat < 1:
        sys.exit(f"error: --repeat must be at least 1 (got {a.repeat})")
    return run(a.folder, a.device, a.repeat, a.out)


if __name__ == "__main__":
    sys.exit(main())
