"""The GPU measurement kit (benchmarks/cuda_layers.py) and the CUDA kernels' machine code, without a GPU:
the kit's run step on this CPU (libraries built for it, the runtime-only TVM it ships), and nvcc on the
generated CUDA source."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nasbnn_hw.core.layers import LayerConfig
from nasbnn_hw.deploy.kernels import build_layer
from nasbnn_hw.deploy.kernels import schedule as S

KIT = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_layers.py"


def _kit(*args, cwd=None):
    return subprocess.run([sys.executable, str(KIT), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_cuda_kit_prepares_checks_and_times_with_the_runtime_alone(tmp_path):
    """`prepare --target local` then `run --device cpu`: the libraries load in a TVM without its compiler
    (the folder's runtime), their outputs match the CPU kernels', times are recorded; a wrong expected
    output is reported as a mismatch with exit status 1; a non-empty folder is refused."""
    kit = tmp_path / "kit"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    r = _kit("prepare", kit, "--target", "local", "--quick", "--python", py)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list((kit / "runtime").rglob("libtvm_compiler.so")) and (kit / "runtime" / "tvm" / "lib").is_dir()
    r = _kit("run", kit, "--device", "cpu", "--repeat", "2", "--out", tmp_path / "r.json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [row["name"] for row in rows] == ["256->256 14x14 3x3", "128->128 28x28 3x3"]
    kernels = [S.GPU_SCHEDULE_ID, "generic", *(t.fingerprint() for t in S.GPU_TILE_VARIANTS[1:])]
    for row in rows:
        assert all(row[f"{k}_max_rel_diff"] <= 1e-4 and row[f"{k}_s"] > 0 for k in kernels), row
        assert row["torch_fp32_s"] > 0
    assert "| 256->256 14x14 3x3 |" in r.stdout
    data = dict(np.load(kit / "layer1.npz"))
    data["expected"] = data["expected"] + 1.0
    np.savez(kit / "layer1.npz", **data)
    r = _kit("run", kit, "--device", "cpu", "--repeat", "1", cwd=tmp_path)
    assert r.returncode == 1 and "MISMATCH 128->128 28x28 3x3" in r.stdout
    r = _kit("prepare", kit, "--target", "local", "--quick")
    assert r.returncode != 0 and "is not empty" in r.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")
@pytest.mark.parametrize("cfg", [LayerConfig("bconv", 256, 256, 3, 1, 1, 14), LayerConfig("bconv", 96, 96, 5, 2, 1, 28),
                                 LayerConfig("stem", 3, 24, 3, 1, 2, 224)])
def test_cuda_kernels_compile_with_nvcc_without_spills(tmp_path, cfg):
    """The CUDA source of the tiled kernels compiles for the H100 (sm_90) and the Jetson Orin (sm_87), and
    ptxas keeps every thread's accumulators in registers (no local-memory spills)."""
    src = build_layer(cfg, "cuda-sm80").executable.mod.imports[0].inspect_source()
    (tmp_path / "k.cu").write_text(src)
    for arch in ("sm_90", "sm_87"):
        r = subprocess.run(["nvcc", "--cubin", "-O3", f"-arch={arch}", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                            str(tmp_path / "k.cu")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
        assert len(frames) == src.count("__global__") // 2   # one per kernel (declared, then defined)
        assert all(f == ("0", "0", "0") for f in frames), frames
