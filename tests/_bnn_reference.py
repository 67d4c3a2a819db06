"""PyTorch reference layers with the attribute layout of a static subnet (see nasbnn_hw.nn.supernet), used
as ground truth by the kernel and deployment tests."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _randomize_bn(bn: nn.BatchNorm2d, g: torch.Generator) -> nn.BatchNorm2d:
    c = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.3)
        bn.running_mean.copy_(torch.randn(c, generator=g) * 2)
        bn.running_var.copy_(torch.rand(c, generator=g) * 4 + 0.5)
    return bn


def _bias(c, g):
    return nn.Parameter(torch.randn(1, c, 1, 1, generator=g) * 0.2)


class StaticBinaryConv(nn.Module):
    def __init__(self, c_in, c_out, k, stride, groups, g):
        super().__init__()
        w = torch.randn(c_out, c_in // groups, k, k, generator=g)
        self.sign_weight = nn.Parameter(torch.where(w >= 0, 1.0, -1.0))
        self.scale = nn.Parameter(torch.rand(c_out, generator=g) + 0.1)
        self.stride, self.padding, self.groups = stride, k // 2, groups

    def forward(self, x):
        y = F.conv2d(x, self.sign_weight, None, self.stride, self.padding, 1, self.groups)
        return y * self.scale.view(1, -1, 1, 1)


class StaticStem(nn.Module):
    def __init__(self, c_in, c_out, k, stride, g):
        super().__init__()
        self.weight_int = nn.Parameter(torch.randint(-128, 128, (c_out, c_in, k, k), generator=g).to(torch.int8),
                                       requires_grad=False)
        self.weight_scale = nn.Parameter(torch.rand(c_out, generator=g) * 0.01 + 0.001)
        self.stride, self.padding = stride, k // 2
        self.bn = _randomize_bn(nn.BatchNorm2d(c_out), g)
        self.move1, self.move2 = _bias(c_out, g), _bias(c_out, g)
        self.prelu = nn.PReLU(c_out)
        with torch.no_grad():
            self.prelu.weight.copy_(torch.rand(c_out, generator=g) * 0.5)

    def forward(self, x):
        w = self.weight_int.float() * self.weight_scale[:, None, None, None]
        y = self.bn(F.conv2d(x, w, None, self.stride, self.padding))
        return self.prelu(y + self.move1) + self.move2


def shortcut(x, stride, c_out):
    if stride == 2:
        x = F.avg_pool2d(x, 2, 2)
    c_in = x.shape[1]
    if c_out > c_in:
        x = torch.cat([x] * round(c_out / c_in + 0.5), dim=1)[:, :c_out]
    return x


class StaticBlock(nn.Module):
    def __init__(self, c_in, c_out, k, stride, g1, g2, g):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = c_in, c_out, stride
        self.move11, self.move12, self.move13 = _bias(c_in, g), _bias(c_in, g), _bias(c_in, g)
        self.binary_conv = StaticBinaryConv(c_in, c_in, k, stride, g1, g)
        self.bn1 = _randomize_bn(nn.BatchNorm2d(c_in), g)
        self.prelu1 = nn.PReLU(c_in)
        self.move21, self.move22, self.move23 = _bias(c_in, g), _bias(c_out, g), _bias(c_out, g)
        self.binary_conv1x1 = StaticBinaryConv(c_in, c_out, 1, 1, g2, g)
        self.bn2 = _randomize_bn(nn.BatchNorm2d(c_out), g)
        self.prelu2 = nn.PReLU(c_out)
        with torch.no_grad():
            self.prelu1.weight.copy_(torch.rand(c_in, generator=g) * 0.5)
            self.prelu2.weight.copy_(torch.rand(c_out, generator=g) * 0.5)

    def half1(self, x):
        h = self.bn1(self.binary_conv(torch.sign(x + self.move11))) + shortcut(x, self.stride, self.in_channels)
        return self.prelu1(h + self.move12) + self.move13

    def half2(self, y):
        h = self.bn2(self.binary_conv1x1(torch.sign(y + self.move21))) + shortcut(y, 1, self.out_channels)
        return self.prelu2(h + self.move22) + self.move23

    def forward(self, x):
        return self.half2(self.half1(x))


class StaticSubnet(nn.Module):
    """Stand-in for `extract_subnet(supernet, arch)`: stem, blocks, fc on the global average pool."""

    def __init__(self, arch, space, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        stem = arch.stages[0][0]
        self.stem = StaticStem(space.in_channels, stem.channels, stem.kernel, space.stages[0].stride, g)
        blocks, c = [], stem.channels
        for si in range(1, len(space.stages)):
            for bi, b in enumerate(arch.stages[si]):
                s = space.stages[si].stride if bi == 0 else 1
                blocks.append(StaticBlock(c, b.channels, b.kernel, s, b.groups1, b.groups2, g))
                c = b.channels
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c, space.num_classes)
        self.eval()

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.fc(x.mean(dim=(2, 3)))
