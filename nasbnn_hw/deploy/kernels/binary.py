"""Tensor expressions of the binary half-block: sign + bit-pack, XOR/popcount conv, fused epilogue.

Encoding. Activations are NHWC float. `sign_pack` writes bit 1 for `x + move >= 0` (+1) and bit 0 for -1,
64 channels of one group per uint64 word: word `w` of group `g` holds channels `g*Cg + 64*w + b`. When a
group's channel count `Cg` is not a multiple of 64 the last word's spare bits are 0 in both activations
and weights, so they XOR to 0 and never count. The dot product of `L` +-1 values is
`L - 2 * popcount(a XOR w)`.

Zero padding. PyTorch pads the *sign output* with zeros, so a tap outside the image contributes 0. The
packed input is padded with all-zero words (all -1), which adds `-sum_c w[f, c, ky, kx]` for each such
tap; `padding_correction` gives the exact fix. It depends only on which taps of an output position fall
outside, i.e. on a (row class, column class) pair: a few border rows/columns have their own class and all
interior ones share one, so the table is tiny: `corr[row_class, col_class, f]`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WORD_BITS = 64
WORD_DTYPE = "uint64"


def words_per_group(channels_per_group: int) -> int:
    return math.ceil(channels_per_group / WORD_BITS)


@dataclass(frozen=True)
class BorderClasses:
    """Border classes of one output axis of length `size`: coordinates below `lo` and from `hi` on are
    classes of their own, [lo, hi) (no tap outside) share class `lo`. lo == hi: every coordinate alone."""
    size: int
    lo: int
    hi: int

    @property
    def count(self) -> int:
        return self.size if self.lo == self.hi else self.size - (self.hi - self.lo) + 1

    def of(self, o: int) -> int:
        if self.lo == self.hi or o < self.lo:
            return o
        return self.lo if o < self.hi else o - self.hi + self.lo + 1

    def expr(self, o):
        """The class of output coordinate `o` as a TIR expression (selects, no lookup table)."""
        import tvm
        if self.lo == self.hi:
            return o
        return tvm.tirx.Select(o < self.lo, o, tvm.tirx.Select(o < self.hi, tvm.tirx.const(self.lo, "int32"),
                                                               o - (self.hi - self.lo - 1)))


def border_classes(size: int, out_size: int, kernel: int, stride: int, pad: int) -> BorderClasses:
    inside = [o for o in range(out_size) if 0 <= o * stride - pad and o * stride + kernel - 1 - pad < size]
    if len(inside) > 1:
        return BorderClasses(out_size, inside[0], inside[-1] + 1)
    return BorderClasses(out_size, 0, 0)


def _invalid_taps(o: int, size: int, kernel: int, stride: int, pad: int) -> list[int]:
    return [t for t in range(kernel) if not 0 <= o * stride + t - pad < size]


def padding_correction(sign_weight: np.ndarray, groups: int, size_hw: tuple[int, int], stride: int,
                       pad: int) -> tuple[np.ndarray, BorderClasses, BorderClasses]:
    """corr[row_class, col_class, f] = sum of +-1 weights of filter f over the taps that fall in the padding."""
    f, _, k, _ = sign_weight.shape
    h, w = size_hw
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    rows, cols = border_classes(h, ho, k, stride, pad), border_classes(w, wo, k, stride, pad)
    wsum = np.where(sign_weight >= 0, 1, -1).sum(axis=1).astype(np.int64)  # f, ky, kx (same sign rule as packing)
    corr = np.zeros((rows.count, cols.count, f), np.int32)
    for y in range(ho):
        for x in range(wo):
            mask = np.zeros((k, k), bool)
            mask[_invalid_taps(y, h, k, stride, pad), :] = True
            mask[:, _invalid_taps(x, w, k, stride, pad)] = True
            corr[rows.of(y), cols.of(x)] = (wsum * mask).sum(axis=(1, 2))
    return corr, rows, cols


def pack_weights(sign_weight: np.ndarray, groups: int) -> np.ndarray:
    """+-1 (or real, by sign) weights (F, Cg, k, k) -> packed words (k, k, words_per_group, F), spare bits 0."""
    f, cg, k, _ = sign_weight.shape
    nw = words_per_group(cg)
    bits = np.zeros((k, k, f, nw * WORD_BITS), np.uint8)
    bits[:, :, :, :cg] = (sign_weight >= 0).transpose(2, 3, 0, 1)
    words = np.packbits(bits, axis=-1, bitorder="little").view("<u8")  # k, k, f, nw
    return np.ascontiguousarray(words.transpose(0, 1, 3, 2)).astype(np.uint64)


def sign_pack(x, move, groups: int, pad: int, name: str):
    """x (N, H, W, C) float, move (C,) -> packed (N, H + 2 pad, W + 2 pad, groups, words) uint64."""
    import tvm
    from tvm import te
    n_, h, w, c = (int(v) for v in x.shape)
    cg = c // groups
    nw = words_per_group(cg)
    # a group narrower than a word packs only its own bits (no loop over spare bits that stay 0)
    rb = te.reduce_axis((0, min(WORD_BITS, cg)), name=f"{name}_rb")
    zero = tvm.tirx.const(0, WORD_DTYPE)

    def _bits(n, y, xx, g, wd):
        ch = wd * WORD_BITS + rb
        conds = []
        if pad:
            conds += [y >= pad, y < h + pad, xx >= pad, xx < w + pad]
        if cg > WORD_BITS and cg % WORD_BITS:
            conds.append(ch < cg)
        ci = g * cg + ch
        bit = (x[n, y - pad, xx - pad, ci] + move[ci] >= 0).astype(WORD_DTYPE)
        if conds:
            bit = tvm.tirx.if_then_else(tvm.tirx.all(*conds), bit, zero)
        return te.sum(bit << rb.astype(WORD_DTYPE), axis=rb)  # disjoint bits: the sum is an OR

    return te.compute((n_, h + 2 * pad, w + 2 * pad, groups, nw), _bits, name=f"{name}_pack")


def xnor_popcount_conv(xp, wp, kernel: int, stride: int, out_hw: tuple[int, int], name: str,
                       acc_dtype: str = "int64"):
    """popcount(x XOR w) summed over taps and words: (N, Ho, Wo, F). The accumulator is 64-bit like the
    words, so a vector popcount adds straight into it (an int32 one costs a narrowing shuffle per word)."""
    import tvm
    from tvm import te
    n_, _, _, groups, nw = (int(v) for v in xp.shape)
    f = int(wp.shape[-1])
    fg = f // groups
    ky = te.reduce_axis((0, kernel), name=f"{name}_ky")
    kx = te.reduce_axis((0, kernel), name=f"{name}_kx")
    rc = te.reduce_axis((0, nw), name=f"{name}_rc")
    return te.compute(
        (n_, *out_hw, f),
        lambda n, y, x, o: te.sum(
            tvm.tirx.popcount(xp[n, y * stride + ky, x * stride + kx, o // fg, rc] ^ wp[ky, kx, rc, o]
                              ).astype(acc_dtype), axis=[ky, kx, rc]),
        name=f"{name}_acc")


def binary_dot(acc, taps_times_cg: int, corr=None, rows: BorderClasses | None = None,
               cols: BorderClasses | None = None):
    """The exact +-1 conv value at (n, y, x, f) as an int32 expression builder."""
    def dot(n, y, x, o):
        v = taps_times_cg - 2 * acc[n, y, x, o].astype("int32")
        if corr is not None:
            v = v + corr[rows.expr(y), cols.expr(x), o]
        return v
    return dot


def shortcut_value(x, stride: int, out_channels: int):
    """Bi-Real shortcut of NHWC `x`: avg-pool 2x2 if stride 2; channels tiled to `out_channels`."""
    c_in = int(x.shape[3])

    def value(n, y, xx, o):
        c = o % c_in if out_channels > c_in else o
        if stride == 1:
            return x[n, y, xx, c]
        return (x[n, 2 * y, 2 * xx, c] + x[n, 2 * y, 2 * xx + 1, c]
                + x[n, 2 * y + 1, 2 * xx, c] + x[n, 2 * y + 1, 2 * xx + 1, c]) * 0.25
    return value


def rprelu(v, alpha, bias_after):
    import tvm
    return tvm.tirx.Select(v >= 0, v, v * alpha) + bias_after


def binary_half_block(x, k: int, stride: int, groups: int, out_channels: int, name: str,
                      acc_dtype: str = "int64"):
    """One half of a binary block, all fused into one output stage.

    out = rprelu(dot * mul + add + shortcut(x)) with mul = weight scale * BN scale, add = BN shift + move12.
    Returns (placeholders dict, output tensor). Placeholders: move_in (C_in,), weight (k, k, words, C_out)
    uint64, corr (rows, cols, C_out) int32 if k > 1, mul/add/alpha/bias2 (C_out,) float32.
    """
    from tvm import te
    n_, h, w, c_in = (int(v) for v in x.shape)
    pad = k // 2
    cg = c_in // groups
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    nw = words_per_group(cg)
    p = {"move_in": te.placeholder((c_in,), "float32", name=f"{name}_move_in"),
         "weight": te.placeholder((k, k, nw, out_channels), WORD_DTYPE, name=f"{name}_weight")}
    rows = cols = None
    if pad:
        rows, cols = border_classes(h, ho, k, stride, pad), border_classes(w, wo, k, stride, pad)
        p["corr"] = te.placeholder((rows.count, cols.count, out_channels), "int32", name=f"{name}_corr")
    for key in ("mul", "add", "alpha", "bias2"):
        p[key] = te.placeholder((out_channels,), "float32", name=f"{name}_{key}")
    packed = sign_pack(x, p["move_in"], groups, pad, name)
    acc = xnor_popcount_conv(packed, p["weight"], k, stride, (ho, wo), name, acc_dtype)
    dot = binary_dot(acc, k * k * cg, p.get("corr"), rows, cols)
    sc = shortcut_value(x, stride, out_channels)

    def _out(n, y, xx, o):
        v = dot(n, y, xx, o).astype("float32") * p["mul"][o] + p["add"][o] + sc(n, y, xx, o)
        return rprelu(v, p["alpha"][o], p["bias2"][o])

    out = te.compute((n_, ho, wo, out_channels), _out, name=f"{name}_out")
    return p, out


def raw_binary_conv(x, k: int, stride: int, groups: int, out_channels: int, name: str, acc_dtype: str = "int64"):
    """The integer +-1 conv of sign(x) alone (no epilogue): for exactness tests and benchmarks."""
    from tvm import te
    n_, h, w, c_in = (int(v) for v in x.shape)
    pad = k // 2
    cg = c_in // groups
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    p = {"move_in": te.placeholder((c_in,), "float32", name=f"{name}_move_in"),
         "weight": te.placeholder((k, k, words_per_group(cg), out_channels), WORD_DTYPE, name=f"{name}_weight")}
    rows = cols = None
    if pad:
        rows, cols = border_classes(h, ho, k, stride, pad), border_classes(w, wo, k, stride, pad)
        p["corr"] = te.placeholder((rows.count, cols.count, out_channels), "int32", name=f"{name}_corr")
    packed = sign_pack(x, p["move_in"], groups, pad, name)
    acc = xnor_popcount_conv(packed, p["weight"], k, stride, (ho, wo), name, acc_dtype)
    dot = binary_dot(acc, k * k * cg, p.get("corr"), rows, cols)
    out = te.compute((n_, ho, wo, out_channels), dot, name=f"{name}_out")
    return p, out
