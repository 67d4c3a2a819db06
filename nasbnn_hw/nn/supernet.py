"""The NAS-BNN weight-sharing binary supernet and static subnet extraction."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nasbnn_hw.core.arch import Arch, validate
from nasbnn_hw.nn import fused
from nasbnn_hw.nn.binary_ops import (DynamicBatchNorm2d, DynamicBinaryConv2d, DynamicPReLU, LearnableBias,
                         QuantStemConv, binary_activation, shortcut_tile)
from nasbnn_hw.core.space import SearchSpace


@dataclass(frozen=True)
class _BlockPlan:
    stage: int
    index: int
    in_c: int
    out_c: int
    kernel: int
    groups1: int
    groups2: int
    stride: int


class StemBlock(nn.Module):
    def __init__(self, in_ch: int, max_c: int, k: int, stride: int):
        super().__init__()
        self.conv = QuantStemConv(in_ch, max_c, k, stride)
        self.bn = DynamicBatchNorm2d(max_c)
        self.move1 = LearnableBias(max_c)
        self.relu = DynamicPReLU(max_c)
        self.move2 = LearnableBias(max_c)

    def forward(self, x, out_c: int):
        return self.move2(self.relu(self.move1(self.bn(self.conv(x, out_c)))))


class BinaryBlock(nn.Module):
    def __init__(self, max_in: int, max_out: int, kernels, min_g1: int, min_g2: int,
                 weight_norm: bool, bi_transformation: bool):
        super().__init__()
        self.move11 = LearnableBias(max_in)
        self.binary_conv = DynamicBinaryConv2d(max_in, max_in, kernels, min_g1, weight_norm, bi_transformation)
        self.bn1 = DynamicBatchNorm2d(max_in)
        self.move12 = LearnableBias(max_in)
        self.prelu1 = DynamicPReLU(max_in)
        self.move13 = LearnableBias(max_in)
        self.move21 = LearnableBias(max_in)
        self.binary_conv1x1 = DynamicBinaryConv2d(max_in, max_out, (1,), min_g2, weight_norm, bi_transformation)
        self.bn2 = DynamicBatchNorm2d(max_out)
        self.move22 = LearnableBias(max_out)
        self.prelu2 = DynamicPReLU(max_out)
        self.move23 = LearnableBias(max_out)

    def forward(self, x, p: _BlockPlan, binary_weights: bool):
        a = binary_activation(self.move11(x))
        h = self.bn1(self.binary_conv(a, p.in_c, p.kernel, p.groups1, p.stride, binary_weights))
        h = h + (F.avg_pool2d(x, 2, 2) if p.stride == 2 else x)
        y = self.move13(self.prelu1(self.move12(h)))
        a = binary_activation(self.move21(y))
        h = self.bn2(self.binary_conv1x1(a, p.out_c, 1, p.groups2, 1, binary_weights))
        h = h + shortcut_tile(y, p.out_c)
        return self.move23(self.prelu2(self.move22(h)))


class SuperBNN(nn.Module):
    """Weight-sharing binary supernet over a `SearchSpace`.

    `forward(x, arch, binary_weights=True)`: binary weights for students; `binary_weights=False` gives the
    Bi-Teacher's full-precision-weight path (activations stay binary). `weight_norm` and
    `bi_transformation` switch those strategies off for ablations.
    """

    def __init__(self, space: SearchSpace, weight_norm: bool = True, bi_transformation: bool = True):
        super().__init__()
        self.space = space
        self.weight_norm, self.bi_transformation = weight_norm, bi_transformation
        stem = space.stages[0]
        stages = [nn.ModuleList([StemBlock(space.in_channels, max(stem.channels), max(stem.kernel), stem.stride)])]
        prev = max(stem.channels)
        for st in space.stages[1:]:
            blocks = []
            for _ in range(st.max_depth):
                blocks.append(BinaryBlock(prev, max(st.channels), st.kernel, min(st.groups1), min(st.groups2),
                                          weight_norm, bi_transformation))
                prev = max(st.channels)
            stages.append(nn.ModuleList(blocks))
        self.features = nn.ModuleList(stages)
        self.fc = nn.Linear(prev, space.num_classes)
        self._plans: dict[Arch, list[_BlockPlan]] = {}
        self.fused = False  # nasbnn_hw.nn.fused: compiled element-wise chains in training (TrainConfig.compile)

    def plan(self, arch: Arch) -> list[_BlockPlan]:
        plans = self._plans.get(arch)
        if plans is None:
            validate(arch, self.space)
            plans, c_in = [], arch.stages[0][0].channels
            for si in range(1, len(self.space.stages)):
                for bi, b in enumerate(arch.stages[si]):
                    s = self.space.stages[si].stride if bi == 0 else 1
                    plans.append(_BlockPlan(si, bi, c_in, b.channels, b.kernel, b.groups1, b.groups2, s))
                    c_in = b.channels
            if len(self._plans) > 4096:
                self._plans.clear()
            self._plans[arch] = plans
        return plans

    def forward(self, x: torch.Tensor, arch: Arch, binary_weights: bool = True) -> torch.Tensor:
        if self.fused and fused.usable(self):
            x = fused.features_forward(self, x, arch, binary_weights)
        else:
            x = self.features[0][0](x, arch.stages[0][0].channels)
            for p in self.plan(arch):
                x = self.features[p.stage][p.index](x, p, binary_weights)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.linear(x, self.fc.weight[:, : x.size(1)], self.fc.bias)

    def weight_distill_loss(self, arch: Arch) -> torch.Tensor:
        """Sum over the subnet's binary convs of `DynamicBinaryConv2d.weight_distill_loss` (METHOD.md's
        optional weight distillation; the trainer scales it by `weight_distill`)."""
        total = self.fc.weight.new_zeros(())
        for p in self.plan(arch):
            blk = self.features[p.stage][p.index]
            total = total + blk.binary_conv.weight_distill_loss(p.in_c, p.in_c, p.kernel, p.groups1)
            total = total + blk.binary_conv1x1.weight_distill_loss(p.in_c, p.out_c, 1, p.groups2)
        return total

    def config(self) -> dict:
        return {"space": self.space.to_dict(), "weight_norm": self.weight_norm,
                "bi_transformation": self.bi_transformation}


# ---------------------------------------------------------------------------------------------------
# Static subnets: plain modules holding only one subnet's weights.

class StaticBinaryConv(nn.Module):
    def __init__(self, sign_weight: torch.Tensor, scale: torch.Tensor, stride: int, groups: int):
        super().__init__()
        self.register_buffer("sign_weight", sign_weight.contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.stride, self.groups = stride, groups
        self.kernel = sign_weight.size(-1)
        self.padding = self.kernel // 2

    def forward(self, a):
        w = self.sign_weight * self.scale.view(-1, 1, 1, 1)
        return F.conv2d(a, w, None, self.stride, self.padding, 1, self.groups)


def _static_bn(dyn: DynamicBatchNorm2d, c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=dyn.bn.eps)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(getattr(dyn.bn, name)[:c])
    return bn


def _static_prelu(dyn: DynamicPReLU, c: int) -> nn.PReLU:
    p = nn.PReLU(c)
    with torch.no_grad():
        p.weight.copy_(dyn.prelu.weight[:c])
    return p


def _bias(dyn: LearnableBias, c: int) -> nn.Parameter:
    return nn.Parameter(dyn.bias.detach()[:, :c].clone())


class StaticStem(nn.Module):
    def __init__(self, blk: StemBlock, c: int):
        super().__init__()
        q, s = blk.conv.quantized(c)
        self.register_buffer("weight_int", q.detach().to(torch.int8).contiguous())
        self.register_buffer("weight_scale", s.detach().clone())
        self.stride, self.kernel = blk.conv.stride, blk.conv.k
        self.padding = self.kernel // 2
        self.bn, self.move1 = _static_bn(blk.bn, c), _bias(blk.move1, c)
        self.prelu, self.move2 = _static_prelu(blk.relu, c), _bias(blk.move2, c)

    def forward(self, x):
        w = self.weight_int.float() * self.weight_scale.view(-1, 1, 1, 1)
        x = F.conv2d(x, w, None, self.stride, self.padding)
        return self.prelu(self.bn(x) + self.move1) + self.move2


class StaticBinaryBlock(nn.Module):
    def __init__(self, blk: BinaryBlock, p: _BlockPlan):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = p.in_c, p.out_c, p.stride
        w, s = blk.binary_conv.subnet_weight(p.in_c, p.in_c, p.kernel, p.groups1, binary=True)
        self.binary_conv = StaticBinaryConv(w.detach(), s, p.stride, p.groups1)
        w, s = blk.binary_conv1x1.subnet_weight(p.in_c, p.out_c, 1, p.groups2, binary=True)
        self.binary_conv1x1 = StaticBinaryConv(w.detach(), s, 1, p.groups2)
        ci, co = p.in_c, p.out_c
        self.move11, self.bn1, self.move12 = _bias(blk.move11, ci), _static_bn(blk.bn1, ci), _bias(blk.move12, ci)
        self.prelu1, self.move13 = _static_prelu(blk.prelu1, ci), _bias(blk.move13, ci)
        self.move21, self.bn2, self.move22 = _bias(blk.move21, ci), _static_bn(blk.bn2, co), _bias(blk.move22, co)
        self.prelu2, self.move23 = _static_prelu(blk.prelu2, co), _bias(blk.move23, co)

    def forward(self, x):
        h = self.bn1(self.binary_conv(torch.sign(x + self.move11)))
        h = h + (F.avg_pool2d(x, 2, 2) if self.stride == 2 else x)
        y = self.prelu1(h + self.move12) + self.move13
        h = self.bn2(self.binary_conv1x1(torch.sign(y + self.move21)))
        h = h + shortcut_tile(y, self.out_channels)
        return self.prelu2(h + self.move22) + self.move23


class StaticSubnet(nn.Module):
    """One subnet as a plain module: `stem`, `blocks`, `fc`. Its outputs equal the supernet's for the
    same arch in eval mode."""

    def __init__(self, supernet: SuperBNN, arch: Arch):
        super().__init__()
        self.arch, self.space = arch, supernet.space
        was_training = supernet.training
        supernet.eval()
        with torch.no_grad():
            self.stem = StaticStem(supernet.features[0][0], arch.stages[0][0].channels)
            self.blocks = nn.ModuleList(StaticBinaryBlock(supernet.features[p.stage][p.index], p)
                                        for p in supernet.plan(arch))
            c = arch.stages[-1][-1].channels
            self.fc = nn.Linear(c, supernet.space.num_classes)
            self.fc.weight.copy_(supernet.fc.weight[:, :c])
            self.fc.bias.copy_(supernet.fc.bias)
        supernet.train(was_training)
        self.eval()

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def extract_subnet(supernet: SuperBNN, arch: Arch) -> StaticSubnet:
    return StaticSubnet(supernet, arch)
