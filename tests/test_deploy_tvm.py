"""Whole subnets compiled into one TVM function give the logits of the PyTorch subnet."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from _bnn_reference import StaticSubnet
from nasbnn_hw.deploy.tvm_net import DeployError, TvmSubnet, compile_random_subnet, compile_subnet, subnet_layers
from nasbnn_hw.core.layers import arch_layers
from nasbnn_hw.core.sampling import largest, sample_uniform, smallest
from nasbnn_hw.core.space import get_space


def _check(model, net, space, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, space.in_channels, space.resolution, space.resolution, generator=g)
    with torch.no_grad():
        ref = model(x).numpy()
    got = net(x)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel <= 1e-4, rel
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("which", ["largest", "smallest", "random"])
def test_standin_subnet_matches_pytorch(which):
    space = get_space("small16")
    arch = {"largest": largest, "smallest": smallest}.get(which, lambda s: sample_uniform(s, random.Random(5)))(space)
    model = StaticSubnet(arch, space, seed=1)
    layers = subnet_layers(model, space.resolution)
    assert layers == arch_layers(arch, space)
    net = compile_subnet(model, batch=2, resolution=space.resolution)
    _check(model, net, space)


def test_real_extracted_subnet_matches_pytorch():
    import nasbnn_hw.nn.supernet as sn
    space = get_space("small16")
    torch.manual_seed(0)
    sup = sn.SuperBNN(space)
    arch = sample_uniform(space, random.Random(3))
    # give BatchNorm statistics away from the identity so the folding is exercised
    with torch.no_grad():
        for m in sup.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    sup.eval()
    model = sn.extract_subnet(sup, arch)
    net = compile_subnet(model, batch=1)
    _check(model, net, space, batch=1, seed=2)


def test_export_and_load_roundtrip(tmp_path):
    space = get_space("small16")
    model = StaticSubnet(smallest(space), space, seed=2)
    net = compile_subnet(model, batch=1, resolution=space.resolution)
    path = net.export(tmp_path / "net.so")
    again = TvmSubnet.load(path)
    x = np.random.default_rng(0).standard_normal(net.input_shape).astype(np.float32)
    np.testing.assert_array_equal(again(x), net(x))
    with pytest.raises(DeployError, match="compiled for"):
        again(np.zeros((3, 1, 16, 16), np.float32))
    with pytest.raises(DeployError, match="cannot read"):
        TvmSubnet.load(tmp_path / "missing.so")


def test_avx2_build_with_nibble_lookups_matches_pytorch_and_reloads(tmp_path):
    """On an AVX2 target most layers take the nibble strategy: logits as PyTorch's, the weight layout
    recorded in the export so the file loads again; an export without that record holds 64-bit words."""
    import io
    import json
    from nasbnn_hw.deploy.kernels import schedule as S
    space = get_space("small16")
    model = StaticSubnet(largest(space), space, seed=4)
    avx2 = {"kind": "llvm", "mcpu": "haswell"}
    net = compile_subnet(model, target=avx2, batch=1, resolution=space.resolution)
    kinds = [d and d["strategy"] for d in net.schedules]
    assert kinds.count("nibble") >= len(kinds) // 2 and kinds[0] is None and kinds[-1] is None
    _check(model, net, space, batch=1, seed=3)
    again = TvmSubnet.load(net.export(tmp_path / "nib.so"))
    x = np.random.default_rng(0).standard_normal(net.input_shape).astype(np.float32)
    np.testing.assert_array_equal(again(x), net(x))
    word = compile_subnet(model, target=avx2, batch=1, resolution=space.resolution, schedules=lambda c: S.AVX2_X86)
    npz = word.export(tmp_path / "word.so").with_suffix(".npz")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    del meta["schedules"]                          # as written before schedules were recorded
    buf = io.BytesIO()
    np.savez(buf, **{**arrays, "__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    npz.write_bytes(buf.getvalue())
    np.testing.assert_allclose(TvmSubnet.load(tmp_path / "word.so")(x), net(x), rtol=1e-5, atol=1e-5)


def test_avx2_build_with_paired_groups_matches_pytorch_and_reloads(tmp_path):
    """A small16 subnet with grouped layers of 16 channels per group, which the AVX2 default builds with
    paired-group lookups (channels in their own order inside the kernel): logits as PyTorch's, and the
    exported file (weights in that order) loads and computes the same."""
    import random

    from nasbnn_hw.core.layers import arch_layers
    from nasbnn_hw.core.sampling import sample_uniform
    from nasbnn_hw.deploy.kernels import schedule as S
    space, rng = get_space("small16"), random.Random(0)
    arch = next(a for a in (sample_uniform(space, rng) for _ in range(200))
                if sum(c.kind == "bconv" and S.PAIRS_X86.fits(c) for c in arch_layers(a, space)) >= 2)
    model = StaticSubnet(arch, space, seed=5)
    net = compile_subnet(model, target={"kind": "llvm", "mcpu": "haswell"}, batch=1, resolution=space.resolution)
    assert "pairs" in [d and d["strategy"] for d in net.schedules]
    _check(model, net, space, batch=1, seed=6)
    again = TvmSubnet.load(net.export(tmp_path / "pairs.so"))
    x = np.random.default_rng(1).standard_normal(net.input_shape).astype(np.float32)
    np.testing.assert_array_equal(again(x), net(x))


def test_random_subnet_args_for_runners():
    space = get_space("small16")
    net = compile_random_subnet(largest(space), space)
    specs = net.arg_specs()
    assert specs[-1].is_output and specs[-1].shape == (1, space.num_classes)
    assert len(specs) == len(net.params) + 2 and all(s.data is not None for s in specs[:-1])
    assert np.isfinite(net(specs[0].data)).all()


def test_not_a_subnet_is_rejected():
    with pytest.raises(DeployError, match="no 'stem'"):
        compile_subnet(torch.nn.Linear(3, 3))


def test_whole_subnet_for_aarch64_runs_under_qemu(tmp_path):
    from nasbnn_hw.profiling.runners.process import HarnessProcessRunner
    space = get_space("small16")
    model = StaticSubnet(sample_uniform(space, random.Random(8)), space, seed=3)
    net = compile_subnet(model, target="aarch64-neon", resolution=space.resolution)
    lib = net.export(tmp_path / "net_aarch64.so")
    x = np.random.default_rng(1).standard_normal(net.input_shape).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    board = HarnessProcessRunner("aarch64", "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"])
    (got,) = board.time_library(lib, net.arg_specs(x), warmup=0, repeat=1, return_outputs=True).outputs
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4 and (got.argmax(1) == ref.argmax(1)).all()


def test_whole_subnet_cuda_source():
    space = get_space("small16")
    net = compile_random_subnet(smallest(space), space, target="cuda-sm80")
    src = net.executable.mod.imports[0].inspect_source()
    assert src.count("__global__") >= 3 * len(net.layers) - 3 and "__popc" in src
