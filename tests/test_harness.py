"""The C timing harness run directly (no SSH): its generated inputs equal inputs.py's for every dtype, its
thread pool gives the same results as one thread, and bad specs fail with a message."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from nasbnn_hw.profiling.runners import ArgSpec
from nasbnn_hw.profiling.runners.harness import build_harness, parse_samples, write_spec
from nasbnn_hw.profiling.runners.inputs import random_input

import runner_kernels as rk

DTYPES = ["uint64", "int8", "int32", "float32", "float16", "float64", "uint16"]


def _copy_kernel(dtype, n, path):
    import tvm
    from tvm import te
    a = te.placeholder((n,), dtype, name="a")
    b = te.compute((n,), lambda i: a[i], name="b")
    ex = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), target=tvm.target.Target({"kind": "llvm"}))
    ex.export_library(str(path))
    return path


def _run(exe, spec, cwd):
    return subprocess.run([str(exe), "-"], input=spec, capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.fixture(scope="module")
def harness():
    return build_harness(__import__("platform").machine())


def test_generated_inputs_match_python(harness, tmp_path):
    for dtype in DTYPES:
        lib = _copy_kernel(dtype, 1000, tmp_path / f"copy_{dtype}.so")
        args = [ArgSpec((1000,), dtype), ArgSpec((1000,), dtype, is_output=True)]
        spec = write_spec(args, lib=lib.name, warmup=0, repeat=1, number=1, threads=1, seed=99, outputs=True,
                          input_files={})
        r = _run(harness, spec, tmp_path)
        assert r.returncode == 0, r.stderr
        got = np.fromfile(tmp_path / "out1.bin", dtype=dtype)
        np.testing.assert_array_equal(got.view(f"uint{np.dtype(dtype).itemsize * 8}"),
                                      random_input(0, (1000,), dtype, seed=99).view(f"uint{np.dtype(dtype).itemsize * 8}"))


def test_threads_and_samples(harness, tmp_path):
    rk.build_xor_popcount(64, 48, 8, {"kind": "llvm"}, tmp_path / "k.so")
    a = np.random.default_rng(0).integers(0, 2**64, (64, 8), dtype=np.uint64)
    b = np.random.default_rng(1).integers(0, 2**64, (48, 8), dtype=np.uint64)
    a.tofile(tmp_path / "in0.bin")
    b.tofile(tmp_path / "in1.bin")
    args = [ArgSpec((64, 8), "uint64"), ArgSpec((48, 8), "uint64"), ArgSpec((64, 48), "int32", is_output=True)]
    for threads in (1, 2, 3):
        spec = write_spec(args, lib="k.so", warmup=2, repeat=7, number=5, threads=threads, seed=1, outputs=True,
                          input_files={0: "in0.bin", 1: "in1.bin"})
        r = _run(harness, spec, tmp_path)
        assert r.returncode == 0, r.stderr
        samples = parse_samples(r.stdout)
        assert len(samples) == 7 and all(0 < s < 1 for s in samples)
        np.testing.assert_array_equal(np.fromfile(tmp_path / "out2.bin", dtype=np.int32).reshape(64, 48),
                                      rk.xor_popcount_ref(a, b))


def test_bad_specs_fail_with_a_message(harness, tmp_path):
    ok = "nasbnn-harness 1\nlib k.so\nwarmup 0\nrepeat 1\nnumber 1\nthreads 1\nseed 1\noutputs 0\n"
    cases = {
        ok + "arg in 1 64 1 4 ../etc/passwd\n": "not allowed",
        ok + "arg in 1 64 1 4 missing.bin\n": "cannot open input",
        ok.replace("nasbnn-harness 1", "nasbnn-harness 9"): "version",
        ok + "bogus 1\n": "unknown spec line",
        ok: "dlopen failed",
    }
    for spec, msg in cases.items():
        r = _run(harness, spec, tmp_path)
        assert r.returncode != 0 and msg in r.stderr, (spec, r.stderr)
    (tmp_path / "short.bin").write_bytes(b"\0" * 8)
    r = _run(harness, ok + "arg in 1 64 1 4 short.bin\n", tmp_path)
    assert r.returncode == 2 and "wrong size" in r.stderr
