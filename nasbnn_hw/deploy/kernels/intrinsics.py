"""Tensor intrinsics of the CPU schedules.

`nibble_lookup(lanes)`: one step of the nibble strategy (`binary.nibble_popcount_conv`) for `lanes` output
channels of one output pixel: `acc[c] += table[0][w[0][c]] + table[1][w[1][c]]` in uint8, where `table` holds
the two 16-entry popcount tables of one input byte and `w` the two weight nibbles of each channel. The
description is the masked sum the tensor expression computes; the implementation is two `vpshufb`
(32 lanes: AVX2; 16 lanes: SSSE3), each looking up every lane's weight nibble in the table broadcast to all
128-bit halves, and two byte adds. Per 32 x 8 binary MACs: two shuffles, two adds, no widening. 48 lanes (a
group of 48 output channels, which 32-lane steps cannot tile): a 32-lane and a 16-lane lookup per nibble,
four shuffles where three 16-lane steps take six.

`pair_lookup()`: one step of the pairs strategy (`binary.pairs_popcount_conv`) for 32 output channels, 16 of
each group of a pair: the same two `vpshufb` and two adds, with the two groups' tables in the two 128-bit
halves (one 32-byte load of `binary.pair_tables`) instead of one table broadcast.

`sign_bits8()`: one byte of the sign stage (`binary.sign_bytes`): bit i = (x[i] + move[i] >= 0) for 8
channels, as one 8-lane float add, one ordered >= compare (`vcmpps`, predicate GE_OQ: NaN gives 0, as the
expression does) and `vmovmskps`, which gathers the 8 lanes' results into the byte; LLVM's own code for the
same sum widened every comparison to 64-bit lanes (AVX).
"""
from __future__ import annotations

NIBBLE_LANES = (16, 32, 48)
_REGISTERED: set[str] = set()


def nibble_lookup(lanes: int) -> str:
    """The registered name of the nibble-lookup intrinsic for `lanes` (16, 32 or 48) channels."""
    if lanes not in NIBBLE_LANES:
        raise ValueError(f"nibble lookup lanes={lanes} not supported (allowed: 16, 32, 48)")
    return _registered(f"nasbnn_nibble_lookup_{lanes}", lambda name: _register(lanes, name))


def pair_lookup() -> str:
    """The registered name of the pairs strategy's 32-lane lookup intrinsic."""
    return _registered("nasbnn_pair_lookup_32", _register_pairs)


def sign_bits8() -> str:
    """The registered name of the sign stage's byte intrinsic (x86 with AVX)."""
    return _registered("nasbnn_sign_bits8", _register_sign8)


