"""Schedules. CPU: register-tiled output blocks (a few pixels x a vector of output channels) accumulated
in registers over an unrolled word loop, the epilogue fused into the tile, rows in parallel. CUDA: one
thread per output element (source generation; no tuning here)."""
from __future__ import annotations


def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


# CPU register tile of the binary conv: output pixels x output channels, vector lanes (tuned on x86
# AVX-512 and AVX2; benchmarks/binary_conv.py measures it).
CPU_TILE = {"pixels": 7, "channels": 16, "vector": 8}


def _channel_tile(per_group: int, total: int) -> tuple[int, int]:
    """(tile, vector) for the output-channel axis: the tile divides the per-group channel count so one
    tile never straddles two groups (its input words are then shared by all its lanes)."""
    tile = CPU_TILE["channels"]
    while tile > 1:
        if per_group % tile == 0 and total % tile == 0:
            return tile, min(tile, CPU_TILE["vector"])
        tile //= 2
    return 1, 1


def _tile_conv(sch, acc_name: str, out_name: str, per_group: int, pixel_cap: int | None = None, n_reduce: int = 3):
    """Tile the (n, y, x, f) epilogue block `out_name` and compute its accumulation `acc_name` inside each
    tile (scheduled from the consumer side: the epilogue may also read tensors produced elsewhere, e.g.
    the shortcut)."""
    out = sch.get_sblock(out_name)
    n, y, x, f = sch.get_loops(out)
    wo, f_ext = int(sch.get(x).extent), int(sch.get(f).extent)
    xt = _divisor_at_most(wo, pixel_cap or CPU_TILE["pixels"])
    ft, vec = _channel_tile(per_group, f_ext)
    xo, xi = sch.split(x, [None, xt])
    fo, fi = sch.split(f, [None, ft])
    sch.reorder(n, y, xo, fo, xi, fi)
    acc = sch.get_sblock(acc_name)
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
    sch.parallel(sch.fuse(n, y, xo))
    if red or inner:
        sch.decompose_reduction(acc, (red or inner)[0])


def cpu_pack(sch, name: str):
    """Rows in parallel; the 64-bit loop stays a loop: LLVM vectorises it (compare -> mask -> word),
    about 7x faster than unrolling it into scalar shifts."""
    loops = sch.get_loops(sch.get_sblock(f"{name}_pack"))
    sch.parallel(sch.fuse(loops[0], loops[1]))


def cpu_binary_half(sch, name: str, groups: int):
    cpu_pack(sch, name)
    acc = sch.get_sblock(f"{name}_acc")
    f_ext = int(sch.get(sch.get_loops(acc)[3]).extent)
    _tile_conv(sch, f"{name}_acc", f"{name}_out", f_ext // groups)


def cpu_stem(sch, name: str):
    pad = sch.get_sblock(f"{name}_pad")
    loops = sch.get_loops(pad)
    sch.parallel(sch.fuse(loops[0], loops[1]))
    acc = sch.get_sblock(f"{name}_acc")
    f_ext = int(sch.get(sch.get_loops(acc)[3]).extent)
    _tile_conv(sch, f"{name}_acc", f"{name}_out", f_ext, pixel_cap=4)


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
