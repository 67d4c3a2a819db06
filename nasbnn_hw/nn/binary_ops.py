"""Binary building blocks of the weight-sharing supernet (METHOD.md, "Search space" and "Weight sharing").

Every module holds its parameters at the maximum shape and slices them for the active subnet. Parameter
names follow the official NAS-BNN layout so its checkpoints load unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _SignApprox(torch.autograd.Function):
    """sign(x) forward; ApproxSign gradient 2 - 2|x| for |x| < 1, else 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return x.abs().mul_(-2.0).add_(2.0).clamp_(min=0.0).mul_(g)  # one allocation


class _SignClippedSTE(torch.autograd.Function):
    """sign(w) forward; straight-through gradient where |w| <= 1."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return torch.sign(w)

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return g * (w.abs() <= 1).to(g.dtype)


def binary_activation(x: torch.Tensor) -> torch.Tensor:
    return _SignApprox.apply(x)


def binary_weight_sign(w: torch.Tensor) -> torch.Tensor:
    return _SignClippedSTE.apply(w)


class LearnableBias(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return x + self.bias[:, : x.size(1)]


class DynamicBatchNorm2d(nn.Module):
    """BatchNorm at the maximum width, sliced to the input's channels. With `bn.momentum = None` the
    running statistics become a cumulative average (used for BN recalibration)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        bn, c = self.bn, x.size(1)
        if bn.training and _distributed_world() > 1:
            return self._sync_forward(x)
        if bn.training:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        else:
            factor = 0.0
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                            bn.training, factor, bn.eps)


    def _sync_forward(self, x):
        """Batch statistics over the global batch of all ranks (differentiable all-reduce), so that a
        distributed step equals a single-process step on the same global batch."""
        bn, c = self.bn, x.size(1)
        local = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)),
                           x.new_tensor([x.numel() / c])])
        tot = _AllReduceSum.apply(local)
        n = tot[-1]
        mean = tot[:c] / n
        var = (tot[c:2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean[:c].mul_(1 - f).add_(mean.detach(), alpha=f)
            bn.running_var[:c].mul_(1 - f).add_(var.detach() * n / (n - 1), alpha=f)
        inv = torch.rsqrt(var + bn.eps) * bn.weight[:c]
        return (x - mean.view(1, -1, 1, 1)) * inv.view(1, -1, 1, 1) + bn.bias[:c].view(1, -1, 1, 1)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t):
        import torch.distributed as dist
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, g):
        import torch.distributed as dist
        g = g.clone()
        dist.all_reduce(g)
        return g


def _distributed_world() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class DynamicPReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.prelu = nn.PReLU(channels, init=0.25)

    def forward(self, x):
        return F.prelu(x, self.prelu.weight[: x.size(1)])


def _filter_std(centred: torch.Tensor) -> torch.Tensor:
    """Unbiased std of each output filter from its centred weight: the sum of squares (one fast reduction;
    `Tensor.std`'s Welford pass took 20.7 ms on a 1536x192x5x5 weight, mean + sum of squares 1.9 ms)."""
    return centred.square().sum(dim=(1, 2, 3), keepdim=True).div_(centred[0].numel() - 1).sqrt_()


def standardise(w: torch.Tensor) -> torch.Tensor:
    """Weight normalisation: each output filter to zero mean and unit (unbiased) std over (in, kh, kw)."""
    c = w - w.mean(dim=(1, 2, 3), keepdim=True)
    return c / _filter_std(c)


# The float32 just above 1: hardtanh_backward keeps the gradient where -_ABOVE_ONE < w < _ABOVE_ONE, which
# for float32 weights is exactly |w| <= 1 (the STE region).
_ABOVE_ONE = 1.0000001192092896


class _TrainWeight(torch.autograd.Function):
    """The training weight of one binary conv in one autograd node: [standardise] -> [sign * scale].

    Forward computes exactly what `standardise`, `binary_weight_sign` and the per-filter scale compute
    (the same operations in the same order, so the values are bit-identical); backward is the closed form
    of their gradient (scale detached, STE mask |w_n| <= 1, then the standardisation's Jacobian
    (g - mean(g) - w_n * sum(g * w_n) / (N - 1)) / std), a handful of passes over the weight instead of
    autograd's chain of sub/div/std/abs/sign backward nodes and their saved intermediates. On an imagenet
    step at batch 2 that chain was about a third of the step (torch.profiler)."""

    @staticmethod
    def forward(ctx, w, normalise: bool, binary: bool):
        dims = (1, 2, 3)
        std = None
        if normalise:  # the values of `standardise`, in place
            w = w - w.mean(dim=dims, keepdim=True)
            std = _filter_std(w)
            w.div_(std)
        scale = w.abs().mean(dim=dims) if binary else None
        ctx.save_for_backward(w, std, scale)
        ctx.normalise, ctx.binary = normalise, binary
        if not binary:
            return w
        ctx.mark_non_differentiable(scale)
        return torch.sign(w).mul_(scale.view(-1, 1, 1, 1)), scale

    @staticmethod
    def backward(ctx, g, *_):
        wn, std, scale = ctx.saved_tensors
        if ctx.binary:  # STE: g * scale where |w_n| <= 1 in one pass (bool mask + masked_fill_: 35 ms vs 2.1 ms)
            g = torch.ops.aten.hardtanh_backward(g * scale.view(-1, 1, 1, 1), wn, -_ABOVE_ONE, _ABOVE_ONE)
        elif ctx.normalise:
            g = g.clone()
        if not ctx.normalise:
            return g, None, None
        n = wn[0].numel()
        dims = (1, 2, 3)
        dot = (g * wn).sum(dim=dims, keepdim=True)
        g.sub_(g.mean(dim=dims, keepdim=True))
        return g.addcmul_(wn, dot, value=-1.0 / (n - 1)).div_(std), None, None


