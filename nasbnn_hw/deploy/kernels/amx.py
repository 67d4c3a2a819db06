"""The AMX strategy: the binary conv as a +-1 int8 matrix product on Intel AMX tiles (`tdpbssd`).

Sapphire Rapids class x86 cores (LLVM features `amx-tile`, `amx-int8`) multiply 16 x 64 int8 tiles by
64 x 16 ones at 1024 multiply-adds per cycle, three times the XOR + popcount port bound of the same core
with AVX-512 (341 binary MACs per cycle: docs/measurements.md). A +-1 value is one int8 here, not one bit:
the sign stage writes `x + move >= 0` as +1, else -1, and the zero padding PyTorch applies to the sign
output as 0, so the product is the exact binary conv with no padding correction.

Layout. The input is one int8 row of `C` channels per padded pixel, (N, rows, C). One A tile is 16 rows
(pixels) x `kc` input channels of one tap; one B tile is `kc / 4` rows x 64 bytes: 16 output channels x 4
input channels (the VNNI pairing `tdpbssd` reads); the weights are stored tile by tile in the order the
loop reads them (`amx_weights`), each B tile 1 KB of consecutive bytes. Each step of the inner loop loads
two A tiles (two pixel tiles) and one or two B tiles and issues up to four `tdpbssd` into the four
accumulator tiles: a block of 32 pixels x 16 or 32 output channels.

Epilogue. In a whole layer (`binary.binary_half_block`) the tile loop stores each block's accumulators to
a 4 KB buffer and applies the layer's epilogue (scale, shift, shortcut, RPReLU) to it right there, writing
the float output: no int32 accumulators go through memory (at 28 x 28 and above they outgrew L2 and the
layers ran 0.4-0.9x the word schedule's speed). The epilogue of a block is issued after the tile loop of
the next one (two buffers), so the vector units work through it while the tile unit multiplies. The integer
conv alone (`raw_binary_conv`) stores the accumulators as int32 (N, rows, F).

Order. A task (the unit of parallel work, one tile configuration each) is a block of pixel tiles, all
weights streamed through it; where the int8 weights exceed `AMX_CHANNEL_MAJOR_WEIGHTS`, a task is a block
of output channels instead, its B tiles reused by every block of pixels.

The tile loop is a TE extern stage whose body is written in TVMScript (`_conv_body`: tile configuration,
loads, products and stores as LLVM intrinsics, on the addresses of buffer elements); `schedule_amx` tells
the schedule the stage's whole-buffer reads and writes and vectorises the sign stage.

Pixel tiles. Stride 1: the output is computed over whole padded rows ("wide" pixels `y * Wp + x`, the
last `k - 1` columns of each row discarded), so the input address of a tile is linear in its index and
tiles are 16 pixels regardless of the image width. Stride 2: one tile is `Mt` pixels of one output row
(the largest divisor of the output width up to 16), rows of the A tile `stride * C` bytes apart.

Each call asks the kernel for permission to use the AMX tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM)`,
one system call, granted once per process; Linux 5.16 or later), so a deployed library needs no setup
by its caller; every parallel task loads its own tile configuration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AMX_STRATEGIES = ("amx", "amxs")   # the schedule strategies built here (`schedule.STRATEGIES`)
TILE_ROWS = 16        # rows of an A tile (pixels) and of an accumulator tile
TILE_BYTES = 64       # bytes per tile row
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
# Above this many bytes of int8 weights the tile loop runs channel-major (a task per block of output
# channels, its B tiles reused by every pixel block) instead of streaming all weights through each block
# of pixels. Whole layers of the imagenet space at 224 on the Intel Xeon of docs/measurements.md ("AMX"):
# channel-major 1.1-1.9x faster from 1.8 MB of weights, 0.7-0.95x as fast at 1.2 MB and below.
AMX_CHANNEL_MAJOR_WEIGHTS = 3 << 19
# amxs (the sign stage inside the tile loop) only where a task signs at most this many times the input rows
# of its tiles: on 3x3 layers at 28 x 28 (3x) and 5x5 ones (2.5-5x) the repeated signs cost 1.15-1.3x.
AMX_SIGN_REDUNDANCY = 2.1


def amx_chunk(channels_per_group: int) -> int:
    """Input channels per A tile: the largest multiple of 4 up to 64 dividing the group's channels; 0 where
    none does."""
    return max([d for d in range(4, TILE_BYTES + 1, 4) if channels_per_group % d == 0], default=0)


def amx_fits(in_per_group: int, out_per_group: int) -> bool:
    """Whether the AMX strategy builds a layer: input channels per group a multiple of 4, output channels
    per group a multiple of 16 (whole B tiles)."""
    return amx_chunk(in_per_group) > 0 and out_per_group % 16 == 0


def b_tiles(out_per_group: int) -> int:
    """B tiles (16 output channels each) per step: two where the group's channels come in 32s."""
    return 2 if out_per_group % 32 == 0 else 1