def _register_sign8(name: str) -> None:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(C: T.Buffer((1,), "uint8", offset_factor=1), A: T.Buffer((8,), "float32", offset_factor=1),  # noqa: N803
             M: T.Buffer((8,), "float32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:1], A[0:8], M[0:8])
            T.writes(C[0:1])
            for i in T.serial(8):
                with T.sblock("update"):
                    vi = T.axis.remap("R", [i])
                    C[0] = C[0] + T.shift_left(T.Cast("uint8", T.float32(0) <= A[vi] + M[vi]), T.Cast("uint8", vi))

    cmp = T.llvm_lookup_intrinsic_id("llvm.x86.avx.cmp.ps.256")
    movmsk = T.llvm_lookup_intrinsic_id("llvm.x86.avx.movmsk.ps.256")

    @T.prim_func(s_tir=True)
    def impl(C: T.Buffer((1,), "uint8", offset_factor=1), A: T.Buffer((8,), "float32", offset_factor=1),  # noqa: N803
             M: T.Buffer((8,), "float32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:1], A[0:8], M[0:8])
            T.writes(C[0:1])
            C[0] = C[0] + T.Cast("uint8", T.call_llvm_pure_intrin(
                "int32", movmsk, T.call_llvm_pure_intrin("float32x8", cmp, A.vload([0], "float32x8") + M.vload([0], "float32x8"),
                                                         T.Broadcast(T.float32(0), 8), T.int8(29))))   # 29: _CMP_GE_OQ

    TensorIntrin.register(name, desc, impl, override=True)


def _registered(name: str, register) -> str:
    """`name`, registering its intrinsic with `register(name)` the first time."""
    if name not in _REGISTERED:
        register(name)
        _REGISTERED.add(name)
    return name


def _register_pairs(name: str) -> None:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(C: T.Buffer((32,), "uint8", offset_factor=1),  # noqa: N803
             W: T.Buffer((2, 32), "uint8", offset_factor=1), X: T.Buffer((2, 2, 16), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:32], W[0:2, 0:32], X[0:2, 0:2, 0:16])
            T.writes(C[0:32])
            for i, k in T.grid(32, 16):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + (T.Select(W[0, vi] == T.Cast("uint8", vk), X[0, vi // 16, vk], T.uint8(0))
                                     + T.Select(W[1, vi] == T.Cast("uint8", vk), X[1, vi // 16, vk], T.uint8(0)))

    op = T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pshuf.b")

    def one(X, W, h: int):  # noqa: N803 - nibble h: both groups' tables (32 bytes) looked up by the weights
        return T.reinterpret(T.call_llvm_pure_intrin("int8x32", op, T.reinterpret(X.vload([h, 0, 0], "uint8x32"),
                                                                                  dtype="int8x32"),
                                                     T.reinterpret(W.vload([h, 0], "uint8x32"), dtype="int8x32")),
                             dtype="uint8x32")

    @T.prim_func(s_tir=True)
    def impl(C: T.Buffer((32,), "uint8", offset_factor=1),  # noqa: N803
             W: T.Buffer((2, 32), "uint8", offset_factor=1), X: T.Buffer((2, 2, 16), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:32], W[0:2, 0:32], X[0:2, 0:2, 0:16])
            T.writes(C[0:32])
            C[T.ramp(T.int32(0), 1, 32)] = C.vload([0], "uint8x32") + (one(X, W, 0) + one(X, W, 1))

    TensorIntrin.register(name, desc, impl, override=True)


def _register(VL: int, name: str) -> None:  # noqa: N803 - the TVMScript bodies below read it as a constant
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(C: T.Buffer((VL,), "uint8", offset_factor=1),  # noqa: N803
             W: T.Buffer((2, VL), "uint8", offset_factor=1), X: T.Buffer((2, 16), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:VL], W[0:2, 0:VL], X[0:2, 0:16])
            T.writes(C[0:VL])
            for i, k in T.grid(VL, 16):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + (T.Select(W[0, vi] == T.Cast("uint8", vk), X[0, vk], T.uint8(0))
                                     + T.Select(W[1, vi] == T.Cast("uint8", vk), X[1, vk], T.uint8(0)))

    def lookup(X, W, lo: int, n: int):  # noqa: N803 - lanes lo..lo+n: one vpshufb per nibble, then a byte add
        u8, i8 = f"uint8x{n}", f"int8x{n}"
        op = T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pshuf.b" if n == 32 else "llvm.x86.ssse3.pshuf.b.128")

        def one(h: int):
            table = T.Shuffle([X.vload([h, 0], "uint8x16")] * (n // 16), list(range(16)) * (n // 16))
            return T.reinterpret(T.call_llvm_pure_intrin(i8, op, T.reinterpret(table, dtype=i8),
                                                         T.reinterpret(W.vload([h, lo], u8), dtype=i8)), dtype=u8)
        return one(0) + one(1)

    @T.prim_func(s_tir=True)
    def impl(C: T.Buffer((VL,), "uint8", offset_factor=1),  # noqa: N803
             W: T.Buffer((2, VL), "uint8", offset_factor=1), X: T.Buffer((2, 16), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:VL], W[0:2, 0:VL], X[0:2, 0:16])
            T.writes(C[0:VL])
            # one expression per register: Python names bound inside the body became buffers (workspace
            # allocations inside a parallel loop), where LLVM could no longer keep the tables in registers
            if VL == 48:   # decided when the script is parsed: the 32 and the 16 lanes in separate registers
                C[T.ramp(T.int32(0), 1, 32)] = C.vload([0], "uint8x32") + lookup(X, W, 0, 32)     # (LLVM splits
                C[T.ramp(T.int32(32), 1, 16)] = C.vload([32], "uint8x16") + lookup(X, W, 32, 16)  # <48 x i8>)
            else:
                C[T.ramp(T.int32(0), 1, VL)] = C.vload([0], f"uint8x{VL}") + lookup(X, W, 0, VL)

    TensorIntrin.register(name, desc, impl, override=True)