class _SharedSlice(torch.autograd.Function):
    """`weight[:rows, :cols]` whose backward adds the slice's gradient into `weight.grad` in place.

    Autograd's slice backward materialises a zero gradient of the whole shared weight for every subnet
    and adds it into `.grad`: for the imagenet supernet, 260 MB zero-filled and added four
    times per Bi-Teacher step. Here `.grad` is allocated once per step (it starts as zeros) and each
    subnet adds only the block it used. The parameter's gradient is the same sum; the difference from
    plain slicing is that it reaches `.grad` from this node, not through autograd's accumulation, so
    only `.backward()` sees it (`torch.autograd.grad` would not): the trainer's own path."""

    @staticmethod
    def forward(ctx, weight, rows: int, cols: int):
        ctx.weight, ctx.rows, ctx.cols = weight, rows, cols
        return weight[:rows, :cols]

    @staticmethod
    def backward(ctx, g):
        w = ctx.weight
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        w.grad[: ctx.rows, : ctx.cols].add_(g)
        return None, None, None


def train_weight(w: torch.Tensor, normalise: bool, binary: bool):
    """(weight the conv uses, per-filter scale or None) through the fused `_TrainWeight` node: the FP
    path's (standardised) weight, or the binary path's sign weight already times its scale."""
    if binary:
        return _TrainWeight.apply(w, normalise, True)
    return (_TrainWeight.apply(w, True, False) if normalise else w), None


