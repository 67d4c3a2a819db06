"""Every TVM kernel against a PyTorch reference of the same layer: integer results exactly equal, float
results within 1e-5 of the output's scale."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _bnn_reference import StaticBlock, StaticStem, shortcut
from nasbnn_hw.deploy.kernels import KernelBuildError, TargetError, build_layer, resolve_target, supports
from nasbnn_hw.deploy.kernels import schedule as S
from nasbnn_hw.deploy.kernels.binary import border_classes, byte_weights, dense_saves, dense_weights, \
    nibble_weights, pack_weights, padding_correction, pair_source, pairs_fit, weights_for
from nasbnn_hw.deploy.kernels.layer import build_binary_conv
from nasbnn_hw.deploy.kernels.params import binary_half_params, head_params, stem_params
from nasbnn_hw.core.layers import LayerConfig

RTOL = 1e-5


def assert_float_close(got: np.ndarray, ref: np.ndarray):
    scale = float(np.abs(ref).max())
    err = float(np.abs(got - ref).max())
    assert err <= RTOL * max(scale, 1.0), f"max abs err {err:.3g} vs scale {scale:.3g}"


def nhwc(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("c_in,c_out,k,groups,stride,res", [
    (24, 24, 3, 1, 1, 8),      # channels not a multiple of 64
    (48, 48, 5, 2, 2, 10),     # k=5, groups, stride 2
    (96, 96, 3, 4, 2, 6),      # 24 channels per group
    (128, 128, 3, 1, 1, 5),    # two full words
    (160, 160, 5, 2, 1, 3),    # 80 per group = 1.25 words, image smaller than the kernel reach
    (48, 96, 1, 2, 1, 5),      # 1x1, grouped, C_out > C_in
    (64, 64, 1, 1, 2, 6),      # 1x1 stride 2
])
def test_binary_conv_is_exact(c_in, c_out, k, groups, stride, res):
    lay = build_binary_conv(c_in, c_out, k, groups, stride, res, seed=c_in + k)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, c_in, res, res, generator=g)
    move = torch.randn(c_in, generator=g) * 0.3
    w = torch.where(torch.randn(c_out, c_in // groups, k, k, generator=g) >= 0, 1.0, -1.0)
    params = {"x": nhwc(x), "move_in": move.numpy(), "weight": pack_weights(w.numpy(), groups)}
    if k > 1:
        params["corr"] = padding_correction(w.numpy(), groups, (res, res), stride, k // 2)[0]
    got = lay.run(params)
    ref = F.conv2d(torch.sign(x + move.view(1, -1, 1, 1)), w, None, stride, k // 2, 1, groups)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, nhwc(ref).astype(np.int32))


HASWELL = {"kind": "llvm", "mcpu": "haswell"}  # AVX2 without AVX-512: runs on every x86-64 CPU these tests run on


@pytest.mark.parametrize("c_in,c_out,k,groups,stride,res,sched", [
    (20, 32, 3, 1, 1, 5, S.NIBBLE_X86),                                 # 20 channels: a spare nibble and a half
    (96, 96, 5, 2, 2, 10, S.NIBBLE_X86),                                # 48 per group: 16-lane lookups, stride 2
    (96, 96, 5, 2, 1, 10, S.CpuSchedule(2, 96, 32, "int16", strategy="nibble")),  # 48 per group: 32 + 16 lanes
    (144, 144, 3, 1, 1, 5, S.CpuSchedule(2, 96, 32, "int32", strategy="nibble")),  # 48-channel tiles of 144
    (128, 128, 3, 1, 1, 5, S.NIBBLE_X86_WIDE),                          # int32 accumulators
    (64, 128, 1, 1, 2, 6, S.CpuSchedule(2, 128, 32, "int16", strategy="nibble")),  # 1x1 stride 2
    (256, 256, 3, 8, 1, 7, S.CpuSchedule(4, 32, 32, "int16", strategy="nibble")),  # 32 per group, 8 groups
    (512, 512, 1, 1, 1, 3, S.NIBBLE_X86),                               # 64 bytes: chunks of 16 widened 4 times
    (20, 32, 3, 1, 1, 5, S.BYTE_ARM),                                   # the byte strategy (here on x86)
    (96, 96, 5, 2, 2, 10, S.CpuSchedule(4, 64, 16, "int32", strategy="byte")),
    (512, 512, 1, 1, 1, 3, S.BYTE_ARM),
    (96, 96, 5, 2, 1, 10, S.PAIRS_X86),                                 # pairs: 48 per group, 2 groups
    (192, 192, 3, 4, 2, 10, S.CpuSchedule(2, 96, 32, "int32", strategy="pairs")),  # 2 pairs, stride 2, int32
    (64, 64, 5, 4, 1, 6, S.PAIRS_X86),                                  # 16 per group: one 32-lane step per pair
    (48, 96, 1, 2, 1, 5, S.PAIRS_X86),                                  # 1x1, 24 inputs per group (3 bytes)
])
def test_nibble_and_byte_strategies_are_exact(c_in, c_out, k, groups, stride, res, sched):
    """The nibble (tables + vpshufb) and byte (vector popcount of bytes) strategies, 8-bit chunks, against
    PyTorch, on the AVX2 target."""
    assert sched.fits(LayerConfig("bconv", c_in, c_out, k, groups, stride, res))
    lay = build_binary_conv(c_in, c_out, k, groups, stride, res, target=HASWELL, tile=sched.tile())
    g = torch.Generator().manual_seed(c_in + k)
    x = torch.randn(1, c_in, res, res, generator=g)
    move = torch.randn(c_in, generator=g) * 0.3
    w = torch.where(torch.randn(c_out, c_in // groups, k, k, generator=g) >= 0, 1.0, -1.0)
    words = pack_weights(w.numpy(), groups)
    params = {"x": nhwc(x), "move_in": move.numpy(),
              "weight": weights_for(words, c_in // groups, sched.strategy, groups)}
    if k > 1:
        params["corr"] = padding_correction(w.numpy(), groups, (res, res), stride, k // 2)[0]
    ref = F.conv2d(torch.sign(x + move.view(1, -1, 1, 1)), w, None, stride, k // 2, 1, groups)
    np.testing.assert_array_equal(lay.run(params), nhwc(ref).astype(np.int32))


def test_pairs_order_and_where_pairs_schedules_apply():
    src = pair_source(48, 192)             # 4 groups of 48: pairs (0, 1) and (2, 3)
    assert sorted(src.tolist()) == list(range(192))
    assert src[:48].tolist() == [*range(0, 16), *range(48, 64), *range(16, 32)]   # step 0: group 0 | group 1
    assert src[96:112].tolist() == list(range(96, 112))                          # the second pair's first lanes
    w = np.where(np.random.default_rng(0).standard_normal((96, 8, 1, 1)) >= 0, 1.0, -1.0).astype(np.float32)
    words = pack_weights(w, 2)
    assert np.array_equal(weights_for(words, 8, "pairs", 2), nibble_weights(words, 8)[..., pair_source(48, 96)])
    assert pairs_fit(48, 2) and pairs_fit(16, 4) and not pairs_fit(48, 3) and not pairs_fit(32, 2)
    assert not pairs_fit(24, 2)
    avx2, avx512 = resolve_target(HASWELL), resolve_target({"kind": "llvm", "mcpu": "icelake-server"})
    g2 = LayerConfig("bconv", 96, 96, 5, 2, 1, 28)
    assert S.default_schedule(avx2, g2) == S.PAIRS_X86 and S.PAIRS_X86.tile_of(g2) == (7, 96, 32)
    assert S.default_schedule(avx2, LayerConfig("bconv", 144, 144, 3, 3, 1, 8)) == S.NIBBLE_X86_48  # odd groups
    assert S.default_schedule(avx512, g2) == S.DENSE_X86                 # no lookups without a reason on AVX-512
    assert "pairs" in {c.strategy for c in S.candidate_schedules(avx2, g2)}
    assert {"nibble", "pairs"} <= {c.strategy for c in S.candidate_schedules(avx512, g2)}   # tune weighs them
    assert "pairs" not in {c.strategy for c in S.candidate_schedules(resolve_target("rpi4"), g2)}
    assert S.PAIRS_X86.fingerprint() == "nibp-p7c96v32-int16-pm131072"
    with pytest.raises(S.ScheduleError, match="a pairs schedule takes 32 lanes"):
        S.CpuSchedule(7, 96, 16, "int16", strategy="pairs")


def test_pairs_match_the_word_kernel_on_every_imagenet_layer_they_apply_to():
    """Every distinct binary layer of the imagenet space (at 32x32) the pairs strategy applies to, whole
    layers (epilogue, shortcut, padding correction, its channel order undone): the word kernel's output from
    the same random arguments, on the AVX2 target."""
    from cost_models._layers import space_layer_configs
    from nasbnn_hw.core.space import get_space
    cfgs = {c for c in space_layer_configs(get_space("imagenet").with_resolution(32))
            if c.kind == "bconv" and S.PAIRS_X86.fits(c)}
    assert len(cfgs) >= 20                                    # 48 per group: 96 g2, 192 g4, 384 g8, 768 g16
    for cfg in sorted(cfgs, key=lambda c: c.key()):
        word, pairs = (build_layer(cfg, target=HASWELL, schedule=s).run() for s in (S.AVX2_X86, S.PAIRS_X86))
        assert np.array_equal(word, pairs), cfg.key()


def test_nibble_weights_and_where_nibble_schedules_apply():
    w = np.ones((32, 20, 1, 1), np.float32)
    w[0, 3] = -1                                  # channel 3 of filter 0: bit 3 of byte 0, low nibble
    w[1, 17] = -1                                 # channel 17 of filter 1: bit 1 of byte 2, low nibble
    nib = nibble_weights(pack_weights(w, 1), 20)
    assert nib.shape == (1, 1, 3, 2, 32) and nib.dtype == np.uint8
    assert nib[0, 0, 0, :, 0].tolist() == [0b0111, 15] and nib[0, 0, 2, :, 1].tolist() == [0b1101, 0]
    assert nib[0, 0, 2, :, 2].tolist() == [15, 0]  # channels 20-23 are spare: 0
    assert byte_weights(pack_weights(w, 1), 20)[0, 0, :, 1].tolist() == [255, 255, 0b1101]
    avx2, avx512 = resolve_target(HASWELL), resolve_target({"kind": "llvm", "mcpu": "icelake-server"})
    cfg = LayerConfig("bconv", 64, 64, 3, 1, 1, 8)
    assert S.default_schedule(avx2, cfg) == S.NIBBLE_X86_32 and S.default_schedule(avx512, cfg) == S.LEGACY_X86
    zen3 = resolve_target({"kind": "llvm", "mcpu": "znver3"})   # Zen forwards spills: the 7 x 64 tile
    assert S.default_schedule(zen3, cfg) == S.NIBBLE_X86 and not S.intel_core(zen3) and S.intel_core(avx2)
    assert S.default_schedule(resolve_target({"kind": "llvm", "mcpu": "x86-64-v3"}), cfg) == S.NIBBLE_X86
    # 40: no 16 lanes; 3 x 40 bits of a kernel row fit 2 words dense, 3 per tap
    assert S.default_schedule(avx2, LayerConfig("bconv", 40, 40, 3, 1, 1, 8)) == S.DENSE_AVX2
    assert S.default_schedule(avx2, LayerConfig("bconv", 40, 40, 1, 1, 1, 8)) == S.AVX2_X86  # 1x1: nothing to save
    assert S.default_schedule(avx2, LayerConfig("bconv", 48, 48, 5, 1, 1, 8)) == S.NIBBLE_X86_48  # 32 + 16 lanes
    assert S.NIBBLE_X86_48.tile_of(LayerConfig("bconv", 96, 96, 5, 2, 1, 8)) == (4, 48, 48)
    assert S.chunk_lanes(48, 32, "byte") == 16 and S.chunk_lanes(48, 32) == S.JOINED_LANES   # joined: nibble only
    assert S.default_schedule(avx2, LayerConfig("bconv", 48, 48, 3, 2, 1, 8)) == S.DENSE_AVX2  # 24: no 16 lanes
    assert S.default_schedule(avx2, LayerConfig("bconv", 4096, 4096, 3, 1, 1, 2)) == S.NIBBLE_X86_32_WIDE
    assert S.default_schedule(zen3, LayerConfig("bconv", 4096, 4096, 3, 1, 1, 2)) == S.NIBBLE_X86_WIDE
    rpi4 = resolve_target("rpi4")
    assert S.default_schedule(rpi4, cfg) == S.BYTE_ARM and S.default_schedule(rpi4, LayerConfig(
        "bconv", 40, 40, 3, 1, 1, 8)) == S.LEGACY_ARM
    assert {c.strategy for c in S.candidate_schedules(rpi4, cfg)} == {"word", "byte"}
    with pytest.raises(S.ScheduleError, match="a nibble schedule takes 16 or 32 lanes"):
        S.CpuSchedule(7, 64, 8, "int16", strategy="nibble")
    with pytest.raises(S.ScheduleError, match="strategy='bit' not supported"):
        S.CpuSchedule(7, 64, 32, "int16", strategy="bit")
    with pytest.raises(S.ScheduleError, match="a byte schedule takes 8, 16, 32, 64 lanes"):
        S.CpuSchedule(7, 64, 4, "int16", strategy="byte")
    assert S.NIBBLE_X86.fingerprint() == "nib-p7c64v32-int16-pm131072"
    assert S.CpuSchedule.from_dict(S.NIBBLE_X86.to_dict()) == S.NIBBLE_X86
    legacy = S.LEGACY_X86.to_dict()
    del legacy["strategy"]                        # schedules stored before strategies existed
    assert S.CpuSchedule.from_dict(legacy) == S.LEGACY_X86


@pytest.mark.parametrize("c_in,c_out,k,groups,stride,res,sched", [
    (96, 96, 5, 2, 1, 10, S.DENSE_X86),           # 48 per group: a 5x5 row in 4 words, not 5
    (96, 96, 5, 2, 2, 10, S.DENSE_AVX2),          # stride 2
    (768, 768, 3, 8, 1, 5, S.DENSE_X86),          # 96 per group: a 3x3 row in 5 words, not 6
    (64, 64, 3, 2, 2, 6, S.CpuSchedule(4, 16, 8, "int64", strategy="dense")),  # 32 per group, stride 2
    (40, 40, 5, 1, 1, 3, S.DENSE_X86),            # 40 channels: taps at 40-bit offsets; image smaller than the reach
    (160, 160, 5, 2, 1, 4, S.CpuSchedule(2, 8, 1, "int64", strategy="dense")),  # 80 per group, scalar popcount
    (48, 96, 3, 2, 1, 5, S.DENSE_ARM),            # C_out > C_in, 24 per group, int32 accumulators
])
@pytest.mark.parametrize("target", ["local", "haswell"])
def test_dense_rows_are_exact(c_in, c_out, k, groups, stride, res, sched, target):
    """The dense-row strategy (each kernel row's taps back to back in words) against PyTorch, on this CPU's
    target and the AVX2 one."""
    assert sched.fits(LayerConfig("bconv", c_in, c_out, k, groups, stride, res))
    lay = build_binary_conv(c_in, c_out, k, groups, stride, res, target=HASWELL if target == "haswell" else "local",
                            tile=sched.tile())
    g = torch.Generator().manual_seed(c_in + k + stride)
    x = torch.randn(1, c_in, res, res, generator=g)
    move = torch.randn(c_in, generator=g) * 0.3
    w = torch.where(torch.randn(c_out, c_in // groups, k, k, generator=g) >= 0, 1.0, -1.0)
    params = {"x": nhwc(x), "move_in": move.numpy(),
              "weight": weights_for(pack_weights(w.numpy(), groups), c_in // groups, "dense"),
              "corr": padding_correction(w.numpy(), groups, (res, res), stride, k // 2)[0]}
    ref = F.conv2d(torch.sign(x + move.view(1, -1, 1, 1)), w, None, stride, k // 2, 1, groups)
    np.testing.assert_array_equal(lay.run(params), nhwc(ref).astype(np.int32))


def test_dense_rows_match_the_word_kernel_on_every_imagenet_layer_they_apply_to():
    """Every distinct binary layer of the imagenet space (at 32x32) where dense rows save words: the same
    integer output as the word kernel from the same random arguments (about 20 s)."""
    from cost_models._layers import space_layer_configs
    from nasbnn_hw.core.space import get_space
    cfgs = {(c.in_channels, c.out_channels, c.kernel, c.groups, c.stride, c.resolution)
            for c in space_layer_configs(get_space("imagenet").with_resolution(32))
            if c.kind == "bconv" and dense_saves(c.in_channels // c.groups, c.kernel)}
    assert len(cfgs) >= 40                                    # 5x5 rows of 48 or 96 per group, 3x3 of 96...
    for key in sorted(cfgs):
        word, dense = (build_binary_conv(*key, tile={"strategy": s}).run() for s in ("word", "dense"))
        assert np.array_equal(word, dense), key


def test_dense_weights_and_where_dense_schedules_apply():
    w = np.ones((2, 48, 3, 3), np.float32)
    w[0, 5, 1, 0] = -1                            # row 1, tap 0, channel 5: dense bit 5 of word 0
    w[1, 20, 1, 2] = -1                           # row 1, tap 2, channel 20: dense bit 2 * 48 + 20 = 116, word 1
    d = dense_weights(pack_weights(w, 1), 48)
    assert d.shape == (3, 3, 2) and d.dtype == np.uint64      # 3 taps x 48 bits = 144: 3 words per row
    full = (1 << 64) - 1
    assert int(d[1, 0, 0]) == full ^ (1 << 5) and int(d[1, 1, 1]) == full ^ (1 << (116 - 64))
    assert int(d[0, 2, 0]) == (1 << 16) - 1       # the row's last 16 bits; the rest of the word is 0
    assert not dense_saves(48, 3) and dense_saves(48, 5) and not dense_saves(64, 5) and not dense_saves(40, 1)
    assert dense_saves(96, 3) and dense_saves(40, 3)
    avx2, avx512 = resolve_target(HASWELL), resolve_target({"kind": "llvm", "mcpu": "icelake-server"})
    assert not S.DENSE_X86.fits(LayerConfig("bconv", 192, 192, 3, 4, 1, 8))   # 48 x 3: saves nothing
    assert S.default_schedule(avx512, LayerConfig("bconv", 96, 96, 5, 2, 1, 28)) == S.DENSE_X86
    assert S.default_schedule(avx512, LayerConfig("bconv", 192, 192, 3, 4, 1, 8)) == S.LEGACY_X86
    assert S.default_schedule(avx2, LayerConfig("bconv", 96, 96, 5, 2, 1, 28)) == S.PAIRS_X86  # lookups first
    assert S.DENSE_X86.fingerprint() == "dense-p7c16v8-int64-pm131072"
    assert S.CpuSchedule.from_dict(S.DENSE_X86.to_dict()) == S.DENSE_X86
    cands = S.candidate_schedules(avx512, LayerConfig("bconv", 96, 96, 5, 2, 1, 28))
    assert cands[0] == S.DENSE_X86 and S.LEGACY_X86 in cands          # tune weighs it against the word tile
    assert "dense" not in {c.strategy for c in S.candidate_schedules(avx512, LayerConfig("bconv", 64, 64, 3, 1, 1, 8))}


def test_spare_bits_never_count():
    """All-positive activations and weights on 24 channels: the dot is exactly 24 * taps inside."""
    w = np.ones((24, 24, 3, 3), np.float32)
    packed = pack_weights(w, 1)
    assert packed.shape == (3, 3, 1, 24) and int(packed[0, 0, 0, 0]) == (1 << 24) - 1
    lay = build_binary_conv(24, 24, 3, 1, 1, 4)
    corr = padding_correction(w, 1, (4, 4), 1, 1)[0]
    out = lay.run({"x": np.ones((1, 4, 4, 24), np.float32), "move_in": np.zeros(24, np.float32),
                   "weight": packed, "corr": corr})
    assert out[0, 1, 1, 0] == 24 * 9 and out[0, 0, 0, 0] == 24 * 4 and out[0, 0, 1, 0] == 24 * 6


def test_border_classes():
    bc = border_classes(14, 14, 3, 1, 1)
    assert [bc.of(o) for o in range(14)] == [0] + [1] * 12 + [2] and bc.count == 3
    bc = border_classes(14, 7, 5, 2, 2)  # rows 0 (2 taps out), 1..5 inside, 6 (1 tap out)
    assert [bc.of(o) for o in range(7)] == [0, 1, 1, 1, 1, 1, 2]
    assert border_classes(2, 2, 5, 1, 2).count == 2


def _half_block_case(c_in, c_out, k, g1, g2, stride, res, half, seed):
    """(input, PyTorch output, kernel parameters, LayerConfig) of half `half` of a random static block."""
    g = torch.Generator().manual_seed(seed)
    blk = StaticBlock(c_in, c_out, k, stride, g1, g2, g).eval()
    x = torch.randn(1, c_in, res, res, generator=g)
    with torch.no_grad():
        if half == 1:
            ref = blk.half1(x)
            p = binary_half_params(blk.binary_conv, blk.bn1, blk.move11, blk.move12, blk.prelu1, blk.move13, (res, res))
            cfg = LayerConfig("bconv", c_in, c_in, k, g1, stride, res)
        else:
            ref = blk.half2(x)
            p = binary_half_params(blk.binary_conv1x1, blk.bn2, blk.move21, blk.move22, blk.prelu2, blk.move23,
                                   (res, res))
            cfg = LayerConfig("bconv", c_in, c_out, 1, g2, 1, res)
    return x, ref, p, cfg


@pytest.mark.parametrize("c_in,c_out,k,g1,g2,stride,res,half", [
    (24, 48, 3, 1, 1, 1, 6, 1),
    (48, 48, 5, 2, 1, 2, 8, 1),
    (96, 96, 3, 4, 1, 2, 6, 1),
    (24, 48, 3, 1, 1, 1, 4, 2),    # channel tiling x2
    (48, 64, 3, 1, 2, 1, 4, 2),    # tiling cut: 64 of 2 x 48, grouped 1x1
    (64, 192, 3, 1, 4, 1, 3, 2),   # tiling x3
])
def test_binary_half_block_matches_pytorch(c_in, c_out, k, g1, g2, stride, res, half):
    x, ref, p, cfg = _half_block_case(c_in, c_out, k, g1, g2, stride, res, half, seed=7)
    got = build_layer(cfg, params=p).run({"x": nhwc(x)})
    assert_float_close(got, nhwc(ref))


def test_shortcut_reference_tiles_channels():
    x = torch.arange(3.0).view(1, 3, 1, 1)
    assert shortcut(x, 1, 8).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


@pytest.mark.parametrize("c_in,c_out,res", [(3, 24, 16), (1, 12, 14)])
def test_stem_matches_pytorch(c_in, c_out, res):
    g = torch.Generator().manual_seed(3)
    stem = StaticStem(c_in, c_out, 3, 2, g).eval()
    x = torch.randn(2, c_in, res, res, generator=g)
    with torch.no_grad():
        ref = stem(x)
    got = build_layer(LayerConfig("stem", c_in, c_out, 3, 1, 2, res), batch=2, params=stem_params(stem)).run(
        {"x": x.numpy()})
    assert_float_close(got, nhwc(ref))


def test_head_matches_pytorch():
    g = torch.Generator().manual_seed(4)
    fc = torch.nn.Linear(96, 10)
    x = torch.randn(2, 96, 3, 3, generator=g)
    with torch.no_grad():
        ref = fc(x.mean(dim=(2, 3))).numpy()
    got = build_layer(LayerConfig("head", 96, 10, 1, 1, 1, 3), batch=2, params=head_params(fc)).run({"x": nhwc(x)})
    assert_float_close(got, ref)


def test_bad_layers_and_targets_raise_clear_errors():
    ok, why = supports(LayerConfig("bconv", 48, 48, 3, 5, 1, 8))
    assert not ok and "groups=5" in why
    with pytest.raises(KernelBuildError, match="groups=5"):
        build_layer(LayerConfig("bconv", 48, 48, 3, 5, 1, 8))
    with pytest.raises(KernelBuildError, match="kind 'pool'"):
        build_layer(LayerConfig("pool", 48, 48, 3, 1, 1, 8))
    with pytest.raises(TargetError, match="unknown target 'tpu'"):
        resolve_target("tpu")
    with pytest.raises(KernelBuildError, match="shape"):
        build_layer(LayerConfig("head", 16, 10, 1, 1, 1, 2)).run({"x": np.zeros((1, 3, 3, 16), np.float32)})


def test_cuda_source_uses_popcount():
    lay = build_layer(LayerConfig("bconv", 48, 48, 3, 2, 2, 8), target="cuda-sm80")
    src = lay.executable.mod.imports[0].inspect_source()
    assert "__popc" in src and "__global__" in src


@pytest.mark.parametrize("layers", [
    [LayerConfig("bconv", 48, 48, 3, 2, 2, 8)],      # stride 2 (pooled shortcut), 24 channels per group
    [LayerConfig("bconv", 24, 48, 1, 1, 1, 14)],     # channels tiled in the shortcut
    [LayerConfig("bconv", 96, 96, 5, 2, 1, 28)],     # 5x5, 48 per group
    [LayerConfig("bconv", 64, 64, 3, 1, 1, 7)],      # 7 x 7: one row of 7 pixel threads
    [LayerConfig("stem", 3, 16, 3, 1, 2, 16), LayerConfig("bconv", 16, 32, 3, 1, 1, 8),
     LayerConfig("head", 32, 10, 1, 1, 1, 8)],       # a whole network in one function
])
def test_cuda_schedule_computes_what_the_cpu_kernels_do(layers):
    """The tiled CUDA schedule (thread blocks of pixel x channel tiles, each thread's accumulators in
    registers and its epilogue) with its loops left serial, run on this CPU, equals the CPU kernels' output
    on the same arguments: the tiling, the accumulator regions and the fused epilogue are right without a
    GPU; CUDA itself only adds the thread bindings."""
    import tvm
    from tvm import te

    from nasbnn_hw.deploy.kernels.layer import _shape_dtype, compile_function, layer_input_shape, layer_te, \
        random_params
    gpu, cpu = resolve_target("cuda-sm80"), resolve_target("local")
    x = te.placeholder(layer_input_shape(layers[0]), "float32", name="x")
    rng = np.random.default_rng(3)
    h, tensors, data = x, [], []
    for i, cfg in enumerate(layers):
        ph, h = layer_te(cfg, h, f"l{i}", gpu)
        d = random_params(cfg, ph, rng)
        tensors += list(ph.values())
        data += [np.ascontiguousarray(d[k], _shape_dtype(t)[1]) for k, t in ph.items()]
    xin = rng.standard_normal(_shape_dtype(x)[0]).astype(np.float32)
    dev = tvm.cpu(0)

    def run(schedule_fn):
        ex = compile_function([x, *tensors, h], cpu, schedule_fn)
        out = tvm.runtime.empty(_shape_dtype(h)[0], "float32", dev)
        ex["main"](*(tvm.runtime.tensor(v, dev) for v in (xin, *data)), out)
        return out.numpy()

    ref = run(lambda sch: S.gpu_schedule(sch, bind=False, tile=None))   # one output per iteration
    assert np.isfinite(ref).all() and np.abs(ref).max() > 0
    for tile in S.GPU_TILE_VARIANTS:
        got = run(lambda sch: S.gpu_schedule(sch, bind=False, tile=tile))
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5, err_msg=tile.fingerprint())


def test_cuda_conv_kernels_keep_accumulators_in_registers():
    """Each CUDA conv kernel computes its outputs' sums in registers and applies the epilogue there: no
    int32 accumulator array in global memory, one block of 7 x 32 threads on a 14 x 14 layer of 256 channels."""
    lay = build_layer(LayerConfig("bconv", 256, 256, 3, 1, 1, 14), target="cuda-sm80")
    src = lay.executable.mod.imports[0].inspect_source()
    assert "l0_acc_ptr" not in src and "l0_acc_local" in src and "__launch_bounds__(224)" in src
    stem = build_layer(LayerConfig("stem", 3, 16, 3, 1, 2, 32), target="cuda-sm80")
    assert "l0_acc_ptr" not in stem.executable.mod.imports[0].inspect_source()


@pytest.mark.parametrize("c,k,groups,stride,seed,default", [
    (48, 5, 2, 2, 11, "LEGACY_ARM"),   # 24 channels per group: the word tile
    (64, 3, 1, 1, 12, "BYTE_ARM"),     # whole 16-lane tiles: byte `cnt` sums in 8-bit lanes
])
def test_aarch64_neon_build_runs_under_qemu(tmp_path, c, k, groups, stride, seed, default):
    """The aarch64 default schedule of each kind, cross-compiled and run under qemu, against PyTorch."""
    from nasbnn_hw.profiling.runners.process import HarnessProcessRunner
    g = torch.Generator().manual_seed(seed)
    blk = StaticBlock(c, c, k, stride, groups, 1, g).eval()
    x = torch.randn(1, c, 6, 6, generator=g)
    with torch.no_grad():
        ref = blk.half1(x)
    p = binary_half_params(blk.binary_conv, blk.bn1, blk.move11, blk.move12, blk.prelu1, blk.move13, (6, 6))
    cfg = LayerConfig("bconv", c, c, k, groups, stride, 6)
    assert S.default_schedule(resolve_target("aarch64-neon"), cfg) == getattr(S, default)
    lay = build_layer(cfg, target="aarch64-neon", params=p)
    asm = lay.executable.mod.inspect_source("asm")
    assert "cnt\tv" in asm  # NEON vector popcount
    lib = lay.export(tmp_path / "bconv_aarch64.so")
    assert "aarch64" in subprocess.run(["file", "-b", str(lib)], capture_output=True, text=True).stdout.lower()
    board = HarnessProcessRunner("aarch64", "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"])
    args = list(lay.args)
    args[0] = type(args[0])(args[0].shape, args[0].dtype, data=nhwc(x))
    t = board.time_library(lib, args, warmup=0, repeat=2, return_outputs=True)
    (got,) = t.outputs
    assert len(t.samples) == 2
    assert_float_close(got, nhwc(ref))


def test_every_shipped_device_profile_builds(tmp_path):
    from device_profiles import list_profiles
    profiles = list_profiles()
    assert {"local", "rpi4", "jetson-orin"} <= set(profiles)
    for name, prof in profiles.items():
        spec = resolve_target(prof)
        assert spec.description() == prof.target_key()
        lay = build_layer(LayerConfig("bconv", 24, 48, 1, 2, 1, 4), target=prof)
        lib = lay.export(tmp_path / f"{name}.so")
        elf = subprocess.run(["file", "-b", str(lib)], capture_output=True, text=True).stdout.lower()
        assert ("aarch64" in elf) == (prof.arch == "aarch64"), (name, elf)
        if spec.is_gpu:
            assert "__popc" in lay.executable.mod.imports[0].inspect_source()


SAPPHIRE = {"kind": "llvm", "mcpu": "sapphirerapids"}   # AMX-INT8: the amx strategy


def _host_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_int8" in flags and " amx_tile" in flags


@pytest.mark.parametrize("c_in,c_out,k,groups,stride,res", [
    (64, 64, 3, 1, 1, 7),        # wide pixel tiles (stride 1): 16 pixels across row ends
    (128, 128, 3, 1, 1, 10),     # two K chunks of 64 channels
    (96, 96, 5, 2, 1, 9),        # 48 per group: K chunks of 48, 48 outputs = three 16-channel B tiles
    (48, 96, 1, 2, 1, 5),        # 1x1, 24 inputs per group
    (64, 128, 3, 1, 2, 14),      # stride 2: tiles of one output row (7 pixels), rows 2 x C bytes apart
    (96, 96, 3, 2, 2, 10),       # stride 2, groups
    (64, 64, 3, 2, 2, 8),        # stride 2, 32 per group, 4-pixel row tiles
    (16, 16, 3, 1, 1, 5),        # 16 channels: one B tile, K chunk 16
    (512, 512, 1, 1, 1, 3),      # 1x1: 8 K chunks
])
def test_amx_strategy_is_exact(c_in, c_out, k, groups, stride, res):
    """The amx strategy (+-1 int8 tile products, zero padding exact without a correction) against
    PyTorch. Compiled on every machine; run where the CPU has AMX-INT8."""
    cfg = LayerConfig("bconv", c_in, c_out, k, groups, stride, res)
    assert S.AMX_X86.fits(cfg)
    lay = build_binary_conv(c_in, c_out, k, groups, stride, res, target=SAPPHIRE, batch=2, tile=S.AMX_X86.tile())
    if not _host_has_amx():
        pytest.skip("this CPU has no AMX-INT8 (compiled only)")
    g = torch.Generator().manual_seed(c_in + k)
    x = torch.randn(2, c_in, res, res, generator=g)     # a batch of 2: tiles per image
    move = torch.randn(c_in, generator=g) * 0.3
    w = torch.where(torch.randn(c_out, c_in // groups, k, k, generator=g) >= 0, 1.0, -1.0)
    params = {"x": nhwc(x), "move_in": move.numpy(),
              "weight": weights_for(pack_weights(w.numpy(), groups), c_in // groups, "amx", groups)}
    ref = F.conv2d(torch.sign(x + move.view(1, -1, 1, 1)), w, None, stride, k // 2, 1, groups)
    np.testing.assert_array_equal(lay.run(params), nhwc(ref).astype(np.int32))


@pytest.mark.parametrize("c_in,c_out,k,groups,stride,res,half", [
    (64, 64, 3, 1, 1, 7, 1),       # wide tiles across padded rows, 32-channel blocks
    (96, 96, 3, 2, 2, 10, 1),      # stride 2: the avg-pooled shortcut, 16-channel blocks (48 per group)
    (64, 192, 1, 1, 1, 5, 2),      # shortcut tiles the input x3, blocks inside one copy
    (48, 96, 1, 2, 1, 6, 2),       # 48 inputs: 16-lane epilogue vectors (a 32-channel block crosses copies)
    (24, 48, 1, 1, 1, 4, 2),       # 24 inputs: vectors across copies
    (16, 32, 1, 1, 1, 5, 2),       # one block per task: no pipeline
    (768, 768, 5, 4, 1, 4, 1),     # 3.7 MB of int8 weights: channel-major tasks
])
def test_amx_half_block_matches_pytorch(tmp_path, c_in, c_out, k, groups, stride, res, half):
    """A whole binary half block under the amx strategy (the epilogue inside the tile loop) against
    PyTorch. Compiled on every machine; run where the CPU has AMX-INT8."""
    from nasbnn_hw.deploy.kernels.amx import AMX_CHANNEL_MAJOR_WEIGHTS, amx_weight_bytes
    x, ref, p, cfg = _half_block_case(c_in, c_out, k, groups, groups, stride, res, half, seed=c_in + k + half)
    assert S.AMX_X86.fits(cfg)
    assert (amx_weight_bytes(cfg) > AMX_CHANNEL_MAJOR_WEIGHTS) == (c_in == 768)
    # amxs (the sign inside the tile loop) builds the 1x1 layers and the 3x3 one at 7x7 of these
    scheds = [S.AMX_X86] + ([S.AMXS_X86] if S.AMXS_X86.fits(cfg) else [])
    assert (len(scheds) == 2) == (k == 1 or (k == 3 and stride == 1 and res <= 7))
    lays = [build_layer(cfg, target=SAPPHIRE, params=p, schedule=s) for s in scheds]
    if not _host_has_amx():
        pytest.skip("this CPU has no AMX-INT8 (compiled only)")
    from nasbnn_hw.profiling.runners.process import HarnessProcessRunner
    for lay in lays:
        got = lay.run({"x": nhwc(x)})
        assert_float_close(got, nhwc(ref))
        # the same library in the timing harness, 2 threads: its workspace blocks are exactly the size asked
        # for, with guard bytes after them (TVM's own pool rounds sizes up, so an overrun can pass in process)
        args = list(lay.args)
        args[0] = type(args[0])(args[0].shape, args[0].dtype, data=nhwc(x))
        (out,) = HarnessProcessRunner(threads=2).time_library(lay.export(tmp_path / "amx.so"), args, warmup=0,
                                                             repeat=2, return_outputs=True).outputs
        np.testing.assert_array_equal(out, got)


def test_amx_applies_where_the_target_has_it_and_the_local_target_names_it():
    from nasbnn_hw.deploy.kernels.amx import amx_chunk, amx_weights
    from nasbnn_hw.deploy.kernels.targets import host_config
    amx, avx512 = resolve_target(SAPPHIRE), resolve_target({"kind": "llvm", "mcpu": "icelake-server"})
    cfg = LayerConfig("bconv", 64, 64, 3, 1, 1, 8)
    assert S.default_schedule(amx, cfg) == S.AMX_X86 and S.default_schedule(avx512, cfg) == S.LEGACY_X86
    one = LayerConfig("bconv", 64, 128, 1, 1, 1, 8)     # 1x1: the sign stage inside the tile loop
    assert S.default_schedule(amx, one) == S.AMXS_X86 and S.default_schedule(avx512, one) == S.LEGACY_X86
    # untuned layers keep the word tile where AMX lost: 2.4 MB of int8 weights on 7 x 7 pixels, 112 x 112 inputs
    # with few products per output
    for big in (LayerConfig("bconv", 1536, 1536, 1, 1, 1, 7), LayerConfig("bconv", 96, 96, 1, 1, 1, 112),
                LayerConfig("bconv", 48, 48, 3, 1, 1, 112)):
        assert S.AMX_X86.fits(big) and S.default_schedule(amx, big) == S.LEGACY_X86
        assert "amx" in {c.strategy for c in S.candidate_schedules(amx, big)}   # tune still weighs it
    # large weights where 14 x 14 output pixels reuse them, 56 x 56 inputs, a 3x3 of 96 channels at 112: AMX
    for ok in (LayerConfig("bconv", 768, 768, 5, 4, 1, 14), LayerConfig("bconv", 96, 96, 1, 1, 1, 56),
               LayerConfig("bconv", 96, 96, 3, 1, 1, 112)):
        assert S.default_schedule(amx, ok).strategy in ("amx", "amxs")
    assert {"amx", "amxs"} <= {c.strategy for c in S.candidate_schedules(amx, cfg)}
    # amxs only where a task signs few rows twice: not a 3x3 at 28x28, nor above 1.5 MB of weights
    assert not S.AMXS_X86.fits(LayerConfig("bconv", 64, 64, 3, 1, 1, 28))
    assert not S.AMXS_X86.fits(LayerConfig("bconv", 1536, 1536, 1, 1, 1, 7))
    assert "amx" not in {c.strategy for c in S.candidate_schedules(avx512, cfg)}
    assert "amx" not in {c.strategy for c in S.candidate_schedules(resolve_target(HASWELL), cfg)}
    narrow = LayerConfig("bconv", 64, 64, 3, 8, 1, 8)          # 8 outputs per group: no whole B tile
    assert not S.AMX_X86.fits(narrow) and S.default_schedule(amx, narrow) != S.AMX_X86
    assert not S.AMX_X86.fits(LayerConfig("bconv", 6, 16, 3, 1, 1, 8))   # 6 inputs: no 4-channel pairing
    assert (amx_chunk(48), amx_chunk(96), amx_chunk(256), amx_chunk(20)) == (48, 48, 64, 20)
    # a VM may call an AMX core by an older name: the AMX features are then named explicitly
    both = {"amx-tile": True, "amx-int8": True, "avx512f": True}
    assert host_config("rocketlake", both)["mattr"] == ["+amx-tile", "+amx-int8"]
    assert "mattr" not in host_config("sapphirerapids", both)
    assert "mattr" not in host_config("znver3", {"amx-tile": False, "avx2": True})
    # B tiles in the order the loop reads them, two rows each here (8 inputs / 4): filter 17 is channel 1 of
    # B tile 1, input 5 is byte 1 of row 1: row 1 * 2 + 1, column 1 * 4 + 1
    w = np.ones((32, 8, 1, 1), np.float32)
    w[17, 5] = -1
    t = amx_weights(pack_weights(w, 1), 8)
    assert t.shape == (2 * 8 // 4, 64) and t.dtype == np.int8 and set(np.unique(t)) == {-1, 1}
    assert t[2 + 1, 4 + 1] == -1 and (t == -1).sum() == 1


@pytest.mark.parametrize("shape", [(96, 96, 3, 1, 1, 9), (192, 192, 5, 2, 2, 10), (200, 200, 3, 1, 1, 5),
                                   (24, 48, 1, 1, 1, 7), (16, 16, 3, 1, 1, 8),
                                   (64, 64, 3, 1, 1, 56)])   # large enough for rows in parallel
def test_byte_sign_stage_packs_the_same_bits(shape):
    """x86 with AVX packs signs a byte at a time (vector compare + vmovmskps): the integer conv equals the one
    of the 64-bit sign loop (a target without AVX) bit for bit, with exact zeros, -0.0 and NaN inputs, spare
    bytes in a group's last word (200 channels), narrow groups and a stage large enough to run in parallel."""
    ci, co, k, g, stride, r = shape
    avx = build_binary_conv(ci, co, k, g, stride, r, target={"kind": "llvm", "mcpu": "haswell"}, seed=2,
                            tile=S.AVX2_X86.tile())
    plain = build_binary_conv(ci, co, k, g, stride, r, target={"kind": "llvm", "mcpu": "x86-64"}, seed=2,
                              tile=S.AVX2_X86.tile())
    assert "vmovmskps" in avx.executable.mod.inspect_source("asm")
    x = avx.args[0].data.copy()
    move = avx.args[1].data
    x[0, 0, 0, :] = -move                 # x + move exactly 0 -> +1
    x[0, 0, 1, :8] = np.float32("nan")    # NaN -> -1 in both
    x[0, 1, 0, :] = -0.0
    got, ref = avx.run({"x": x}), plain.run({"x": x})
    np.testing.assert_array_equal(got, ref)
    assert np.abs(ref).max() > 0


def _parallel_loops(cfg, target) -> list[tuple[int, set]]:
    """(extent, names of the blocks inside) of each parallel loop of binary layer `cfg` as scheduled for
    `target` (default schedule)."""
    import tvm
    from tvm import te

    from nasbnn_hw.deploy.kernels.layer import layer_input_shape, layer_te, schedule_layer
    spec = resolve_target(target)
    x = te.placeholder(layer_input_shape(cfg), "float32", name="x")
    ph, out = layer_te(cfg, x, "l0", spec)
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, *ph.values(), out]))
    schedule_layer(sch, cfg, "l0", spec)
    found: list[tuple[object, set]] = []     # (For node, block names under it)
    for blk in sch.get_child_blocks(sch.get_sblock("root")):
        for lp in sch.get_loops(blk):
            loop = sch.get(lp)
            if loop.kind == tvm.tirx.ForKind.PARALLEL:
                hit = next((f for f in found if f[0].same_as(loop)), None)
                if hit is None:
                    hit = (loop, set())
                    found.append(hit)
                hit[1].add(sch.get(blk).name_hint)
    return [(int(loop.extent), names) for loop, names in found]


@pytest.mark.parametrize("mcpu", ["haswell", "znver3", "icelake-server"])
def test_sign_bytes_share_their_readers_parallel_region(mcpu):
    """The byte sign stage runs inside the row loop of the stage that reads it (the pack's words, or the
    nibble tables): a layer large enough for every stage to run in parallel has two parallel regions, the
    sign's reader (with the sign inside) and the conv; a 7 x 7 layer's conv runs its channel tiles in
    parallel too (7 rows alone split 4 + 3 on 2 threads)."""
    target = {"kind": "llvm", "mcpu": mcpu}
    loops = _parallel_loops(LayerConfig("bconv", 64, 64, 3, 1, 1, 56), target)
    assert len(loops) == 2, loops
    reader = [names for _, names in loops if "l0_sign_init" in names]
    assert len(reader) == 1 and reader[0] & {"l0_pack", "l0_table"}, loops
    small = LayerConfig("bconv", 512, 512, 1, 1, 1, 7)
    tile = S.default_schedule(resolve_target(target), small).tile_of(small)[1]
    assert max(e for e, _ in _parallel_loops(small, target)) == 7 * (512 // tile)
