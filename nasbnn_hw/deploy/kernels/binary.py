"""Tensor expressions of the binary half-block: sign + bit-pack, XOR/popcount conv, fused epilogue.

Encoding. Activations are NHWC float. `sign_pack` writes bit 1 for `x + move >= 0` (+1) and bit 0 for -1
(on x86 with AVX through one byte per 8 channels, a vector compare and `vmovmskps` each: `sign_bytes`),
64 channels of one group per uint64 word: word `w` of group `g` holds channels `g*Cg + 64*w + b`. When a
group's channel count `Cg` is not a multiple of 64 the last word's spare bits are 0 in both activations
and weights, so they XOR to 0 and never count. The dot product of `L` +-1 values is
`L - 2 * popcount(a XOR w)`.

Zero padding. PyTorch pads the *sign output* with zeros, so a tap outside the image contributes 0. The
packed input is padded with all-zero words (all -1), which adds `-sum_c w[f, c, ky, kx]` for each such
tap; `padding_correction` gives the exact fix. It depends only on which taps of an output position fall
outside, i.e. on a (row class, column class) pair: a few border rows/columns have their own class and all
interior ones share one, so the table is tiny: `corr[row_class, col_class, f]`.

Nibble strategy (`nibble_popcount_conv`, x86 without a vector popcount instruction). The same bits, cut
into 4-bit nibbles: weights as one byte per nibble, `(k, k, bytes, 2, F)` (byte `b` of a group holds its
channels `8b..8b+7`, nibble 0 the low four), and each input nibble `v` expanded once per call into its
16-entry table `popcount(v ^ i)`, `i = 0..15`. Then `popcount(x_nibble ^ w_nibble)` is a table lookup with
the weight nibble as index: one `vpshufb` looks up 32 output channels at once and its byte sums
accumulate in 8-bit lanes for up to 31 bytes before they are widened (`CHUNK_MAX`). Spare bits are 0
on both sides as in the word layout, so they never count; padding is all-zero words as above.

Dense strategy (`dense_windows`, `dense_popcount_conv`, any CPU). A group whose channel count `Cg` leaves
spare bits in its last word wastes them once per tap. Dense rows pack a kernel row's `k` taps back to back,
tap `kx` channel `c` at bit `kx * Cg + c`, in `ceil(k Cg / 64)` words instead of `k * ceil(Cg / 64)`:
weights `(k, dense_words, F)`, and per call each output column's row windows built from the packed words.
Same sums as the word strategy; padding and its correction unchanged.

Byte strategy (`byte_popcount_conv`, aarch64 NEON): the same chunked 8-bit accumulation on whole bytes,
weights `(k, k, bytes, F)`: `cnt` counts 16 lanes of bytes in one instruction with no widening per word.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nasbnn_hw.deploy.kernels.amx import AMX_STRATEGIES

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


def weight_bits(words: np.ndarray, channels_per_group: int) -> np.ndarray:
    """Packed words (k, k, words_per_group, F) -> their bits (k, k, F, Cg) uint8, spare bits dropped."""
    k, _, nw, f = words.shape
    return np.unpackbits(np.ascontiguousarray(words.transpose(0, 1, 3, 2), "<u8").view(np.uint8).reshape(
        k, k, f, nw * 8), axis=-1, bitorder="little")[..., :channels_per_group]


def sign_weights(words: np.ndarray, channels_per_group: int) -> np.ndarray:
    """Packed words (k, k, words_per_group, F) -> the +-1 weights (F, Cg, k, k) int8 (`pack_weights` undone)."""
    bits = weight_bits(words, channels_per_group)
    return np.ascontiguousarray((bits.astype(np.int8) * 2 - 1).transpose(2, 3, 0, 1))


def bytes_per_group(channels_per_group: int) -> int:
    return math.ceil(channels_per_group / 8)


def byte_weights(words: np.ndarray, channels_per_group: int) -> np.ndarray:
    """Packed words (k, k, words_per_group, F) -> bytes (k, k, bytes_per_group, F) uint8 (channels 8b..8b+7)."""
    k, k2, nw, f = words.shape
    b = np.ascontiguousarray(words, "<u8").view(np.uint8).reshape(k, k2, nw, f, 8)  # little-endian: byte j = bits 8j..
    return np.ascontiguousarray(b.transpose(0, 1, 2, 4, 3).reshape(k, k2, nw * 8, f)[:, :, :bytes_per_group(
        channels_per_group)])


def nibble_weights(words: np.ndarray, channels_per_group: int) -> np.ndarray:
    """Packed words (k, k, words_per_group, F) -> nibbles (k, k, bytes_per_group, 2, F) uint8, one per byte."""
    b = byte_weights(words, channels_per_group)
    return np.ascontiguousarray(np.stack([b & 15, b >> 4], axis=3))


def pairs_fit(out_per_group: int, groups: int) -> bool:
    """Whether the pairs strategy applies: an even number of groups whose output channels leave a half
    (16-lane) lookup over in 32-lane steps (16, 48, 80... per group)."""
    return groups % 2 == 0 and out_per_group % 32 == 16


def pair_source(out_per_group: int, out_channels: int) -> np.ndarray:
    """The pairs strategy's channel order: entry `q` is the output channel computed in lane position `q`.
    Groups 2j and 2j+1 form a block of 2 x `out_per_group` positions; its 32-lane step `v` holds channels
    16v..16v+15 of group 2j in lanes 0-15 and those of group 2j+1 in lanes 16-31."""
    q = np.arange(out_channels)
    pair, rem = q // (2 * out_per_group), q % (2 * out_per_group)
    return pair * 2 * out_per_group + (rem % 32) // 16 * out_per_group + rem // 32 * 16 + rem % 16


def _pair_position(o, out_per_group: int):
    """The lane position (`pair_source`'s index) of output channel `o`, as a TE expression: a function of
    the 16-channel block `o // 16` plus `o % 16`, so a 16-lane vector of the epilogue reads 16 consecutive
    positions (written with `o % fg` instead, LLVM gathered them lane by lane)."""
    m = out_per_group // 16          # 16-channel blocks per group (odd)
    blk = o // 16
    return (blk // (2 * m) * (2 * m) + blk % m * 2 + blk % (2 * m) // m) * 16 + o % 16


def weights_for(words: np.ndarray, channels_per_group: int, strategy: str, groups: int = 1) -> np.ndarray:
    """The weight argument of a binary conv built with `strategy` from its packed 64-bit words (`groups`:
    the layer's, for the pairs strategy's channel order)."""
    if strategy == "word":
        return words
    if strategy == "dense":
        return dense_weights(words, channels_per_group)
    if strategy in AMX_STRATEGIES:
        from nasbnn_hw.deploy.kernels.amx import amx_weights
        return amx_weights(words, channels_per_group, groups)
    if strategy == "pairs":
        f = words.shape[-1]
        return np.ascontiguousarray(nibble_weights(words, channels_per_group)[..., pair_source(f // groups, f)])
    return (nibble_weights if strategy == "nibble" else byte_weights)(words, channels_per_group)


def dense_words(channels_per_group: int, kernel: int) -> int:
    """Words of one kernel row in the dense layout: its `kernel` taps x `channels_per_group` bits back to back."""
    return math.ceil(kernel * channels_per_group / WORD_BITS)


def dense_saves(channels_per_group: int, kernel: int) -> bool:
    """Whether a kernel row takes fewer words dense than one word (or more) per tap: channel counts that
    leave spare bits in their last word (48 channels: a 5x5 row is 4 words dense, 5 per tap)."""
    return dense_words(channels_per_group, kernel) < kernel * words_per_group(channels_per_group)


def dense_weights(words: np.ndarray, channels_per_group: int) -> np.ndarray:
    """Packed words (k, k, words_per_group, F) -> dense rows (k, dense_words, F) uint64: row ky holds tap
    (ky, kx), channel c at bit kx * Cg + c; the bits past the row are 0."""
    k, _, _, f = words.shape
    cg = channels_per_group
    bits = weight_bits(words, cg).transpose(0, 2, 1, 3).reshape(k, f, k * cg)   # ky, F, (kx, c)
    row = np.zeros((k, f, dense_words(cg, k) * WORD_BITS), np.uint8)
    row[..., :k * cg] = bits
    dense = np.packbits(row, axis=-1, bitorder="little").view("<u8")  # k, f, dense words
    return np.ascontiguousarray(dense.transpose(0, 2, 1)).astype(np.uint64)


def clear_spare_bits(words: np.ndarray, channels_per_group: int) -> np.ndarray:
    """Words (k, k, words_per_group, F) with the bits past the group's channels set to 0, as `pack_weights`
    writes them (random words for profiling have them set)."""
    valid = np.clip(channels_per_group - WORD_BITS * np.arange(words.shape[2]), 0, WORD_BITS)
    mask = np.array([(1 << int(v)) - 1 for v in valid], np.uint64)
    return words & mask[None, None, :, None]


def sign8_fits(channels: int, groups: int) -> bool:
    """Whether `sign_pack(..., sign8=True)` applies: whole bytes of channels in every group."""
    return channels % groups == 0 and (channels // groups) % 8 == 0


def sign_bytes(x, move, groups: int, name: str, pad: int = 0):
    """x (N, H, W, C) float, move (C,) -> (N, H + 2 pad, W, groups, bytes) uint8, bit i of byte b of group g
    the sign bit of channel g*Cg + 8b + i (1 where x + move >= 0) at padded row y, column xx. Each byte is a
    sum of 8 shifted comparisons, which the x86 schedule replaces by one vector compare and `vmovmskps`
    (`intrinsics.sign_bits8`). Rows are padded like the readers' (the padding rows' bytes are those of the
    nearest input row, a clamped read: readers replace them by 0), so a row of them can be computed inside a
    reader's row loop (`schedule.sign_at`)."""
    import tvm
    from tvm import te
    n_, h, w, c = (int(v) for v in x.shape)
    cg = c // groups
    i = te.reduce_axis((0, 8), name=f"{name}_ri8")

    def row(y):
        return tvm.tirx.max(tvm.tirx.min(y - pad, h - 1), 0) if pad else y

    return te.compute((n_, h + 2 * pad, w, groups, cg // 8), lambda n, y, xx, g, b: te.sum(
        (x[n, row(y), xx, g * cg + b * 8 + i] + move[g * cg + b * 8 + i] >= 0).astype("uint8")
        << i.astype("uint8"), axis=i), name=f"{name}_sign")