class DynamicBinaryConv2d(nn.Module):
    """Shared binary conv: weight (max_out, max_in / min_groups, max_k, max_k).

    Subnet weight = first `out` filters → progressive centre-crop + learned kernel transformation per
    kernel-size step (e.g. `matrix_5to3`) → group crop. Weight normalisation standardises each filter in
    both paths. The full-precision path (Bi-Teacher's teacher) uses that standardised weight itself; the
    binary path first applies the bi-transformation `fp2bin_<max_k>` (only at the largest kernel), then
    standardises and takes the sign, times the per-filter scale mean(|w_n|).
    """

    def __init__(self, max_in: int, max_out: int, kernels: tuple[int, ...], min_groups: int,
                 weight_norm: bool = True, bi_transformation: bool = True):
        super().__init__()
        self.kernels = tuple(sorted(kernels))
        self.max_k = self.kernels[-1]
        self.weight_norm = weight_norm
        self.bi_transformation = bi_transformation and self.max_k > 1
        self.weight = nn.Parameter(torch.empty(max_out, max_in // min_groups, self.max_k, self.max_k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.weight.data.mul_(1e-2 / self.weight.data.abs().mean())  # small latent weights: STE region
        for big, small in zip(self.kernels[:0:-1], self.kernels[-2::-1]):
            self.register_parameter(f"matrix_{big}to{small}", nn.Parameter(torch.eye(small * small)))
        if self.bi_transformation:
            self.register_parameter(f"fp2bin_{self.max_k}", nn.Parameter(torch.eye(self.max_k ** 2)))
        self.register_buffer("scaling_factor", torch.zeros(max_out, 1, 1, 1))
        self._group_index: dict[tuple, torch.Tensor] = {}

    def _kernel_crop(self, w: torch.Tensor, k: int) -> torch.Tensor:
        cur = self.max_k
        for small in reversed(self.kernels):
            if small >= cur:
                continue
            if cur <= k:
                break
            start = (cur - small) // 2
            w = w[:, :, start:start + small, start:start + small]
            m = getattr(self, f"matrix_{cur}to{small}")
            o, i = w.shape[:2]
            w = (w.reshape(o, i, small * small) @ m.t()).reshape(o, i, small, small)
            cur = small
        return w

    def _group_crop(self, w: torch.Tensor, in_c: int, groups: int) -> torch.Tensor:
        sub_in = in_c // groups
        ratio = self.weight.size(1) // sub_in
        out_c = w.size(0)
        if groups == 1 or ratio == 1:
            return w[:, :sub_in]
        key = (out_c, in_c, groups, w.device)
        idx = self._group_index.get(key)
        if idx is None:
            per_group = out_c // groups
            chunk = torch.arange(out_c, device=w.device) // per_group
            idx = ((chunk % ratio) * sub_in)[:, None] + torch.arange(sub_in, device=w.device)[None, :]
            self._group_index[key] = idx
        return torch.gather(w, 1, idx[:, :, None, None].expand(-1, -1, w.size(2), w.size(3)))

    def _cropped(self, in_c: int, out_c: int, k: int, groups: int, binary: bool,
                 shared_grad: bool = False) -> torch.Tensor:
        """The subnet's latent weight before weight normalisation: crops, kernel transforms, and on the
        binary path the bi-transformation. `shared_grad`: the slice's gradient goes into `weight.grad` in
        place (`_SharedSlice`)."""
        sub_in = in_c // groups
        cols = sub_in * min(groups, self.weight.size(1) // sub_in)  # columns used
        if shared_grad and self.weight.requires_grad and torch.is_grad_enabled():
            w = _SharedSlice.apply(self.weight, out_c, cols)
        else:
            w = self.weight[:out_c, :cols]
        w = self._kernel_crop(w, k)
        w = self._group_crop(w, in_c, groups)
        if binary and self.bi_transformation and k == self.max_k:
            m = getattr(self, f"fp2bin_{k}")
            o, i = w.shape[:2]
            w = (w.reshape(o, i, k * k) @ m.t()).reshape(o, i, k, k)
        return w

    def _record_scale(self, scale: torch.Tensor):
        if self.training:
            with torch.no_grad():
                self.scaling_factor[: scale.numel(), 0, 0, 0] = scale

    def subnet_weight(self, in_c: int, out_c: int, k: int, groups: int, binary: bool):
        """(weight, scale): binary → (sign weight with STE, per-filter scale (out,)); else (fp weight, None).
        Composed of separate autograd operations; `forward` uses `train_weight`, the same values in one
        node (tests check the two agree, values and gradients)."""
        w = self._cropped(in_c, out_c, k, groups, binary)
        if not binary:  # the Bi-Teacher's FP weight: standardised too, no fp2bin, no sign, no scale
            return (standardise(w) if self.weight_norm else w), None
        if self.weight_norm:
            w = standardise(w)
        scale = w.abs().mean(dim=(1, 2, 3)).detach()
        self._record_scale(scale)
        return binary_weight_sign(w), scale

    def weight_distill_loss(self, in_c: int, out_c: int, k: int, groups: int) -> torch.Tensor:
        """METHOD.md's optional weight-distillation term for one layer (without its 0.1 factor): the MSE
        between the binary weight and the (detached) FP weight, each divided by its mean square per filter."""
        wb, scale = self.subnet_weight(in_c, out_c, k, groups, binary=True)
        wb = wb * scale.view(-1, 1, 1, 1)
        wf = self.subnet_weight(in_c, out_c, k, groups, binary=False)[0].detach()
        wb = wb / wb.pow(2).mean(dim=(1, 2, 3), keepdim=True)
        wf = wf / wf.pow(2).mean(dim=(1, 2, 3), keepdim=True)
        return F.mse_loss(wb, wf)

    def forward(self, x, out_c: int, k: int, groups: int, stride: int, binary: bool = True):
        w = self._cropped(x.size(1), out_c, k, groups, binary, shared_grad=True)
        w, scale = train_weight(w, self.weight_norm, binary)  # binary: scaled (small) weight, not output
        if scale is not None:
            self._record_scale(scale)
        return F.conv2d(x, w, None, stride, k // 2, 1, groups)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class QuantStemConv(nn.Module):
    """8-bit weight conv with a learned per-output-channel step (LSQ); float activations."""

    def __init__(self, in_ch: int, max_out: int, k: int, stride: int):
        super().__init__()
        self.k, self.stride = k, stride
        self.weight = nn.Parameter(torch.empty(max_out, in_ch, k, k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.w_scale = nn.Parameter(torch.ones(max_out))
        self.register_buffer("w_init_state", torch.zeros(1))
        with torch.no_grad():
            self.w_scale.copy_(self._initial_step())

    def _initial_step(self):
        w = self.weight.detach().flatten(1)
        m, s = w.mean(1), w.std(1)
        return torch.maximum((m - 3 * s).abs(), (m + 3 * s).abs()) / 2 ** 7

    def quantized(self, out_c: int):
        """(integer weight as float in [-128, 127], step (out,)) for the first `out_c` filters."""
        w, s = self.weight[:out_c], self.w_scale[:out_c]
        g = 1.0 / math.sqrt(w.numel() * 127)
        s = (s - s * g).detach() + s * g
        q = torch.clamp(_RoundSTE.apply(w / s.view(-1, 1, 1, 1)), -128, 127)
        return q, s

    def forward(self, x, out_c: int):
        if self.training and self.w_init_state.item() == 0:
            with torch.no_grad():
                self.w_scale.copy_(self._initial_step())
                self.w_init_state.fill_(1)
        q, s = self.quantized(out_c)
        return F.conv2d(x, q * s.view(-1, 1, 1, 1), None, self.stride, self.k // 2)


def shortcut_tile(x: torch.Tensor, out_c: int) -> torch.Tensor:
    """Channel increase in a shortcut: concatenated copies of x, cut to out_c."""
    c = x.size(1)
    if out_c == c:
        return x
    return torch.cat([x] * (-(-out_c // c)), dim=1)[:, :out_c]
