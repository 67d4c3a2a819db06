"""The layers of a subnet and its exact OPs (METHOD.md, "Cost: OPs").

`arch_layers` is the one place that turns an arch into concrete layer configurations; OPs counting, the
kernel profiler and the lookup-table cost model all read it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.space import SearchSpace


@dataclass(frozen=True, order=True)
class LayerConfig:
    """One compiled layer. kind: 'stem' (8-bit conv + BN + RPReLU), 'bconv' (sign + binary conv + BN +
    shortcut + RPReLU), 'head' (global average pool + float classifier). `resolution` is the input side."""
    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    groups: int
    stride: int
    resolution: int

    @property
    def out_resolution(self) -> int:
        return self.resolution // self.stride if self.kind != "head" else 1

    def key(self) -> str:
        return (f"{self.kind}_i{self.in_channels}_o{self.out_channels}_k{self.kernel}_g{self.groups}"
                f"_s{self.stride}_r{self.resolution}")

    def to_dict(self) -> dict:
        return asdict(self)

    def bops(self) -> int:
        if self.kind != "bconv":
            return 0
        k, c, g, s, h = self.kernel, self.in_channels, self.groups, self.stride, self.resolution
        return k * k * c // g * self.out_channels * h // s * h // s

    def flops(self) -> int:
        k, s, h = self.kernel, self.stride, self.resolution
        if self.kind == "stem":  # 8-bit weights: counted as FLOPs / (64 / sqrt(8 * 8))
            return k * k * self.in_channels * self.out_channels * h // s * h // s // 8
        if self.kind == "head":
            return self.out_channels * (self.in_channels + 1)
        return 0


def arch_layers(arch: Arch, space: SearchSpace) -> list[LayerConfig]:
    layers = []
    res = space.resolution
    stem_spec, stem = space.stages[0], arch.stages[0][0]
    layers.append(LayerConfig("stem", space.in_channels, stem.channels, stem.kernel, 1, stem_spec.stride, res))
    res //= stem_spec.stride
    c_in = stem.channels
    for si in range(1, len(space.stages)):
        for bi, b in enumerate(arch.stages[si]):
            s = space.stages[si].stride if bi == 0 else 1
            layers.append(LayerConfig("bconv", c_in, c_in, b.kernel, b.groups1, s, res))
            res //= s
            layers.append(LayerConfig("bconv", c_in, b.channels, 1, b.groups2, 1, res))
            c_in = b.channels
    layers.append(LayerConfig("head", c_in, space.num_classes, 1, 1, 1, res))
    return layers


@dataclass(frozen=True)
class OpsCount:
    flops: int
    bops: int

    @property
    def ops(self) -> float:
        return self.flops + self.bops / 64

    def to_dict(self, unit: float = 1e6) -> dict:
        return {"flops_M": self.flops / unit, "bops_M": self.bops / unit, "ops_M": self.ops / unit}


def count_ops(arch: Arch, space: SearchSpace) -> OpsCount:
    layers = arch_layers(arch, space)
    return OpsCount(flops=sum(l.flops() for l in layers), bops=sum(l.bops() for l in layers))
