"""Fused training forward of the supernet (`TrainConfig.compile`, `--compile`).

The element-wise chains around each binary convolution (learnable bias + sign; BatchNorm with batch
statistics + shortcut add + bias + PReLU + bias, and the next bias + sign) are compiled by TorchInductor
with dynamic shapes, so one graph serves every channel count, resolution and batch: each chain becomes one
or two loops forward and backward instead of a pass per operation. Convolutions and weight preparation stay
eager. Used in training mode on one process only; evaluation, BN recalibration and distributed training run
the eager modules. Same mathematics as the eager path, equal within float rounding.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.nn.binary_ops import _SignApprox, _distributed_world

# One graph per chain and variant (stride 1 / 2, stem / block); a bound keeps a pathological run from
# compiling without end: past it, the frame runs eagerly.
RECOMPILE_LIMIT = 8

_compiled: dict = {}


def _bn(c, w, b, eps: float):
    """Training BatchNorm with batch statistics over the first C channels of the full-width parameters:
    (output, mean, biased variance)."""
    n = c.size(1)
    var, mean = torch.var_mean(c, dim=(0, 2, 3), correction=0)
    k = (torch.rsqrt(var + eps) * w[:n]).view(1, -1, 1, 1)
    return (c - mean.view(1, -1, 1, 1)) * k + b[:n].view(1, -1, 1, 1), mean.detach(), var.detach()


def _prelu(h, a):
    return torch.where(h > 0, h, h * a[: h.size(1)].view(1, -1, 1, 1))


def _bias(h, b):
    return h + b[:, : h.size(1)]


def _sign_in(x, b):
    """sign(x + b) with the ApproxSign gradient (the block's move11 + binary activation)."""
    return _SignApprox.apply(_bias(x, b))


def _block_mid(c, x, stride2: bool, w, b, eps: float, b12, a1, b13, b21):
    """BN1 + shortcut (avg-pooled when strided) + move12 + PReLU + move13 → y; sign(y + move21)."""
    h, mean, var = _bn(c, w, b, eps)
    h = h + (F.avg_pool2d(x, 2, 2) if stride2 else x)
    y = _bias(_prelu(_bias(h, b12), a1), b13)
    return y, _SignApprox.apply(_bias(y, b21)), mean, var


def _block_out(c, y, w, b, eps: float, b22, a2, b23):
    """BN2 + shortcut (y, tiled to the output width) + move22 + PReLU + move23."""
    h, mean, var = _bn(c, w, b, eps)
    if c.size(1) != y.size(1):  # `shortcut_tile`: copies of y's channels
        y = y[:, torch.arange(c.size(1), device=y.device) % y.size(1)]
    return _bias(_prelu(_bias(h + y, b22), a2), b23), mean, var


def _stem_out(c, w, b, eps: float, b1, a, b2):
    """Stem: BN + move1 + PReLU + move2."""
    h, mean, var = _bn(c, w, b, eps)
    return _bias(_prelu(_bias(h, b1), a), b2), mean, var


_CHAINS = {"sign_in": _sign_in, "block_mid": _block_mid, "block_out": _block_out, "stem_out": _stem_out}
_stats = {"graphs": 0, "recompiles": 0, "compile_s": 0.0}
_seen: set = set()


def _backend(gm, example_inputs):
    from torch._inductor.compile_fx import compile_fx
    _stats["graphs"] += 1
    return compile_fx(gm, example_inputs)


def _fn(name):
    fn = _compiled.get(name)
    if fn is None:
        import torch._dynamo.config as dcfg
        import torch.fx.experimental._config as fxcfg
        dcfg.recompile_limit = max(dcfg.recompile_limit, RECOMPILE_LIMIT)
        dcfg.force_parameter_static_shapes = False  # parameters are passed whole and sliced inside
        fxcfg.use_duck_shape = False  # equal sizes at the first trace (e.g. 16 channels, 16 pixels) stay apart
        fn = _compiled[name] = torch.compile(_CHAINS[name], backend=_backend, dynamic=True, fullgraph=True)
    return fn


def _call(name, *args):
    """Run one compiled chain; a call that compiled (forward and backward) adds its wall time to the stats."""
    before, t = _stats["graphs"], time.perf_counter()
    out = _fn(name)(*args)
    new = _stats["graphs"] - before
    if new:
        _stats["compile_s"] += time.perf_counter() - t
        _stats["recompiles"] += new - (name not in _seen)
        _seen.add(name)
    return out


def compile_stats() -> dict:
    """This process's compilation of the chains: graphs compiled, recompilations (graphs beyond each chain's
    first: new variants or guards that failed) and the wall seconds of the calls that compiled."""
    return {"graphs": _stats["graphs"], "recompiles": _stats["recompiles"],
            "compile_s": round(_stats["compile_s"], 3)}


def _update_running(dyn, c: int, mean, var, n: int):
    """The running statistics update of `DynamicBatchNorm2d.forward` (momentum or cumulative average)."""
    bn = dyn.bn
    bn.num_batches_tracked.add_(1)
    f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    with torch.no_grad():
        bn.running_mean[:c].mul_(1 - f).add_(mean, alpha=f)
        bn.running_var[:c].mul_(1 - f).add_(var * (n / max(1, n - 1)), alpha=f)


def _n(c) -> int:
    return c.size(0) * c.size(2) * c.size(3)


def stem_forward(blk, x, out_c: int):
    c = blk.conv(x, out_c)
    bn = blk.bn.bn
    y, mean, var = _call("stem_out", c, bn.weight, bn.bias, bn.eps, blk.move1.bias, blk.relu.prelu.weight,
                         blk.move2.bias)
    _update_running(blk.bn, out_c, mean, var, _n(c))
    return y


def block_forward(blk, x, p, binary_weights: bool):
    ci, co = p.in_c, p.out_c
    a = _call("sign_in", x, blk.move11.bias)
    c = blk.binary_conv(a, ci, p.kernel, p.groups1, p.stride, binary_weights)
    bn = blk.bn1.bn
    y, a, mean, var = _call("block_mid", c, x, p.stride == 2, bn.weight, bn.bias, bn.eps, blk.move12.bias,
                            blk.prelu1.prelu.weight, blk.move13.bias, blk.move21.bias)
    _update_running(blk.bn1, ci, mean, var, _n(c))
    c = blk.binary_conv1x1(a, co, 1, p.groups2, 1, binary_weights)
    bn = blk.bn2.bn
    out, mean, var = _call("block_out", c, y, bn.weight, bn.bias, bn.eps, blk.move22.bias,
                           blk.prelu2.prelu.weight, blk.move23.bias)
    _update_running(blk.bn2, co, mean, var, _n(c))
    return out


def usable(net) -> bool:
    """Whether `net`'s forward takes the fused path now: switched on, training with gradients, one process
    (BN recalibration under no_grad and distributed BN run the eager modules)."""
    return net.fused and net.training and torch.is_grad_enabled() and _distributed_world() == 1


def features_forward(net, x, arch, binary_weights: bool):
    """`SuperBNN.forward` up to the pooled features, through the fused chains."""
    x = stem_forward(net.features[0][0], x, arch.stages[0][0].channels)
    for p in net.plan(arch):
        x = block_forward(net.features[p.stage][p.index], x, p, binary_weights)
    return x


def enable(net, on: bool = True):
    """Switch `net`'s fused training path on or off (a plain attribute: checkpoints are unchanged)."""
    if on and next(net.parameters()).device.type == "cpu":
        import os
        import shutil
        cxx = os.environ.get("CXX") or "g++"
        if not (shutil.which(cxx) or shutil.which("c++") or shutil.which("clang++")):
            raise NasBnnError(f"--compile on a CPU needs a C++ compiler ({cxx}, c++ or clang++ on PATH); "
                              "install one (e.g. apt-get install g++) or train without --compile")
    net.fused = bool(on)
    return net

