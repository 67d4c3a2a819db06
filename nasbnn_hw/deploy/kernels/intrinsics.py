"""Tensor intrinsics of the CPU schedules.

`nibble_lookup(lanes)`: one step of the nibble strategy (`binary.nibble_popcount_conv`) for `lanes` output
channels of one output pixel: `acc[c] += table[0][w[0][c]] + table[1][w[1][c]]` in uint8, where `table` holds
the two 16-entry popcount tables of one input byte and `w` the two weight nibbles of each channel. The
description is the masked sum the tensor expression computes; the implementation is two `vpshufb`
(32 lanes: AVX2; 16 lanes: SSSE3), each looking up every lane's weight nibble in the table broadcast to all
128-bit halves, and two byte adds. Per 32 x 8 binary MACs: two shuffles, two adds, no widening.
"""
from __future__ import annotations

NIBBLE_LANES = (16, 32)
_REGISTERED: set[str] = set()


def nibble_lookup(lanes: int) -> str:
    """The registered name of the nibble-lookup intrinsic for `lanes` (16 or 32) channels."""
    if lanes not in NIBBLE_LANES:
        raise ValueError(f"nibble lookup lanes={lanes} not supported (allowed: 16, 32)")
    name = f"nasbnn_nibble_lookup_{lanes}"
    if name not in _REGISTERED:
        _register(lanes, name)
        _REGISTERED.add(name)
    return name


def _register(VL: int, name: str) -> None:  # noqa: N803 - the TVMScript bodies below read it as a constant
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    U8, I8 = f"uint8x{VL}", f"int8x{VL}"  # noqa: N806
    PSHUFB = "llvm.x86.avx2.pshuf.b" if VL == 32 else "llvm.x86.ssse3.pshuf.b.128"  # noqa: N806
    HALVES = VL // 16  # noqa: N806

    @T.prim_func(s_tir=True)
    def desc(C: T.Buffer((VL,), "uint8", offset_factor=1, scope="local"),  # noqa: N803
             W: T.Buffer((2, VL), "uint8", offset_factor=1), X: T.Buffer((2, 16), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:VL], W[0:2, 0:VL], X[0:2, 0:16])
            T.writes(C[0:VL])
            for i, k in T.grid(VL, 16):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + (T.Select(W[0, vi] == T.Cast("uint8", vk), X[0, vk], T.uint8(0))
                                     + T.Select(W[1, vi] == T.Cast("uint8", vk), X[1, vk], T.uint8(0)))

    @T.prim_func(s_tir=True)
    def impl(C: T.Buffer((VL,), "uint8", offset_factor=1, scope="local"),  # noqa: N803
             W: T.Buffer((2, VL), "uint8", offset_factor=1), X: T.Buffer((2, 16), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:VL], W[0:2, 0:VL], X[0:2, 0:16])
            T.writes(C[0:VL])
            # one expression: Python names bound inside the body became buffers (workspace allocations inside a
            # parallel loop), where LLVM could no longer keep the tables in registers
            C[T.ramp(T.int32(0), 1, VL)] = C.vload([0], U8) + (
                T.reinterpret(T.call_llvm_pure_intrin(
                    I8, T.llvm_lookup_intrinsic_id(PSHUFB),
                    T.reinterpret(T.Shuffle([X.vload([0, 0], "uint8x16")] * HALVES, list(range(16)) * HALVES), dtype=I8),
                    T.reinterpret(W.vload([0, 0], U8), dtype=I8)), dtype=U8)
                + T.reinterpret(T.call_llvm_pure_intrin(
                    I8, T.llvm_lookup_intrinsic_id(PSHUFB),
                    T.reinterpret(T.Shuffle([X.vload([1, 0], "uint8x16")] * HALVES, list(range(16)) * HALVES), dtype=I8),
                    T.reinterpret(W.vload([1, 0], U8), dtype=I8)), dtype=U8))

    TensorIntrin.register(name, desc, impl, override=True)
