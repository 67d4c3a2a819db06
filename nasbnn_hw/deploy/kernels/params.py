"""Turn PyTorch layer parameters into the kernels' pre-packed arguments (numpy), and random ones for
profiling. BatchNorm is folded to a per-channel scale/shift in float64, then rounded once to float32."""
from __future__ import annotations

import numpy as np

from nasbnn_hw.deploy.kernels.binary import pack_weights, padding_correction


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if hasattr(t, "detach") else np.asarray(t, np.float64)


def fold_bn(bn) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode BatchNorm as y = x * a + b."""
    a = _np(bn.weight) / np.sqrt(_np(bn.running_var) + bn.eps)
    return a, _np(bn.bias) - _np(bn.running_mean) * a


def _channels(v, c: int) -> np.ndarray:
    return np.broadcast_to(_np(v).reshape(-1), (c,)).astype(np.float32).copy()


def binary_half_params(conv, bn, move_in, move_mid, prelu, move_out, in_hw: tuple[int, int]) -> dict:
    """Arguments of `binary_half_block` from a static binary conv (`sign_weight`, `scale`, `stride`,
    `groups`) and its BN, biases and PReLU."""
    sw = _np(conv.sign_weight)
    c_out, _, k, _ = sw.shape
    a, b = fold_bn(bn)
    p = {"move_in": _channels(move_in, sw.shape[1] * conv.groups), "weight": pack_weights(sw, conv.groups)}
    if k > 1:
        p["corr"] = padding_correction(sw, conv.groups, in_hw, conv.stride, k // 2)[0]
    p["mul"] = (_np(conv.scale).reshape(-1) * a).astype(np.float32)
    p["add"] = (b + _np(move_mid).reshape(-1)).astype(np.float32)
    p["alpha"] = _channels(prelu.weight, c_out)
    p["bias2"] = _channels(move_out, c_out)
    return p


def stem_params(stem) -> dict:
    w = stem.weight_int.detach().cpu().numpy()
    a, b = fold_bn(stem.bn)
    c = w.shape[0]
    return {"weight": np.ascontiguousarray(w.astype(np.int8).transpose(2, 3, 1, 0)),  # (k, k, C, F)
            "mul": (_np(stem.weight_scale).reshape(-1) * a).astype(np.float32),
            "add": (b + _np(stem.move1).reshape(-1)).astype(np.float32),
            "alpha": _channels(stem.prelu.weight, c), "bias2": _channels(stem.move2, c)}


def head_params(fc) -> dict:
    """Classifier weight transposed to (C, classes) so output classes are contiguous (vector lanes)."""
    return {"weight": np.ascontiguousarray(fc.weight.detach().cpu().numpy().T.astype(np.float32)),
            "bias": fc.bias.detach().cpu().numpy().astype(np.float32).copy()}


def random_arrays(shapes_dtypes: dict, rng: np.random.Generator) -> dict:
    """Random arguments: +-1 bits for uint64 words, int8 weights, small ints for int32, N(0, 1) floats."""
    out = {}
    for key, (shape, dtype) in shapes_dtypes.items():
        if dtype == "uint64":
            out[key] = rng.integers(0, np.iinfo(np.uint64).max, size=shape, dtype=np.uint64, endpoint=True)
        elif dtype == "int8":
            out[key] = rng.integers(-128, 128, size=shape).astype(np.int8)
        elif dtype == "int32":
            out[key] = rng.integers(-9, 10, size=shape).astype(np.int32)
        else:
            out[key] = rng.standard_normal(shape).astype(dtype)
    return out
