"""Tensor expressions of the full-precision layers: the 8-bit stem conv and the classifier head."""
from __future__ import annotations

from nasbnn_hw.deploy.kernels.binary import rprelu


def stem_conv(x, out_channels: int, kernel: int, stride: int, name: str):
    """8-bit-weight conv on float NCHW input, fused BN + RPReLU; output NHWC.

    out = rprelu(conv(x, w_int8) * mul + add): mul = per-channel weight step * BN scale, add = BN shift +
    move1. Placeholders: weight (k, k, C, F) int8 (output channels contiguous: vector lanes), mul/add/alpha/
    bias2 (F,) float32.
    """
    import tvm
    from tvm import te
    n_, c, h, w = (int(v) for v in x.shape)
    pad = kernel // 2
    ho, wo = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
    p = {"weight": te.placeholder((kernel, kernel, c, out_channels), "int8", name=f"{name}_weight")}
    for key in ("mul", "add", "alpha", "bias2"):
        p[key] = te.placeholder((out_channels,), "float32", name=f"{name}_{key}")
    xpad = te.compute(
        (n_, h + 2 * pad, w + 2 * pad, c),
        lambda n, y, xx, ci: tvm.tirx.if_then_else(
            tvm.tirx.all(y >= pad, y < h + pad, xx >= pad, xx < w + pad), x[n, ci, y - pad, xx - pad],
            tvm.tirx.const(0.0, "float32")),
        name=f"{name}_pad")
    rc = te.reduce_axis((0, c), name=f"{name}_rc")
    ky = te.reduce_axis((0, kernel), name=f"{name}_ky")
    kx = te.reduce_axis((0, kernel), name=f"{name}_kx")
    acc = te.compute(
        (n_, ho, wo, out_channels),
        lambda n, y, xx, o: te.sum(xpad[n, y * stride + ky, xx * stride + kx, rc]
                                   * p["weight"][ky, kx, rc, o].astype("float32"), axis=[ky, kx, rc]),
        name=f"{name}_acc")
    out = te.compute((n_, ho, wo, out_channels),
                     lambda n, y, xx, o: rprelu(acc[n, y, xx, o] * p["mul"][o] + p["add"][o], p["alpha"][o],
                                                p["bias2"][o]),
                     name=f"{name}_out")
    return p, out


def pool_classifier(x, num_classes: int, name: str):
    """Global average pool of NHWC x, then a float linear layer: (N, num_classes).
    Placeholders: weight (C, num_classes) (transposed: classes are
    contiguous), bias (num_classes,) float32."""
    from tvm import te
    n_, h, w, c = (int(v) for v in x.shape)
    p = {"weight": te.placeholder((c, num_classes), "float32", name=f"{name}_weight"),
         "bias": te.placeholder((num_classes,), "float32", name=f"{name}_bias")}
    ry = te.reduce_axis((0, h), name=f"{name}_ry")
    rx = te.reduce_axis((0, w), name=f"{name}_rx")
    pooled_sum = te.compute((n_, c), lambda n, ci: te.sum(x[n, ry, rx, ci], axis=[ry, rx]), name=f"{name}_pool")
    inv = 1.0 / (h * w)
    rc = te.reduce_axis((0, c), name=f"{name}_rc")
    logits = te.compute((n_, num_classes),
                        lambda n, j: te.sum(pooled_sum[n, rc] * inv * p["weight"][rc, j], axis=rc),
                        name=f"{name}_fc")
    out = te.compute((n_, num_classes), lambda n, j: logits[n, j] + p["bias"][j], name=f"{name}_out")
    return p, out
