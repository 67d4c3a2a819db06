import random

import numpy as np

import pytest
import torch

from nasbnn_hw import get_space, largest, sample_uniform, smallest
from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if t.dtype.is_floating_point:
                if "running_var" in name:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif "matrix_" in name or "fp2bin" in name:
                    t.copy_(torch.eye(t.size(0)) + 0.05 * torch.randn(t.shape, generator=g))
                elif "w_scale" in name:
                    t.copy_(torch.rand(t.shape, generator=g) * 0.01 + 0.005)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)


@pytest.mark.parametrize("space_name,res", [("small", None), ("imagenet", 32)])
def test_extracted_subnet_equals_supernet(space_name, res):
    sp = get_space(space_name)
    sp = sp.with_resolution(res) if res else sp
    net = SuperBNN(sp)
    _randomize(net)
    net.eval()
    x = torch.randn(3, sp.in_channels, sp.resolution, sp.resolution)
    archs = [largest(sp), smallest(sp)] + [sample_uniform(sp, random.Random(i)) for i in range(4)]
    for a in archs:
        with torch.no_grad():
            ref = net(x, a)
            sub = extract_subnet(net, a)
            out = sub(x)
        assert torch.equal(ref, out)
        n_sub = sum(t.numel() for t in sub.state_dict().values())
        n_super = sum(t.numel() for t in net.state_dict().values())
        assert n_sub < n_super
    # the static subnet holds binary weights and 8-bit stem weights
    sub = extract_subnet(net, archs[2])
    assert set(sub.blocks[0].binary_conv.sign_weight.unique().tolist()) <= {-1.0, 1.0}
    assert sub.stem.weight_int.dtype == torch.int8


def test_subnets_share_weights_and_differ():
    sp = get_space("small")
    net = SuperBNN(sp).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        a, b = net(x, largest(sp)), net(x, smallest(sp))
    assert a.shape == b.shape == (4, 10)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("wn,bt", [(True, True), (False, True), (True, False), (False, False)])
def test_strategies_switch_off_and_train(wn, bt):
    sp = get_space("small16")
    net = SuperBNN(sp, weight_norm=wn, bi_transformation=bt).train()
    has_fp2bin = any("fp2bin" in k for k in net.state_dict())
    assert has_fp2bin == bt
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    for binary in (False, True):
        net.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x, largest(sp), binary_weights=binary), y)
        loss.backward()
        g = net.features[2][0].binary_conv.weight.grad
        assert g is not None and g.abs().sum() > 0
        if bt:
            fg = net.features[2][0].binary_conv.fp2bin_5.grad
            assert (fg is not None and fg.abs().sum() > 0) == binary


def test_weight_norm_changes_binary_weights():
    sp = get_space("small16")
    torch.manual_seed(0)
    a = SuperBNN(sp, weight_norm=True)
    b = SuperBNN(sp, weight_norm=False)
    b.load_state_dict(a.state_dict())
    conv_a, conv_b = a.features[1][0].binary_conv, b.features[1][0].binary_conv
    with torch.no_grad():
        conv_a.weight.add_(torch.linspace(0, 1, conv_a.weight.size(0)).view(-1, 1, 1, 1))
        conv_b.weight.copy_(conv_a.weight)
    wa, _ = conv_a.subnet_weight(16, 16, 3, 1, True)
    wb, _ = conv_b.subnet_weight(16, 16, 3, 1, True)
    assert not torch.equal(wa, wb)  # mean subtraction flips signs


def test_group_crop_follows_official_rule():
    sp = get_space("imagenet")
    net = SuperBNN(sp, weight_norm=False)  # the FP path is then the cropped weight itself
    conv = net.features[3][0].binary_conv  # weight (192, 96, 5, 5): max_in 192, min groups 2
    w, _ = conv.subnet_weight(128, 128, 5, 4, binary=False)  # sub_in 32, ratio 3
    full = conv.weight
    assert w.shape == (128, 32, 5, 5)
    for i in range(4):
        col = (i % 3) * 32
        assert torch.equal(w[i * 32:(i + 1) * 32], full[i * 32:(i + 1) * 32, col:col + 32])


