"""One Bi-Teacher training step written from METHOD.md alone, as plain functions of a parameter dict.

It shares no code with `nasbnn_hw.nn.supernet` / `nasbnn_hw.nn.binary_ops`: only the parameter names (the
official checkpoint layout, METHOD.md "Exactness details") and the `Arch` / `SearchSpace` descriptions.
The tests compare every parameter gradient of the project's trainer with the gradients of `reference_step`.
Two details METHOD.md leaves open follow the project (and, by the official comparison, the official code):
the binary per-filter scale mean(|w_n|) is a constant in the backward pass, and the stem's LSQ gradient
scale counts the elements of the cropped (active) weight.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _Sign(torch.autograd.Function):
    """sign forward; backward ApproxSign 2 - 2|x| for |x| < 1 (activations) or clipped STE (weights)."""

    @staticmethod
    def forward(ctx, x, approx: bool):
        ctx.save_for_backward(x)
        ctx.approx = approx
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.approx:
            return g * torch.where(x.abs() < 1, 2 - 2 * x.abs(), torch.zeros_like(x)), None
        return g * (x.abs() <= 1).to(g.dtype), None


class _Round(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def _bias(p, name, c):
    return p[f"{name}.bias"][:, :c]


def _bn(p, name, h):
    c = h.size(1)
    return F.batch_norm(h, None, None, p[f"{name}.bn.weight"][:c], p[f"{name}.bn.bias"][:c], True, 0.0, 1e-5)


def _prelu(p, name, h):
    return F.prelu(h, p[f"{name}.prelu.weight"][: h.size(1)])


def _kxk_matmul(w, m):
    o, i, k, _ = w.shape
    return (w.reshape(o, i, k * k) @ m.t()).reshape(o, i, k, k)


def _standardise(w):
    flat = w.reshape(w.size(0), -1)
    mean = flat.mean(1)
    std = ((flat - mean[:, None]) ** 2).sum(1).div(flat.size(1) - 1).sqrt()
    return (w - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)


def conv_weight(p, name, kernels, in_c, out_c, k, groups, binary, weight_norm, bi_transformation):
    """The subnet weight of one binary conv: (weight used by the conv, binary weight, fp weight)."""
    shared = p[f"{name}.weight"]
    w = shared[:out_c]
    cur = w.size(-1)
    for small in sorted((s for s in kernels if k <= s < cur), reverse=True):  # one transform per step
        st = (cur - small) // 2
        w = _kxk_matmul(w[:, :, st:st + small, st:st + small], p[f"{name}.matrix_{cur}to{small}"])
        cur = small
    sub_in = in_c // groups
    ratio = shared.size(1) // sub_in
    per_group = out_c // groups
    chunks = [w[i * per_group:(i + 1) * per_group, (i % ratio) * sub_in:(i % ratio) * sub_in + sub_in]
              for i in range(groups)]
    w = torch.cat(chunks, 0)
    fp = _standardise(w) if weight_norm else w
    b = w
    if bi_transformation and k == max(kernels) and k > 1:
        b = _kxk_matmul(b, p[f"{name}.fp2bin_{k}"])
    if weight_norm:
        b = _standardise(b)
    scale = b.abs().mean(dim=(1, 2, 3)).detach()
    b = _Sign.apply(b, False) * scale.view(-1, 1, 1, 1)
    return (b if binary else fp), b, fp


def forward(p, space, arch, x, binary, weight_norm=True, bi_transformation=True, wd_terms=None):
    """Logits of `arch`; with `wd_terms` a list, each binary conv appends its weight-distillation MSE."""
    c = arch.stages[0][0].channels
    w, s = p["features.0.0.conv.weight"][:c], p["features.0.0.conv.w_scale"][:c]
    g = 1.0 / math.sqrt(w.numel() * 127)
    s = (s - s * g).detach() + s * g
    q = torch.clamp(_Round.apply(w / s.view(-1, 1, 1, 1)), -128, 127)
    k0 = w.size(-1)
    h = F.conv2d(x, q * s.view(-1, 1, 1, 1), None, space.stages[0].stride, k0 // 2)
    h = _bn(p, "features.0.0.bn", h) + _bias(p, "features.0.0.move1", c)
    x = _prelu(p, "features.0.0.relu", h) + _bias(p, "features.0.0.move2", c)
    for si in range(1, len(space.stages)):
        st = space.stages[si]
        for bi, blk in enumerate(arch.stages[si]):
            pre = f"features.{si}.{bi}"
            c_in, c_out, stride = x.size(1), blk.channels, (st.stride if bi == 0 else 1)
            wk, wb, wf = conv_weight(p, f"{pre}.binary_conv", st.kernel, c_in, c_in, blk.kernel, blk.groups1,
                                     binary, weight_norm, bi_transformation)
            w1, wb1, wf1 = conv_weight(p, f"{pre}.binary_conv1x1", (1,), c_in, c_out, 1, blk.groups2, binary,
                                       weight_norm, bi_transformation)
            if wd_terms is not None:
                for b, f in ((wb, wf), (wb1, wf1)):
                    f = f.detach()
                    wd_terms.append(F.mse_loss(b / b.pow(2).mean(dim=(1, 2, 3), keepdim=True),
                                               f / f.pow(2).mean(dim=(1, 2, 3), keepdim=True)))
            a = _Sign.apply(x + _bias(p, f"{pre}.move11", c_in), True)
            h = _bn(p, f"{pre}.bn1", F.conv2d(a, wk, None, stride, blk.kernel // 2, 1, blk.groups1))
            h = h + (F.avg_pool2d(x, 2, 2) if stride == 2 else x)
            y = _prelu(p, f"{pre}.prelu1", h + _bias(p, f"{pre}.move12", c_in)) + _bias(p, f"{pre}.move13", c_in)
            a = _Sign.apply(y + _bias(p, f"{pre}.move21", c_in), True)
            h = _bn(p, f"{pre}.bn2", F.conv2d(a, w1, None, 1, 0, 1, blk.groups2))
            h = h + torch.cat([y] * round(c_out / c_in + 0.5), 1)[:, :c_out]
            x = _prelu(p, f"{pre}.prelu2", h + _bias(p, f"{pre}.move22", c_out)) + _bias(p, f"{pre}.move23", c_out)
    x = x.mean(dim=(2, 3))
    return x @ p["fc.weight"][:, : x.size(1)].t() + p["fc.bias"]


def reference_step(params: dict, space, teacher, students, x, y, *, bi_teacher=True, weight_norm=True,
                   bi_transformation=True, label_smoothing=0.1, weight_distill=0.0) -> dict:
    """Gradients of one Bi-Teacher step (METHOD.md): {name: grad or None}."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    t_logits = forward(p, space, teacher, x, binary=not bi_teacher, weight_norm=weight_norm,
                       bi_transformation=bi_transformation)
    loss = F.cross_entropy(t_logits, y, label_smoothing=label_smoothing)
    soft = F.softmax(t_logits.detach(), 1)
    for arch in students:
        wd = [] if weight_distill else None
        s_logits = forward(p, space, arch, x, binary=True, weight_norm=weight_norm,
                           bi_transformation=bi_transformation, wd_terms=wd)
        loss = loss + F.kl_div(F.log_softmax(s_logits, 1), soft, reduction="batchmean")
        if wd:
            loss = loss + weight_distill * sum(wd)
    loss.backward()
    return {k: v.grad for k, v in p.items()}
