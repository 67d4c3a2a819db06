"""Analytic cost models: counted from the arch, no device needed.

- `ops`   official NAS-BNN OPs = FLOPs + BOPs / 64 (METHOD.md "Cost: OPs"), a count (not millions).
- `flops` the FLOPs term alone (8-bit stem counted /8, float classifier).
- `bops`  binary operations of the binary convolutions.
- `params` number of weights: stem conv weights (k*k*in*C), binary conv weights (k*k*C_in/g*C_out) and the
  classifier's weights and biases. BatchNorm, learnable biases and PReLU slopes (per-channel vectors)
  are not counted. Use `model_bytes` for storage: binary weights 1 bit, stem 8 bit, classifier 32 bit.
- `peak_memory` peak activation bytes over the layers, with float activations at `float_bytes` each and
  the binary (sign) activations packed 64 per 64-bit word along channels. A binary conv layer holds its
  float input (kept for the shortcut), the packed sign of that input and its float output at once; the
  stem holds its float input and output; the head its input and logits.
"""
from __future__ import annotations

from typing import Sequence


from nasbnn_hw.core.layers import LayerConfig

from .base import LayerTableCostModel

__all__ = ["OpsModel", "FlopsModel", "BopsModel", "ParamsModel", "ModelBytesModel", "PeakMemoryModel",
           "layer_params", "layer_activation_bytes"]


class OpsModel(LayerTableCostModel):
    name, unit, monotone = "ops", "OPs", True

    def layer_values(self, configs):
        return [c.flops() + c.bops() / 64 for c in configs]


class FlopsModel(LayerTableCostModel):
    name, unit, monotone = "flops", "FLOPs", True

    def layer_values(self, configs):
        return [float(c.flops()) for c in configs]


class BopsModel(LayerTableCostModel):
    name, unit, monotone = "bops", "BOPs", True

    def layer_values(self, configs):
        return [float(c.bops()) for c in configs]


def layer_params(c: LayerConfig) -> int:
    """Weights of one layer (see the module docstring for what is counted)."""
    if c.kind == "head":
        return c.in_channels * c.out_channels + c.out_channels
    return c.kernel * c.kernel * (c.in_channels // c.groups) * c.out_channels


class ParamsModel(LayerTableCostModel):
    name, unit, monotone = "params", "params", True

    def layer_values(self, configs):
        return [float(layer_params(c)) for c in configs]


class ModelBytesModel(LayerTableCostModel):
    name, unit, monotone = "model_bytes", "B", True

    def layer_values(self, configs):
        bits = {"stem": 8, "bconv": 1, "head": 32}
        return [layer_params(c) * bits[c.kind] / 8 for c in configs]


def layer_activation_bytes(c: LayerConfig, float_bytes: int = 4) -> int:
    h_in, h_out = c.resolution, c.out_resolution
    if c.kind == "stem":
        return float_bytes * (c.in_channels * h_in * h_in + c.out_channels * h_out * h_out)
    if c.kind == "head":
        return float_bytes * (c.in_channels * h_in * h_in + c.out_channels)
    packed = -(-c.in_channels // 64) * 8 * h_in * h_in
    return float_bytes * c.in_channels * h_in * h_in + packed + float_bytes * c.out_channels * h_out * h_out


class PeakMemoryModel(LayerTableCostModel):
    name, unit, monotone, reduce = "peak_memory", "B", True, "max"

    def __init__(self, space, float_bytes: int = 4):
        super().__init__(space)
        self.float_bytes = int(float_bytes)

    def layer_values(self, configs: Sequence[LayerConfig]):
        return [float(layer_activation_bytes(c, self.float_bytes)) for c in configs]


ANALYTIC_MODELS = {m.name: m for m in (OpsModel, FlopsModel, BopsModel, ParamsModel, ModelBytesModel,
                                       PeakMemoryModel)}
