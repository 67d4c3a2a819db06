"""The project's Bi-Teacher step against a reference written from METHOD.md alone (tests/_method_reference.py):
every parameter gradient of one training step must equal the reference's, for every strategy switch."""
import itertools

import pytest
import torch

from _method_reference import forward, reference_step
from nasbnn_hw import get_space, largest
from nasbnn_hw.data.sets import Splits, TensorData
from nasbnn_hw.train.trainer import SupernetTrainer, TrainConfig

SPACE = get_space("small16")


def _randomize(net, seed=0):
    """Non-trivial weights: latent weights across the STE clip, transforms away from identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.named_parameters():
            if "matrix_" in name or "fp2bin" in name:
                t.copy_(torch.eye(t.size(0)) + 0.1 * torch.randn(t.shape, generator=g))
            elif "w_scale" in name:
                t.copy_(torch.rand(t.shape, generator=g) * 0.01 + 0.005)
            elif "prelu" in name or "relu" in name:
                t.copy_(torch.rand(t.shape, generator=g) * 0.5)
            elif name.endswith("bn.weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
        net.features[0][0].conv.w_init_state.fill_(1)  # keep the step set above


def _trainer(tmp_path, **kw):
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    d = TensorData(x, y, 10, "random")
    data = Splits(d, d, d)
    tr = SupernetTrainer(SPACE, data, TrainConfig(epochs=1, batch_size=8, seed=5, **kw), tmp_path, progress=False)
    _randomize(tr.net)
    tr.net.double()   # float64: no sign decided by rounding, so the comparison can be tight
    return tr, x.double(), y


# every combination of the three strategies; weight distillation with the default strategies, both teachers
CASES = [(*s, 0.0) for s in itertools.product([True, False], repeat=3)] + [(True, True, True, 0.1),
                                                                          (False, True, True, 0.1)]


@pytest.mark.parametrize("bi_teacher,weight_norm,bi_transformation,weight_distill", CASES)
def test_training_step_gradients_equal_the_method(tmp_path, bi_teacher, weight_norm, bi_transformation,
                                                  weight_distill):
    tr, x, y = _trainer(tmp_path, bi_teacher=bi_teacher, weight_norm=weight_norm,
                        bi_transformation=bi_transformation, weight_distill=weight_distill)
    params = {k: v.detach().clone() for k, v in tr.net.named_parameters()}
    students = tr._students(0)
    assert len({a for a in students}) == 3  # smallest + 2 random subnets, all different
    ref = reference_step(params, SPACE, largest(SPACE), students, x, y, bi_teacher=bi_teacher,
                         weight_norm=weight_norm, bi_transformation=bi_transformation,
                         weight_distill=weight_distill)
    tr.train_step(x, y)
    checked = 0
    for name, p in tr.net.named_parameters():
        if ref[name] is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        assert p.grad is not None, f"{name}: no gradient, the reference has one"
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
        checked += 1
    assert checked > 50


def test_full_precision_teacher_standardises_its_weight():
    """The defect of issue 17 in one line: the FP path's logits equal the reference's standardised-FP
    forward, and differ from those of the raw (unstandardised) weight."""
    from nasbnn_hw.nn.supernet import SuperBNN
    net = SuperBNN(SPACE)
    _randomize(net, seed=2)
    net.double().train()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    p = dict(net.named_parameters())
    with torch.no_grad():
        ours = net(x, largest(SPACE), binary_weights=False)
        ref = forward(p, SPACE, largest(SPACE), x, binary=False)
        raw = forward(p, SPACE, largest(SPACE), x, binary=False, weight_norm=False)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    assert (ours - raw).abs().max() > 1e-3


def test_weight_distill_is_off_by_default_and_changes_the_step(tmp_path):
    assert TrainConfig().weight_distill == 0.0
    a, x, y = _trainer(tmp_path / "a")
    b, _, _ = _trainer(tmp_path / "b", weight_distill=0.1)
    a.train_step(x, y), b.train_step(x, y)
    w = "features.2.0.binary_conv.weight"
    ga, gb = dict(a.net.named_parameters())[w].grad, dict(b.net.named_parameters())[w].grad
    assert not torch.allclose(ga, gb)
