"""The agreement check tells rounding from a bug: a binary activation at an exact zero (PyTorch's sign(0) = 0,
the kernels' +1) or a sign flip of a value within rounding of zero is found and named; any other difference
is reported as unexplained."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nasbnn_hw.core.sampling import largest
from nasbnn_hw.core.space import get_space
from nasbnn_hw.deploy.agreement import _block, _Replay, explain, sign_inputs
from nasbnn_hw.deploy.onnx_net import check_agreement
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet


@pytest.fixture(scope="module")
def subnet():
    torch.manual_seed(0)
    model = extract_subnet(SuperBNN(get_space("small16")).eval(), largest(get_space("small16"))).eval()
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x


def test_replay_is_the_static_subnets_forward(subnet):
    model, x = subnet
    with torch.no_grad():
        h = model.stem(x)
        for b in model.blocks:
            assert torch.equal(_block(b, h, lambda t, part: torch.sign(t)), b(h))
            h = b(h)
        assert np.array_equal(_Replay(model, x).ref, model(x).numpy())
    assert len(sign_inputs(model, x)) == 2 * len(model.blocks)


def test_a_flip_of_the_value_nearest_zero_is_found_and_named(subnet):
    model, x = subnet
    rp = _Replay(model, x)
    # the value nearest zero (relative to its activation) among the later blocks: flipping it moves the logits
    best = min(((float(t.abs().flatten()[i] / t.abs().max()), k, i) for k, t in enumerate(rp.pre) if k >= 2
                for i in [int(t.abs().flatten().argmin())]))
    rel, k, i = best
    got = rp.run({k: torch.tensor([i])})
    assert np.abs(got - rp.ref).max() / np.abs(rp.ref).max() > 1e-4, "pick a flip that matters"
    e = explain(model, x, got, rel_zero=rel * 1.01)
    assert e.explained and len(e.flips) == 1 and e.err_after <= 1e-6
    f = e.flips[0]
    assert (f.block, f.conv) == (k // 2, "1x1" if k % 2 else f"{model.blocks[k // 2].binary_conv.kernel}x"
                                 f"{model.blocks[k // 2].binary_conv.kernel}")
    assert np.ravel_multi_index(f.position, tuple(rp.pre[k].shape)) == i
    assert "rounding, not a bug" in str(e)
    # the agreement check accepts it, saying why; without the model it refuses
    check = check_agreement("tvm", got, rp.ref, model, x)
    assert "sign flip" in check["explained"]
    with pytest.raises(NasBnnError, match="disagrees"):
        check_agreement("tvm", got, rp.ref)


def test_an_exact_zero_is_the_kernels_plus_one(subnet):
    model, x = subnet
    import copy
    m = copy.deepcopy(model)
    with torch.no_grad():
        h = m.stem(x)
        m.blocks[0].move11[0, 3, 0, 0] = -h[0, 3, 5, 7]   # x + move = 0 exactly there
    rp = _Replay(m, x)
    assert int((rp.pre[0] == 0).sum()) >= 1
    got = rp.run({})
    assert np.abs(got - rp.ref).max() / np.abs(rp.ref).max() > 1e-4, "the planted zero must move the logits"
    e = explain(m, x, got)
    assert e.explained and e.zeros >= 1 and not e.flips and "exact zero" in str(e)


def test_a_real_difference_is_not_explained(subnet):
    model, x = subnet
    ref = _Replay(model, x).ref
    got = ref + np.random.default_rng(0).normal(0, 0.05 * np.abs(ref).max(), ref.shape).astype(np.float32)
    e = explain(model, x, got, max_candidates=16, max_flips=2)
    assert not e.explained and "likely a bug" in str(e)
    with pytest.raises(NasBnnError, match="likely a bug"):
        check_agreement("tvm", got, ref, model, x)