def amx_weights(words: np.ndarray, channels_per_group: int, groups: int = 1) -> np.ndarray:
    """Packed words (k, k, words_per_group, F) -> +-1 int8 B tiles in the order the tile loop reads them,
    (F / 16 * k * k * Cg / 4, 64): per group, per block of `b_tiles` x 16 output channels, per tap, per
    chunk of `amx_chunk` input channels, per B tile, its `chunk / 4` rows of 16 channels x 4 inputs (the
    VNNI pairing), so the loop streams them from consecutive addresses."""
    from nasbnn_hw.deploy.kernels.binary import sign_weights
    k, _, _, f = words.shape
    cg, og = channels_per_group, f // groups
    kc, nb = amx_chunk(cg), b_tiles(og)
    pm = sign_weights(words, cg).transpose(2, 3, 0, 1).reshape(                   # tap, F, Cg split:
        k * k, groups, og // (16 * nb), nb, 16, cg // kc, kc // 4, 4)            # f = (g, nt, b, j), c = (q, r, i)
    v = pm.transpose(1, 2, 0, 5, 3, 6, 4, 7)                                     # g, nt, tap, q, b, r, j, i
    return np.ascontiguousarray(v.reshape(f // 16 * k * k * cg // 4, 64))


@dataclass(frozen=True)
class AmxGeometry:
    """Where the pixel tiles of one image lie: `tiles` tiles of `rows` pixels, tile `t` starting at padded
    pixel `base(t)` with its rows 1 (wide tiles) or `stride` (row tiles) pixels apart; `in_rows` padded
    pixels of input (with the slack the last tiles read), `acc_rows` accumulator rows; output pixel (y, x) is
    accumulator row `y * pitch + x`."""
    rows: int
    tiles: int
    wp: int
    per_row: int       # tiles per output row (stride > 1); 0: wide tiles (stride 1)
    stride: int
    pitch: int
    in_rows: int
    acc_rows: int

    @property
    def blocks(self) -> int:
        return (self.tiles + 1) // 2

    def base(self, t):
        if not self.per_row:
            return t * self.rows
        return (t // self.per_row) * self.stride * self.wp + (t % self.per_row) * self.rows * self.stride


def amx_geometry(h: int, w: int, k: int, stride: int) -> AmxGeometry:
    pad = k // 2
    hp, wp = h + 2 * pad, w + 2 * pad
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    if stride == 1:
        rows, per_row, pitch, tiles = TILE_ROWS, 0, wp, -(-ho * wp // TILE_ROWS)
    else:
        rows = max(d for d in range(1, TILE_ROWS + 1) if wo % d == 0)
        per_row, pitch = wo // rows, wo
        tiles = ho * per_row
    g = AmxGeometry(rows, tiles, wp, per_row, stride, pitch, 0, 0)
    last = max(g.base(t) for t in range(2 * g.blocks)) + (k - 1) * wp + (k - 1) + (rows - 1) * stride + 1
    return AmxGeometry(rows, tiles, wp, per_row, stride, pitch, max(hp * wp, last), 2 * g.blocks * rows)


def _sign_rows(g: AmxGeometry, k: int) -> int:
    """Padded input rows the two pixel tiles of a block read, from its first tile's base (the most of any block)."""
    step = 1 if not g.per_row else g.stride
    return max(g.base(2 * b + 1) - g.base(2 * b) for b in range(g.blocks)) + (k - 1) * g.wp + k + (g.rows - 1) * step


def amx_sign_span(cfg) -> tuple[int, int]:
    """(padded input rows a task signs under the amxs strategy, output rows of its two pixel tiles)."""
    g = amx_geometry(cfg.resolution, cfg.resolution, cfg.kernel, cfg.stride)
    return _sign_rows(g, cfg.kernel), 2 * g.rows


def amx_sign_in_loop(cfg) -> bool:
    """Whether the amxs strategy builds layer `cfg`: pixel-major tasks (`AMX_CHANNEL_MAJOR_WEIGHTS`) that
    sign at most `AMX_SIGN_REDUNDANCY` times the rows of their tiles (1x1 layers, 3x3 up to 14 x 14)."""
    span, rows = amx_sign_span(cfg)
    return amx_weight_bytes(cfg) <= AMX_CHANNEL_MAJOR_WEIGHTS and span <= AMX_SIGN_REDUNDANCY * rows


def amx_weight_bytes(cfg) -> int:
    """Bytes of the int8 weights of binary layer `cfg` under the amx strategy (8x its packed bits)."""
    return cfg.kernel * cfg.kernel * (cfg.in_channels // cfg.groups) * cfg.out_channels


def amx_conv(x, move, k: int, stride: int, groups: int, out_channels: int, name: str,
             parallel_min: int | None = None, epilogue: dict | None = None, sign_in_loop: bool = False):
    """(weight placeholder `{name}_weight_amx`, accumulator tensor `{name}_amx` (N, acc rows, F) int32,
    geometry) of the +-1 conv of sign(x + move) (`x` NHWC float). The tile loop runs in parallel where the
    layer's work (in 64-bit words, as the other strategies count it) reaches `parallel_min`.

    With `epilogue` (the half block's `mul`, `add`, `alpha`, `bias2` placeholders), the tile loop applies
    `binary.binary_half_block`'s epilogue to each 16 x 32 block of accumulators as it leaves the tiles (an
    L1 buffer, no int32 round trip through memory) and the second tensor is the block's float output
    `{name}_out` (N, Ho, Wo, F). With `sign_in_loop` as well (the amxs strategy; not where tasks are
    channel-major), each task signs the input rows its pixel tiles read into a buffer of its own: no sign
    stage, one parallel region."""
    from nasbnn_hw.deploy.kernels.schedule import PARALLEL_MIN
    from tvm import te
    n_, h, w, c = (int(v) for v in x.shape)
    pad = k // 2
    geo = amx_geometry(h, w, k, stride)
    cg, og = c // groups, out_channels // groups
    wt = te.placeholder((out_channels // 16 * k * k * cg // 4, 64), "int8", name=f"{name}_weight_amx")

    def signed_rows():
        return te.compute((n_, geo.in_rows, c), lambda n, r, ch: signed(x, move, n, r, ch, geo, k, h, w),
                          name=f"{name}_xs")
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    work = n_ * ho * wo * out_channels * k * k * cg // 64
    parallel = work >= (PARALLEL_MIN if parallel_min is None else parallel_min)
    cmaj = k * k * cg * out_channels > AMX_CHANNEL_MAJOR_WEIGHTS

    if epilogue is None:
        def fcompute(ins, outs):
            return _conv_body(n_, c, cg, groups, og, out_channels, k, geo, ins[0], ins[1], outs[0], parallel,
                              channel_major=cmaj)

        acc = te.extern((n_, geo.acc_rows, out_channels), [signed_rows(), wt], fcompute, name=f"{name}_amx",
                        dtype="int32")
        return wt, acc, geo
    keys = ("mul", "add", "alpha", "bias2")
    if cmaj or not sign_in_loop:    # (channel-major tasks would each sign every pixel again)
        def fcompute_fused(ins, outs):
            epi = AmxEpilogue(outs[0], ins[2], *ins[3:], ho, wo, stride)
            return _conv_body(n_, c, cg, groups, og, out_channels, k, geo, ins[0], ins[1], None, parallel, epi,
                              cmaj)
        inputs = [signed_rows(), wt, x]
    else:       # each task signs the input rows its pixel tiles read, into a buffer of its own
        def fcompute_fused(ins, outs):
            epi = AmxEpilogue(outs[0], ins[0], *ins[3:], ho, wo, stride)
            return _conv_body(n_, c, cg, groups, og, out_channels, k, geo, None, ins[2], None, parallel, epi,
                              sign=AmxSign(ins[0], ins[1], h, w))
        inputs = [x, move, wt]
    out = te.extern((n_, ho, wo, out_channels), [*inputs, *(epilogue[key] for key in keys)], fcompute_fused,
                    name=f"{name}_out", dtype="float32")
    return wt, out, geo


def signed(x, move, n, r, ch, geo: AmxGeometry, k: int, h: int, w: int):
    """The int8 sign of padded input row `r` (`geo`'s pixels), channel `ch`, of image `n` of `x` (N, H, W, C):
    +1 where x + move >= 0, else -1, and 0 in the zero padding (a tensor or a buffer: the sign stage and the
    tile loop's own signing share it)."""
    import tvm
    pad = k // 2
    yy, xx = r // geo.wp, r % geo.wp
    v = tvm.tirx.Select(x[n, yy - pad, xx - pad, ch] + move[ch] >= 0, tvm.tirx.const(1, "int8"),
                        tvm.tirx.const(-1, "int8"))
    if not pad and geo.in_rows == h * w:
        return v
    inside = tvm.tirx.all(r < (h + 2 * pad) * geo.wp, yy >= pad, yy < h + pad, xx >= pad, xx < w + pad)
    return tvm.tirx.if_then_else(inside, v, tvm.tirx.const(0, "int8"))


@dataclass(frozen=True)
class AmxSign:
    """The sign stage inside the tile loop: layer input `X` (N, H, W, C) float, `MOVE` (C,), image size."""
    X: object     # noqa: N815
    MOVE: object  # noqa: N815
    h: int
    w: int


@dataclass(frozen=True)
class AmxEpilogue:
    """The buffers and output size of a fused epilogue (`amx_conv(..., epilogue=...)`): output `Y`, layer
    input `X` (the shortcut), per-channel `MUL`, `ADD`, `ALPHA`, `BIAS2`."""
    Y: object    # noqa: N815
    X: object    # noqa: N815
    MUL: object  # noqa: N815
    ADD: object  # noqa: N815
    ALPHA: object  # noqa: N815
    BIAS2: object  # noqa: N815
    ho: int
    wo: int
    stride: int


def _conv_body(N: int, C: int, CG: int, G: int, OG: int, F: int, K: int, geo: AmxGeometry,  # noqa: N803
               X, W, A, parallel: bool = True, epi: AmxEpilogue | None = None,  # noqa: N803
               channel_major: bool = False, sign: AmxSign | None = None):
    """The tile loop over the extern stage's buffers `X` (input rows), `W` (B tiles) and `A` (accumulators),
    written in TVMScript (the Python constants and buffers are read when it is parsed). Tiles are loaded and
    stored through the addresses of buffer elements: TVM's storage reuse may put another stage's buffer of
    another type in the same memory, and remaps element accesses (raw typed pointers it cannot).

    With `epi` the accumulator tiles of each block go to a local buffer (`A` unused) and the epilogue writes
    the block's valid pixels to `epi.Y`. With `sign` (`X` unused) each task first signs the padded input rows
    its tiles read into a local buffer of its own. `channel_major`: a task per block of output channels.
    The body starts with one whole-buffer access per buffer (inputs, then the output; `whole_buffer_accesses`)."""
    import tvm
    from tvm.script import tirx as T

    from nasbnn_hw.deploy.kernels.binary import rprelu
    KC = amx_chunk(CG)
    NB = b_tiles(OG)
    NT, KQ, MB, R = OG // (16 * NB), CG // KC, geo.blocks, geo.rows
    RS = (1 if not geo.per_row else geo.stride) * C          # bytes between the rows of an A tile
    loop = T.parallel if parallel else T.serial

    def intrin(op, *args):
        return T.call_llvm_intrin("void", f"llvm.x86.{op}", *args)

    SPAN = _sign_rows(geo, K)        # with `sign`: the input rows a task signs
    SV = max(v for v in (64, 32, 16, 8, 4, 2, 1) if C % v == 0)     # sign stage lanes

    def block_base(nm):
        return geo.base(nm % MB * 2)

    def load_a(nm, gi, tap, q, h: int, xsb=None):     # pixel tile h of the block: tile register 4 + h
        if xsb is None:
            at = X[nm // MB, geo.base(nm % MB * 2 + h) + tap // K * geo.wp + tap % K, gi * CG + q * KC]
        else:
            at = xsb[geo.base(nm % MB * 2 + h) - block_base(nm) + tap // K * geo.wp + tap % K, gi * CG + q * KC]
        return intrin("tileloadd64", T.int8(4 + h), T.address_of(at), T.int64(RS))

    def sign_of(nm, i, c):   # row block_base + i of the padded input (`signed`)
        return signed(sign.X, sign.MOVE, nm // MB, block_base(nm) + i, c, geo, K, sign.h, sign.w)

    def load_b(gi, nt, tap, q, b: int):     # 16 output channels: tile register 6 + b
        at = W[((((gi * NT + nt) * K * K + tap) * KQ + q) * NB + b) * KC // 4, 0]
        return intrin("tileloadd64", T.int8(6 + b), T.address_of(at), T.int64(64))

    def store(nm, gi, nt, h: int, b: int):  # accumulator tile 2h + b
        at = A[nm // MB, (nm % MB * 2 + h) * R, gi * OG + nt * 16 * NB + b * 16]
        return intrin("tilestored64", T.int8(h * 2 + b), T.address_of(at), T.int64(F * 4))

    def dp(h: int, b: int):
        return intrin("tdpbssd", T.int8(h * 2 + b), T.int8(4 + h), T.int8(6 + b))

    FB = 16 * NB                     # output channels of a block

    def stash(blk, sl, h: int, b: int):  # accumulator tile 2h + b into slot `sl` of the block buffer
        return intrin("tilestored64", T.int8(h * 2 + b), T.address_of(blk[sl, h * R, b * 16]), T.int64(FB * 4))

    def pixel(nm, h, r):             # (y, x) of row r of pixel tile h of block nm, and whether it is an output
        t = nm % MB * 2 + h
        if not geo.per_row:
            p = t * R + r
            return p // geo.wp, p % geo.wp, tvm.tirx.all(p < epi.ho * geo.wp, p % geo.wp < epi.wo)
        return t // geo.per_row, t % geo.per_row * R + r, t < geo.tiles

    # the epilogue's vectors: where the shortcut tiles the input channels (F > C), a vector must lie in one
    # copy of them, or its shortcut load becomes a gather
    EW = FB if F <= C or C % FB == 0 else 16
    WRAP = F > C and C % EW != 0     # vectors across copies (C not a multiple of 16): each lane its own

    def finish(blk, sl, nm, gi, nt, h, r, jb, j):   # `binary.binary_half_block`'s epilogue, channel jb * EW + j
        n, (y, xx, _) = nm // MB, pixel(nm, h, r)
        o0 = gi * OG + nt * FB + jb * EW
        o = o0 + j
        if F <= C:
            c = o
        elif WRAP:
            c = o % C
        else:
            c = o0 % C + j
        xf = epi.X
        if geo.stride == 1:
            sc = xf[n, y, xx, c]
        else:
            sc = (xf[n, 2 * y, 2 * xx, c] + xf[n, 2 * y, 2 * xx + 1, c] + xf[n, 2 * y + 1, 2 * xx, c]
                  + xf[n, 2 * y + 1, 2 * xx + 1, c]) * 0.25
        v = blk[sl, h * R + r, jb * EW + j].astype("float32") * epi.MUL[o] + epi.ADD[o] + sc
        return rprelu(v, epi.ALPHA[o], epi.BIAS2[o])

    def valid(nm, h, r):
        return pixel(nm, h, r)[2]

    def row(nm, h, r):
        return pixel(nm, h, r)[0]

    def col(nm, h, r):
        return pixel(nm, h, r)[1]

    # pixel-major: a task per block of pixels, all weights streamed through it; channel-major (large
    # weights): a task per 16 x NB output channels, its B tiles reused by every pixel block
    T0, T1 = (G * NT, N * MB) if channel_major else (N * MB, G * NT)

    FUSED = epi is not None
    SIGNED = sign is None          # the input rows come signed (`X`); else each task signs its own
    PIPE = 1 if FUSED and T1 > 1 else 0   # (a pipeline of one step gains nothing)

    def pick(t0, t1, which: int):   # (nm, gi, nt) of step t1 of task t0
        blocks, chans = (t1, t0) if channel_major else (t0, t1)
        return (blocks, chans // NT, chans % NT)[which]
    Y = epi.Y if FUSED else None

    @T.prim_func(s_tir=True, check_well_formed=False)   # the buffers are declared by the enclosing function
    def body() -> None:
        assert T.call_extern("int64", "syscall", T.int64(SYS_ARCH_PRCTL), T.int64(ARCH_REQ_XCOMP_PERM),
                             T.int64(XFEATURE_XTILEDATA)) == T.int64(0), \
            "the operating system refused AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM; Linux 5.16 or later)"
        # one task per (image, block of two pixel tiles) or per block of output channels, one tile
        # configuration each: `ldtilecfg` waits for the tile unit (one per 16 x 32 output block instead made
        # 256->256 3x3 1.17x slower at 1 thread)
        for t0 in loop(T0):
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            for i in range(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)
            for t in range(8):   # tiles 0-3 accumulators, 4-5 pixels (A), 6-7 weights (B)
                cfg[16 + 2 * t] = T.Cast("uint8", T.if_then_else(t < 4 or t >= 6, 64, KC))
                cfg[48 + t] = T.Cast("uint8", T.if_then_else(t < 6, R, KC // 4))
            T.evaluate(intrin("ldtilecfg", cfg.access_ptr("r")))
            if not SIGNED:
                xsb = T.alloc_buffer((SPAN, C), "int8", scope="local")
                T.evaluate(T.address_of(xsb[0, 0]))
                T.evaluate(T.address_of(xsb[SPAN - 1, C - 1]))
                for i, cb in T.grid(SPAN, C // SV):
                    for j in T.vectorized(SV):
                        xsb[i, cb * SV + j] = sign_of(t0, i, cb * SV + j)
            # fused: two block buffers, the epilogue of step t1 - 1 issued after the tile loop of step t1,
            # so the vector units work through it while the tile unit multiplies
            blk = T.alloc_buffer((2, 2 * R, FB), "int32", scope="local")
            # the tiles store whole blocks; the epilogue reads only output pixels: without these whole-buffer
            # accesses buffer compaction shrinks the buffer to the rows it reads, and the stores overrun it
            T.evaluate(T.address_of(blk[0, 0, 0]))
            T.evaluate(T.address_of(blk[1, 2 * R - 1, FB - 1]))
            for t1 in range(T1 + PIPE):
                if t1 < T1:
                    T.evaluate(intrin("tilezero", T.int8(0)))
                    T.evaluate(intrin("tilezero", T.int8(2)))
                    if NB == 2:
                        T.evaluate(intrin("tilezero", T.int8(1)))
                        T.evaluate(intrin("tilezero", T.int8(3)))
                    for tap, q in T.grid(K * K, KQ):
                        if SIGNED:
                            T.evaluate(load_a(pick(t0, t1, 0), pick(t0, t1, 1), tap, q, 0))
                            T.evaluate(load_a(pick(t0, t1, 0), pick(t0, t1, 1), tap, q, 1))
                        else:
                            T.evaluate(load_a(pick(t0, t1, 0), pick(t0, t1, 1), tap, q, 0, xsb))
                            T.evaluate(load_a(pick(t0, t1, 0), pick(t0, t1, 1), tap, q, 1, xsb))
                        T.evaluate(load_b(pick(t0, t1, 1), pick(t0, t1, 2), tap, q, 0))
                        if NB == 2:
                            T.evaluate(load_b(pick(t0, t1, 1), pick(t0, t1, 2), tap, q, 1))
                        T.evaluate(dp(0, 0))
                        T.evaluate(dp(1, 0))
                        if NB == 2:
                            T.evaluate(dp(0, 1))
                            T.evaluate(dp(1, 1))
                if FUSED:
                    if PIPE == 0:
                        T.evaluate(stash(blk, t1 % 2, 0, 0))
                        T.evaluate(stash(blk, t1 % 2, 1, 0))
                        if NB == 2:
                            T.evaluate(stash(blk, t1 % 2, 0, 1))
                            T.evaluate(stash(blk, t1 % 2, 1, 1))
                    if t1 >= PIPE:
                        for h, r in T.grid(2, R):
                            if valid(pick(t0, t1 - PIPE, 0), h, r):
                                for jb in range(FB // EW):
                                    for j in T.vectorized(EW):
                                        Y[pick(t0, t1 - PIPE, 0) // MB, row(pick(t0, t1 - PIPE, 0), h, r),
                                          col(pick(t0, t1 - PIPE, 0), h, r),
                                          pick(t0, t1 - PIPE, 1) * OG + pick(t0, t1 - PIPE, 2) * FB + jb * EW + j] = \
                                            finish(blk, (t1 - PIPE) % 2, pick(t0, t1 - PIPE, 0),
                                                   pick(t0, t1 - PIPE, 1), pick(t0, t1 - PIPE, 2), h, r, jb, j)
                    if PIPE == 1 and t1 < T1:
                        T.evaluate(stash(blk, t1 % 2, 0, 0))
                        T.evaluate(stash(blk, t1 % 2, 1, 0))
                        if NB == 2:
                            T.evaluate(stash(blk, t1 % 2, 0, 1))
                            T.evaluate(stash(blk, t1 % 2, 1, 1))
                else:
                    T.evaluate(store(pick(t0, t1, 0), pick(t0, t1, 1), pick(t0, t1, 2), 0, 0))
                    T.evaluate(store(pick(t0, t1, 0), pick(t0, t1, 1), pick(t0, t1, 2), 1, 0))
                    if NB == 2:
                        T.evaluate(store(pick(t0, t1, 0), pick(t0, t1, 1), pick(t0, t1, 2), 0, 1))
                        T.evaluate(store(pick(t0, t1, 0), pick(t0, t1, 1), pick(t0, t1, 2), 1, 1))
            T.evaluate(intrin("tilerelease"))

    # whole-buffer accesses first, one per buffer the stage reads (in `te.extern`'s input order) and last the
    # one it writes: buffer compaction then keeps every element the tiles address, and `schedule_amx` reads
    # the stage's buffers from them
    ins = [X] if SIGNED else [sign.X, sign.MOVE]
    ins += [W] + ([] if not FUSED else ([epi.X] if SIGNED else []) + [epi.MUL, epi.ADD, epi.ALPHA, epi.BIAS2])
    hints = [tvm.tirx.Evaluate(tvm.tirx.address_of(b[tuple(int(e) - 1 for e in b.shape)]))
             for b in [*ins, Y if FUSED else A]]
    return tvm.tirx.SeqStmt([*hints, body.body])


def whole_buffer_accesses(stmt) -> list:
    """The buffers of the leading whole-buffer accesses of an AMX stage's body (`_conv_body`): its inputs,
    then its output."""
    import tvm
    out = []
    for st in (stmt.seq if isinstance(stmt, tvm.tirx.SeqStmt) else [stmt]):
        v = getattr(st, "value", None) if isinstance(st, tvm.tirx.Evaluate) else None
        if not (isinstance(v, tvm.ir.expr.Call) and v.op.name == "tirx.address_of"):
            break
        out.append(v.args[0].source)
    return out


def amx_dot(acc, geo: AmxGeometry):
    """The exact +-1 conv value at (n, y, x, f) from `amx_conv`'s accumulators."""
    def dot(n, y, x, o):
        return acc[n, y * geo.pitch + x, o]
    return dot


def schedule_amx(sch, name: str, tile_cfg: dict | None = None) -> None:
    """The sign stage vectorised over channels and rows in parallel; the tile loop (an extern stage, whose
    whole-buffer reads and writes the schedule is told here: TE leaves an extern's empty); where the
    epilogue is a stage of its own (`raw_binary_conv`), it vectorised over 16 output channels, rows in
    parallel; in parallel only where the layer's work (64-bit words, as `amx_conv` counts it) reaches
    `parallel_min`."""
    import tvm
    from tvm import s_tir

    from nasbnn_hw.deploy.kernels.schedule import _iterations, _maybe_parallel
    func = sch.mod["main"]
    named = {b.name: b for b in [*func.params, *func.body.block.alloc_buffers]}   # params are the buffers
    fused = f"{name}_amx" not in named          # the epilogue inside the tile loop: the extern is `{name}_out`
    signed = f"{name}_xs" in named              # a sign stage of its own (else the tile loop signs)
    blk = sch.get_sblock(f"{name}_out" if fused else f"{name}_amx")
    old = sch.get(blk)
    *reads, written = whole_buffer_accesses(old.body)
    wt = named[f"{name}_weight_amx"]

    def full(b):
        return tvm.tirx.BufferRegion(b, [tvm.ir.Range(0, e) for e in b.shape])
    new = s_tir.SBlock(old.iter_vars, [full(b) for b in reads], [full(written)], old.name_hint, old.body)
    sch.state.replace(sch.get_sref(blk), new, {old: new})
    f = int(written.shape[-1])
    taps_inputs = 4 * int(wt.shape[0]) * 16 // f    # k * k * Cg (`amx_weights`' rows)
    if fused:
        outputs, stages = int(np.prod([int(e) for e in written.shape])), [(f"{name}_xs", 64)] if signed else []
    else:
        outputs = _iterations(sch, sch.get_sblock(f"{name}_out"))
        stages = [(f"{name}_xs", 64), (f"{name}_out", 16)]
    work = outputs * taps_inputs // 64
    for stage, lanes in stages:
        b = sch.get_sblock(stage)
        loops = sch.get_loops(b)
        ext = int(sch.get(loops[-1]).extent)
        v = max([d for d in (lanes, 32, 16, 8, 4) if ext % d == 0 and d <= lanes], default=1)
        if v > 1:
            sch.vectorize(sch.split(loops[-1], [None, v])[1])
        _maybe_parallel(sch, work, loops[:2], tile_cfg)
