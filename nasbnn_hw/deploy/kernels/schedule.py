"""Schedules. CPU: register-tiled output blocks (a few pixels x a vector of output channels) accumulated
in registers over an unrolled word loop, the epilogue fused into the tile, rows in parallel. CUDA: one
thread per output element (source generation; no tuning here)."""
from __future__ import annotations


def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


# CPU register tile of the binary conv: output pixels x output channels, vector lanes, accumulator type.
# x86: tuned with benchmarks/binary_conv.py (AVX-512 VPOPCNTDQ; 64-bit lanes take the vector popcount
# without a narrowing shuffle). aarch64 NEON has 32 128-bit registers and a per-byte `cnt`: a smaller
# tile that fits them, 32-bit lanes (one widening add less per word); not timed on a board yet.
#
# `parallel_min`: a loop nest runs in parallel only when it has at least this many innermost iterations
# (popcount words for a conv, bits for the packing pass). A parallel launch wakes the thread pool and
# joins it again: measured 8-10 us per launch on a 2-vCPU Zen 3 VM (about 2 us on a quiet AVX-512 host),
# while 2**17 popcount words take about 30 us on one AVX2 core. Below that, one thread finishes sooner
# than the launch and the time stays a property of the work (benchmarks/latency_floor.py).
PARALLEL_MIN = 1 << 17
CPU_TILE = {"pixels": 7, "channels": 16, "vector": 8, "acc_dtype": "int64", "parallel_min": PARALLEL_MIN}
ARM_TILE = {"pixels": 4, "channels": 8, "vector": 4, "acc_dtype": "int32", "parallel_min": PARALLEL_MIN}


def _iterations(sch, block) -> int:
    """Innermost iterations of a block's loop nest (spatial and reduction)."""
    n = 1
    for v in sch.get(block).iter_vars:
        n *= int(v.dom.extent)
    return n