def _words_of_bytes(bts, pad: int, name: str):
    """Sign bytes (N, H + 2 pad, W, groups, bytes) (`sign_bytes`) -> packed words (N, H + 2 pad, W + 2 pad,
    groups, words) uint64, byte b at bits 8(b % 8) of word b // 8, the padding and a group's spare bytes 0."""
    import tvm
    from tvm import te
    n_, hp, w, groups, nb = (int(v) for v in bts.shape)
    h, wp = hp - 2 * pad, w + 2 * pad
    nw = -(-nb // 8)
    j = te.reduce_axis((0, min(8, nb)), name=f"{name}_rj")
    zero = tvm.tirx.const(0, WORD_DTYPE)

    def _word(n, y, xx, g, wd):
        b = wd * 8 + j
        conds = [y >= pad, y < h + pad, xx >= pad, xx < w + pad] if pad else []
        if nb > 8 and nb % 8:
            conds.append(b < nb)
        v = bts[n, y, xx - pad, g, b].astype(WORD_DTYPE) << (j * 8).astype(WORD_DTYPE)
        if conds:
            v = tvm.tirx.if_then_else(tvm.tirx.all(*conds), v, zero)
        return te.sum(v, axis=j)   # disjoint bytes: the sum is an OR

    return te.compute((n_, hp, wp, groups, nw), _word, name=f"{name}_pack")


def sign_pack(x, move, groups: int, pad: int, name: str, sign8: bool = False):
    """x (N, H, W, C) float, move (C,) -> packed (N, H + 2 pad, W + 2 pad, groups, words) uint64.
    `sign8` (where `sign8_fits`): through `sign_bytes`, one byte per 8 channels, then words."""
    import tvm
    from tvm import te
    n_, h, w, c = (int(v) for v in x.shape)
    cg = c // groups
    if sign8 and sign8_fits(c, groups):
        return _words_of_bytes(sign_bytes(x, move, groups, name, pad), pad, name)
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


def dense_windows(packed, kernel: int, stride: int, out_w: int, channels_per_group: int, name: str):
    """Packed words (N, Hp, Wp, groups, words) -> each output column's kernel-row window in the dense layout,
    (N, Hp, groups, Wo, dense_words) uint64: word j of window x holds bits 64j.. of the taps x * stride + kx,
    tap kx's channel c at bit kx * Cg + c, the bits past the window 0. Every word is an OR of the pixel
    words it overlaps, shifted by constants (the j loop is unrolled)."""
    import tvm
    from tvm import te
    n_, hp, _, groups, nw = (int(v) for v in packed.shape)
    cg = channels_per_group
    nd = dense_words(cg, kernel)
    zero = tvm.tirx.const(0, WORD_DTYPE)

    def _word(n, y, g, x, j):
        per_j = []
        for jj in range(nd):
            v = zero
            for kx in range(kernel):
                for w in range(nw):
                    # word w of tap kx (its `bits` channels) starts at bit `at` of window word jj
                    at, bits = kx * cg + w * WORD_BITS - jj * WORD_BITS, min(WORD_BITS, cg - w * WORD_BITS)
                    if at >= WORD_BITS or at + bits <= 0:
                        continue
                    src = packed[n, y, x * stride + kx, g, w]
                    v = v | (src << tvm.tirx.const(at, WORD_DTYPE) if at >= 0 else src >> tvm.tirx.const(-at, WORD_DTYPE))
            per_j.append(v)
        out = per_j[-1]
        for jj in range(nd - 2, -1, -1):
            out = tvm.tirx.Select(j == jj, per_j[jj], out)
        return out

    return te.compute((n_, hp, groups, out_w, nd), _word, name=f"{name}_windows")


def dense_popcount_conv(windows, wd, kernel: int, stride: int, out_hw: tuple[int, int], name: str,
                        acc_dtype: str = "int64"):
    """popcount(window word XOR dense weight word) summed over kernel rows and `dense_words`: the same sums
    as `xnor_popcount_conv` with fewer words where a group's channels leave spare bits (`dense_saves`)."""
    import tvm
    from tvm import te
    n_, _, groups, _, nd = (int(v) for v in windows.shape)
    f = int(wd.shape[-1])
    fg = f // groups
    ky = te.reduce_axis((0, kernel), name=f"{name}_ky")
    rj = te.reduce_axis((0, nd), name=f"{name}_rj")
    return te.compute(
        (n_, *out_hw, f),
        lambda n, y, x, o: te.sum(tvm.tirx.popcount(windows[n, y * stride + ky, o // fg, x, rj] ^ wd[ky, rj, o]
                                                    ).astype(acc_dtype), axis=[ky, rj]),
        name=f"{name}_acc")


CHUNK_MAX = 31  # bytes summed in 8-bit lanes before widening: 31 x 8 = 248 <= 255


def _byte_of(packed, n, y, xx, g, b):
    """Byte `b` of a group's packed words (channels 8b..8b+7), as uint64."""
    return (packed[n, y, xx, g, b // 8] >> ((b % 8) * 8).astype(WORD_DTYPE))


def input_byte_source(x, move, groups: int, pad: int, name: str, sign8: bool = False):
    """The sign bytes of the zero-padded input, for the strategies that read bytes (nibble, pairs, byte):
    (shape (N, H + 2 pad, W + 2 pad, groups), `byte(n, y, xx, g, b)` the uint8 of channels 8b..8b+7 of group g
    at padded position (y, xx), 0 in the padding). With `sign8` where it fits (`sign8_fits`) the bytes come
    straight from the sign stage (`sign_bytes`), the padding by a condition: no words are packed. Otherwise
    they are the bytes of the packed words (`sign_pack`)."""
    import tvm
    n_, h, w, c = (int(v) for v in x.shape)
    shape = (n_, h + 2 * pad, w + 2 * pad, groups)
    if sign8 and sign8_fits(c, groups):
        bts = sign_bytes(x, move, groups, name, pad)
        zero = tvm.tirx.const(0, "uint8")

        def byte(n, y, xx, g, b):
            if not pad:
                return bts[n, y, xx, g, b]
            inside = tvm.tirx.all(y >= pad, y < h + pad, xx >= pad, xx < w + pad)
            return tvm.tirx.if_then_else(inside, bts[n, y, xx - pad, g, b], zero)
        return shape, byte
    packed = sign_pack(x, move, groups, pad, name, sign8)

    def word_byte(n, y, xx, g, b):
        return (_byte_of(packed, n, y, xx, g, b) & tvm.tirx.const(255, WORD_DTYPE)).astype("uint8")
    return shape, word_byte


def input_bytes(source, nbytes: int, name: str):
    """An `input_byte_source` -> its first `nbytes` bytes per group, (N, H, W, groups, nbytes) uint8."""
    from tvm import te
    shape, byte = source
    return te.compute((*shape, nbytes), byte, name=f"{name}_bytes")


def _nibble(byte, half):
    """Nibble `half` (0: bits 0-3, 1: bits 4-7) of a uint8 expression, as uint8."""
    import tvm
    return tvm.tirx.Select(half == 0, byte & tvm.tirx.const(15, "uint8"), byte >> tvm.tirx.const(4, "uint8"))


def nibble_tables(source, nbytes: int, name: str):
    """An `input_byte_source` -> the lookup tables of each input nibble of the first `nbytes` bytes,
    (N, H, W, groups, nbytes, 2, 16) uint8 with `t[..., b, h, i] = popcount(nibble h of byte b ^ i)`. Both
    nibbles come from one byte, picked by `h`: a byte's two tables (32 lanes) are one vector (two broadcasts
    and a blend) rather than two 16-lane ones."""
    import tvm
    from tvm import te
    shape, byte = source

    def _table(n, y, xx, g, b, half, i):
        return tvm.tirx.popcount(_nibble(byte(n, y, xx, g, b), half) ^ i.astype("uint8")).astype("uint8")

    return te.compute((*shape, nbytes, 2, 16), _table, name=f"{name}_table")


def pair_tables(source, nbytes: int, name: str):
    """`nibble_tables` with the two groups of each pair side by side: (N, H, W, groups / 2, nbytes, 2, 2,
    16) uint8, `t[..., j, b, h, s, i]` the table of nibble h of byte b of group 2j + s, so one 32-byte load
    holds the tables of both halves of a pairs step."""
    import tvm
    from tvm import te
    (n_, h, w, groups), byte = source

    def _table(n, y, xx, j, b, half, s, i):
        return tvm.tirx.popcount(_nibble(byte(n, y, xx, j * 2 + s, b), half) ^ i.astype("uint8")).astype("uint8")

    return te.compute((n_, h, w, groups // 2, nbytes, 2, 2, 16), _table, name=f"{name}_table")


def byte_chunk(kernel: int, nbytes: int) -> int:
    """Bytes per 8-bit accumulation chunk: the largest divisor of `nbytes` whose taps x bytes <= 31."""
    return max([d for d in range(1, nbytes + 1) if nbytes % d == 0 and kernel * kernel * d <= CHUNK_MAX], default=1)


def _chunked_conv(step, kernel: int, nbytes: int, shape: tuple, name: str, acc_dtype: str, inner=()):
    """Sums of `step(n, y, x, o, ky, kx, byte)` (uint8, at most 8 each) over taps and bytes: stage
    `{name}_acc8` sums one chunk (all taps x `byte_chunk` bytes, and the `inner` axes) in uint8, stage
    `{name}_acc` widens the chunks to `acc_dtype` and sums them (where there is one chunk, it only widens it
    and the schedule folds it into the epilogue). `shape`: (N, Ho, Wo, F)."""
    from tvm import te
    chunk = byte_chunk(kernel, nbytes)
    ky = te.reduce_axis((0, kernel), name=f"{name}_ky")
    kx = te.reduce_axis((0, kernel), name=f"{name}_kx")
    bi = te.reduce_axis((0, chunk), name=f"{name}_bi")
    n_, ho, wo, f = shape
    acc8 = te.compute((n_, ho, wo, nbytes // chunk, f),
                      lambda n, y, x, bo, o: te.sum(step(n, y, x, o, ky, kx, bo * chunk + bi), axis=[ky, kx, bi, *inner]),
                      name=f"{name}_acc8")
    if nbytes == chunk:   # one chunk (1x1 layers up to 248 channels per group): no sum, the schedule inlines
        return te.compute(shape, lambda n, y, x, o: acc8[n, y, x, 0, o].astype(acc_dtype), name=f"{name}_acc")
    rbo = te.reduce_axis((0, nbytes // chunk), name=f"{name}_rbo")
    return te.compute(shape, lambda n, y, x, o: te.sum(acc8[n, y, x, rbo, o].astype(acc_dtype), axis=rbo),
                      name=f"{name}_acc")


def nibble_popcount_conv(tables, wn, kernel: int, stride: int, out_hw: tuple[int, int], name: str,
                         acc_dtype: str = "int16"):
    """The nibble strategy's popcount(x XOR w) sums (`_chunked_conv`). A lookup is written as a masked sum
    over the 16 table entries, which the schedule's tensor intrinsic (`intrinsics.nibble_lookup`) replaces
    with one `vpshufb` for a vector of output channels."""
    import tvm
    from tvm import te
    groups = int(tables.shape[3])
    _, _, nb, _, f = (int(v) for v in wn.shape)
    fg = f // groups
    ri = te.reduce_axis((0, 16), name=f"{name}_ri")
    zero = tvm.tirx.const(0, "uint8")

    def step(n, y, x, o, ky, kx, b):
        at = (n, y * stride + ky, x * stride + kx, o // fg, b)
        i = ri.astype("uint8")
        return (tvm.tirx.Select(wn[ky, kx, b, 0, o] == i, tables[(*at, 0, ri)], zero)
                + tvm.tirx.Select(wn[ky, kx, b, 1, o] == i, tables[(*at, 1, ri)], zero))

    return _chunked_conv(step, kernel, nb, (int(tables.shape[0]), *out_hw, f), name, acc_dtype, inner=(ri,))


def pairs_popcount_conv(tables, wn, kernel: int, stride: int, out_hw: tuple[int, int], name: str,
                        acc_dtype: str = "int16"):
    """The pairs strategy's popcount(x XOR w) sums, in `pair_source` order (`_chunked_conv`): the nibble
    lookups of two groups of 16 x odd output channels share 32-lane steps, lanes 0-15 looking up the
    first group's table and lanes 16-31 the second's (`pair_tables`), where the nibble strategy spends a
    16-lane step per group (`intrinsics.pair_lookup`)."""
    import tvm
    from tvm import te
    _, _, nb, _, f = (int(v) for v in wn.shape)
    fg2 = f // int(tables.shape[3])
    ri = te.reduce_axis((0, 16), name=f"{name}_ri")
    zero = tvm.tirx.const(0, "uint8")

    def step(n, y, x, o, ky, kx, b):
        at = (n, y * stride + ky, x * stride + kx, o // fg2, b)
        s = o % 32 // 16
        i = ri.astype("uint8")
        return (tvm.tirx.Select(wn[ky, kx, b, 0, o] == i, tables[(*at, 0, s, ri)], zero)
                + tvm.tirx.Select(wn[ky, kx, b, 1, o] == i, tables[(*at, 1, s, ri)], zero))

    return _chunked_conv(step, kernel, nb, (int(tables.shape[0]), *out_hw, f), name, acc_dtype, inner=(ri,))


def byte_popcount_conv(xb, wb, kernel: int, stride: int, out_hw: tuple[int, int], name: str,
                       acc_dtype: str = "int16"):
    """The byte strategy's popcount(x XOR w) sums (`_chunked_conv`): a vector popcount of bytes (NEON
    `cnt`), output channels in 8-bit lanes."""
    import tvm
    groups = int(xb.shape[3])
    _, _, nb, f = (int(v) for v in wb.shape)
    fg = f // groups

    def step(n, y, x, o, ky, kx, b):
        return tvm.tirx.popcount(xb[n, y * stride + ky, x * stride + kx, o // fg, b] ^ wb[ky, kx, b, o])

    return _chunked_conv(step, kernel, nb, (int(xb.shape[0]), *out_hw, f), name, acc_dtype)


def _popcount_conv(x, move, k: int, stride: int, groups: int, out_channels: int, name: str, acc_dtype: str,
                   strategy: str, sign8: bool = False):
    """(weight placeholder, popcount sums) of the binary conv of sign(x + move) with `strategy` (`sign8`: as
    in `sign_pack`)."""
    from tvm import te
    cg = int(x.shape[3]) // groups
    nb = bytes_per_group(cg)
    if strategy in ("nibble", "pairs", "byte"):
        src = input_byte_source(x, move, groups, k // 2, name, sign8)
        out_hw = _out_hw(x, k, stride)
        if strategy == "byte":
            weight = te.placeholder((k, k, nb, out_channels), "uint8", name=f"{name}_weight")
            return weight, byte_popcount_conv(input_bytes(src, nb, name), weight, k, stride, out_hw, name, acc_dtype)
        if strategy == "nibble":
            weight = te.placeholder((k, k, nb, 2, out_channels), "uint8", name=f"{name}_weight")
            return weight, nibble_popcount_conv(nibble_tables(src, nb, name), weight, k, stride, out_hw, name,
                                                acc_dtype)
        # pairs: the weights in `pair_source` order; the name tells `layer.kernel_params`
        weight = te.placeholder((k, k, nb, 2, out_channels), "uint8", name=f"{name}_weight_pairs")
        return weight, pairs_popcount_conv(pair_tables(src, nb, name), weight, k, stride, out_hw, name, acc_dtype)
    packed = sign_pack(x, move, groups, k // 2, name, sign8)
    if strategy == "dense":
        weight = te.placeholder((k, dense_words(cg, k), out_channels), WORD_DTYPE, name=f"{name}_weight")
        out_hw = _out_hw(x, k, stride)
        windows = dense_windows(packed, k, stride, out_hw[1], cg, name)
        return weight, dense_popcount_conv(windows, weight, k, stride, out_hw, name, acc_dtype)
    weight = te.placeholder((k, k, words_per_group(cg), out_channels), WORD_DTYPE, name=f"{name}_weight")
    return weight, xnor_popcount_conv(packed, weight, k, stride, _out_hw(x, k, stride), name, acc_dtype)


def binary_dot(acc, taps_times_cg: int, corr=None, rows: BorderClasses | None = None,
               cols: BorderClasses | None = None, pair_group: int = 0):
    """The exact +-1 conv value at (n, y, x, f) as an int32 expression builder (`pair_group`: the output
    channels per group of a pairs-strategy `acc`, which holds its channels in `pair_source` order)."""
    def dot(n, y, x, o):
        v = taps_times_cg - 2 * acc[n, y, x, _pair_position(o, pair_group) if pair_group else o].astype("int32")
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
                      acc_dtype: str = "int64", strategy: str = "word", parallel_min: int | None = None,
                      sign8: bool = False):
    """One half of a binary block, all fused into one output stage.

    out = rprelu(dot * mul + add + shortcut(x)) with mul = weight scale * BN scale, add = BN shift + move12.
    Returns (placeholders dict, output tensor). Placeholders: move_in (C_in,), weight (`weights_for` the
    strategy: (k, k, words, C_out) uint64 or (k, k, bytes, 2, C_out) uint8 nibbles), corr (rows, cols,
    C_out) int32 if k > 1, mul/add/alpha/bias2 (C_out,) float32. `sign8`: the sign stage in bytes
    (`sign_pack`; x86 with AVX, `schedule.sign8_applies`).
    """
    from tvm import te
    if strategy in AMX_STRATEGIES:   # the epilogue runs inside the tile loop, on each block as it leaves the tiles
        from nasbnn_hw.deploy.kernels.amx import amx_conv
        p = {"move_in": te.placeholder((int(x.shape[3]),), "float32", name=f"{name}_move_in")}
        epi = {key: te.placeholder((out_channels,), "float32", name=f"{name}_{key}")
               for key in ("mul", "add", "alpha", "bias2")}
        p["weight"], out, _ = amx_conv(x, p["move_in"], k, stride, groups, out_channels, name, parallel_min, epi,
                                       sign_in_loop=strategy == "amxs")
        return {**p, **epi}, out
    p, dot = _conv_dot(x, k, stride, groups, out_channels, name, acc_dtype, strategy, parallel_min, sign8)
    for key in ("mul", "add", "alpha", "bias2"):
        p[key] = te.placeholder((out_channels,), "float32", name=f"{name}_{key}")
    sc = shortcut_value(x, stride, out_channels)

    def _out(n, y, xx, o):
        v = dot(n, y, xx, o).astype("float32") * p["mul"][o] + p["add"][o] + sc(n, y, xx, o)
        return rprelu(v, p["alpha"][o], p["bias2"][o])

    out = te.compute((int(x.shape[0]), *_out_hw(x, k, stride), out_channels), _out, name=f"{name}_out")
    return p, out


def _out_hw(x, k: int, stride: int) -> tuple[int, int]:
    pad = k // 2
    return tuple((int(v) + 2 * pad - k) // stride + 1 for v in x.shape[1:3])


def _conv_dot(x, k: int, stride: int, groups: int, out_channels: int, name: str, acc_dtype: str, strategy: str,
              parallel_min: int | None = None, sign8: bool = False):
    """(placeholders move_in, weight, corr; the exact +-1 conv value builder) of sign(x + move_in).
    `parallel_min`: the amx strategy's tile loop runs in parallel from that much work (its loop is built
    here, not by the schedule)."""
    from tvm import te
    _, h, w, c_in = (int(v) for v in x.shape)
    pad = k // 2
    ho, wo = _out_hw(x, k, stride)
    p = {"move_in": te.placeholder((c_in,), "float32", name=f"{name}_move_in")}
    if strategy in AMX_STRATEGIES:   # +-1 int8 products: zero padding is exact, no correction (amxs: amx here)
        from nasbnn_hw.deploy.kernels.amx import amx_conv, amx_dot
        p["weight"], acc, geo = amx_conv(x, p["move_in"], k, stride, groups, out_channels, name, parallel_min)
        return p, amx_dot(acc, geo)
    p["weight"], acc = _popcount_conv(x, p["move_in"], k, stride, groups, out_channels, name, acc_dtype, strategy,
                                      sign8)
    rows = cols = None
    if pad:
        rows, cols = border_classes(h, ho, k, stride, pad), border_classes(w, wo, k, stride, pad)
        p["corr"] = te.placeholder((rows.count, cols.count, out_channels), "int32", name=f"{name}_corr")
    return p, binary_dot(acc, k * k * (c_in // groups), p.get("corr"), rows, cols,
                         out_channels // groups if strategy == "pairs" else 0)


def raw_binary_conv(x, k: int, stride: int, groups: int, out_channels: int, name: str, acc_dtype: str = "int64",
                    strategy: str = "word", parallel_min: int | None = None, sign8: bool = False):
    """The integer +-1 conv of sign(x) alone (no epilogue): for exactness tests and benchmarks."""
    from tvm import te
    p, dot = _conv_dot(x, k, stride, groups, out_channels, name, acc_dtype, strategy, parallel_min, sign8)
    out = te.compute((int(x.shape[0]), *_out_hw(x, k, stride), out_channels), dot, name=f"{name}_out")
    return p, out