def test_kernel_transform_5to3():
    sp = get_space("imagenet")
    net = SuperBNN(sp, weight_norm=False)
    conv = net.features[2][0].binary_conv
    with torch.no_grad():
        conv.matrix_5to3.copy_(torch.randn(9, 9))
    w, _ = conv.subnet_weight(96, 96, 3, 1, binary=False)
    centre = conv.weight[:96, :96, 1:4, 1:4].reshape(96, 96, 9)
    assert torch.allclose(w, (centre @ conv.matrix_5to3.t()).reshape(96, 96, 3, 3))


def test_bn_recalibration_mode_cumulative():
    sp = get_space("small16")
    net = SuperBNN(sp).train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    xs = [torch.randn(16, 1, 16, 16) * (i + 1) for i in range(3)]
    with torch.no_grad():
        for x in xs:
            net(x, largest(sp))
    bn = net.features[0][0].bn.bn
    assert int(bn.num_batches_tracked) == 3
    assert bn.running_mean.abs().sum() > 0


def test_sign_gradients_follow_the_method():
    from nasbnn_hw.nn.binary_ops import binary_activation, binary_weight_sign
    x = torch.tensor([-1.5, -0.5, -0.1, 0.0, 0.3, 0.9, 1.2], requires_grad=True)
    y = binary_activation(x)
    assert torch.equal(y, torch.sign(x.detach()))
    y.backward(torch.full_like(x, 3.0))
    expected = 3.0 * torch.clamp(2 - 2 * x.detach().abs(), min=0)
    assert torch.allclose(x.grad, expected)
    w = torch.tensor([-2.0, -1.0, -0.2, 0.5, 1.0, 1.5], requires_grad=True)
    binary_weight_sign(w).sum().backward()
    assert torch.equal(w.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0]))


@pytest.mark.parametrize("weight_norm", [True, False])
@pytest.mark.parametrize("binary", [True, False])
def test_fused_training_weight_equals_composed_operations(weight_norm, binary):
    """`forward` prepares the weight in one autograd node (`_TrainWeight`, `_SharedSlice`); it must give the
    values of the separate operations exactly and their parameter gradients within float rounding, also
    summed over several subnets of different widths and kernels in one backward each."""
    from nasbnn_hw.nn.binary_ops import DynamicBinaryConv2d
    torch.manual_seed(0)
    conv = DynamicBinaryConv2d(64, 96, (3, 5), 2, weight_norm=weight_norm).train()
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) * 200)   # many weights on both sides of the STE edge
    subnets = [(64, 96, 5, 2), (32, 48, 3, 1), (64, 64, 3, 2)]
    xs = [torch.randn(2, c, 6, 6) for c, *_ in subnets]
    gs = [torch.randn(2, o, 6, 6) for _, o, *_ in subnets]

    def composed(x, in_c, out_c, k, groups):
        w, s = conv.subnet_weight(in_c, out_c, k, groups, binary)
        if s is not None:
            w = w * s.view(-1, 1, 1, 1)
        return torch.nn.functional.conv2d(x, w, None, 1, k // 2, 1, groups)

    grads, outs = [], []
    for fused in (False, True):
        conv.zero_grad(set_to_none=True)
        ys = []
        for x, g, (in_c, out_c, k, groups) in zip(xs, gs, subnets):
            y = conv(x, out_c, k, groups, 1, binary) if fused else composed(x, in_c, out_c, k, groups)
            y.backward(g)
            ys.append(y.detach())
        outs.append(ys)
        grads.append({n: p.grad.clone() for n, p in conv.named_parameters() if p.grad is not None})
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    assert grads[0].keys() == grads[1].keys() and "weight" in grads[1]
    for name in grads[0]:
        ref = grads[0][name]
        assert torch.allclose(grads[1][name], ref, rtol=1e-5, atol=1e-6 * ref.abs().max()), name


def test_fused_weight_ste_keeps_the_gradient_at_exactly_one():
    """The fused node's STE region is |w| <= 1 inclusive, like `binary_weight_sign`: weights of exactly
    +-1 keep their gradient, the next float32 above 1 loses it."""
    from nasbnn_hw.nn.binary_ops import train_weight
    above = float(np.nextafter(np.float32(1), np.float32(2)))
    w = torch.tensor([[-1.0, 1.0, above, -above, 0.5, 0.0]]).view(1, 6, 1, 1).requires_grad_()
    out, scale = train_weight(w, normalise=False, binary=True)
    out.backward(torch.ones_like(out))
    assert torch.equal(w.grad.flatten(), scale.item() * torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