def _maybe_parallel(sch, work: int, loops, tile_cfg: dict | None) -> None:
    """Fuse `loops` and run them in parallel when `work` (innermost iterations) pays for a launch."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if work >= (tile_cfg or CPU_TILE).get("parallel_min", PARALLEL_MIN):
        sch.parallel(fused)


def cpu_tile(spec) -> dict:
    """The register tile for a target (a `TargetSpec`)."""
    triple = str(spec.config.get("mtriple", "")) if spec is not None else ""
    return ARM_TILE if triple.startswith(("aarch64", "arm")) else CPU_TILE


def _channel_tile(per_group: int, total: int, tile_cfg: dict) -> tuple[int, int]:
    """(tile, vector) for the output-channel axis: the tile divides the per-group channel count so one
    tile never straddles two groups (its input words are then shared by all its lanes)."""
    tile = tile_cfg["channels"]
    while tile > 1:
        if per_group % tile == 0 and total % tile == 0:
            return tile, min(tile, tile_cfg["vector"])
        tile //= 2
    return 1, 1


def _tile_conv(sch, acc_name: str, out_name: str, per_group: int, pixel_cap: int | None = None, n_reduce: int = 3,
               tile_cfg: dict | None = None):
    """Tile the (n, y, x, f) epilogue block `out_name` and compute its accumulation `acc_name` inside each
    tile (scheduled from the consumer side: the epilogue may also read tensors produced elsewhere, e.g.
    the shortcut)."""
    out = sch.get_sblock(out_name)
    n, y, x, f = sch.get_loops(out)
    wo, f_ext = int(sch.get(x).extent), int(sch.get(f).extent)
    tile_cfg = tile_cfg or CPU_TILE
    xt = _divisor_at_most(wo, pixel_cap or tile_cfg["pixels"])
    ft, vec = _channel_tile(per_group, f_ext, tile_cfg)
    xo, xi = sch.split(x, [None, xt])
    fo, fi = sch.split(f, [None, ft])
    sch.reorder(n, y, xo, fo, xi, fi)
    acc = sch.get_sblock(acc_name)
    work = _iterations(sch, acc)  # before compute_at, which shrinks the block to one tile
    sch.compute_at(acc, fo)
    # compute_at regenerates the loops and drops unit ones: count the remaining reduction loops
    n_red = sum(1 for v in sch.get(acc).iter_vars if int(v.iter_type) == 2 and int(v.dom.extent) > 1)
    own = sch.get_loops(acc)[4:]
    spatial, red = own[:len(own) - n_red], own[len(own) - n_red:]
    inner = []
    if spatial:
        tile = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        inner = sch.split(tile, [xt, ft // vec, vec])
        sch.reorder(*red, *inner)
    sch.set_scope(acc, 0, "local")
    if inner:
        sch.unroll(inner[0])
        sch.unroll(inner[1])
        sch.vectorize(inner[2])
    if red:
        sch.unroll(red[-1])
    fi_o, fi_i = sch.split(fi, [None, vec])
    sch.vectorize(fi_i)
    _maybe_parallel(sch, work, [n, y, xo], tile_cfg)
    if red or inner:
        sch.decompose_reduction(acc, (red or inner)[0])


def cpu_pack(sch, name: str, tile_cfg: dict | None = None):
    """Rows in parallel (when large enough); the 64-bit loop stays a loop: LLVM vectorises it (compare ->
    mask -> word), about 7x faster than unrolling it into scalar shifts."""
    blk = sch.get_sblock(f"{name}_pack")
    loops = sch.get_loops(blk)
    _maybe_parallel(sch, _iterations(sch, blk), loops[:2], tile_cfg)


def cpu_binary_half(sch, name: str, groups: int, tile_cfg: dict | None = None):
    cpu_pack(sch, name, tile_cfg)
    acc = sch.get_sblock(f"{name}_acc")
    f_ext = int(sch.get(sch.get_loops(acc)[3]).extent)
    _tile_conv(sch, f"{name}_acc", f"{name}_out", f_ext // groups, tile_cfg=tile_cfg)


def cpu_stem(sch, name: str, tile_cfg: dict | None = None):
    pad = sch.get_sblock(f"{name}_pad")
    _maybe_parallel(sch, _iterations(sch, pad), sch.get_loops(pad)[:2], tile_cfg)
    acc = sch.get_sblock(f"{name}_acc")
    f_ext = int(sch.get(sch.get_loops(acc)[3]).extent)
    _tile_conv(sch, f"{name}_acc", f"{name}_out", f_ext, pixel_cap=4, tile_cfg=tile_cfg)


def cpu_head(sch, name: str):
    fc = sch.get_sblock(f"{name}_fc")
    n, j, rc = sch.get_loops(fc)
    j_ext = int(sch.get(j).extent)
    vec = _divisor_at_most(j_ext, 8)
    jo, ji = sch.split(j, [None, vec])
    sch.reorder(n, jo, rc, ji)
    out = sch.get_sblock(f"{name}_out")
    sch.reverse_compute_at(out, jo)
    sch.set_scope(fc, 0, "local")
    sch.vectorize(ji)
    sch.vectorize(sch.get_loops(out)[-1])
    sch.decompose_reduction(fc, rc)


def gpu_generic(sch, threads: int = 64):
    """Bind every block of the function: spatial loops fused, split into (blocks, threads)."""
    root = sch.get_sblock("root")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    for nm in names:
        blk = sch.get_sblock(nm)
        n_spatial = sum(1 for iv in sch.get(blk).iter_vars if int(iv.iter_type) == 0)
        loops = sch.get_loops(blk)
        fused = sch.fuse(*loops[:n_spatial])
        ext = int(sch.get(fused).extent)
        t = _divisor_at_most(ext, threads)
        bo, ti = sch.split(fused, [None, t])
        sch.bind(bo, "blockIdx.x")
        sch.bind(ti, "threadIdx.x")
