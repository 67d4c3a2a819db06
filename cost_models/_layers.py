"""Fast, cached mapping from archs to the indices of their layers in a table of unique `LayerConfig`s.

`nasbnn_hw.core.layers.arch_layers` is the reference; this module yields the same layers (a test checks it) but
caches per block, so a batch of archs becomes one flat integer array plus offsets. Every cost model that
sums (or maxes) a per-layer quantity then needs one numpy reduction per batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.layers import LayerConfig
from nasbnn_hw.core.space import SearchSpace

__all__ = ["LayerIndex", "space_layer_configs"]


class LayerIndex:
    """Assigns each distinct `LayerConfig` of a space an integer id, in order of first appearance."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.configs: list[LayerConfig] = []
        self._ids: dict[LayerConfig, int] = {}
        self._blocks: dict[tuple, tuple[int, int]] = {}
        self._stem: dict[tuple, int] = {}
        self._head: dict[tuple, int] = {}
        self._strides = [s.stride for s in space.stages]
        res, self._res = space.resolution, []
        for st in space.stages:
            self._res.append(res)
            res //= st.stride

    def __len__(self) -> int:
        return len(self.configs)

    def layer_id(self, cfg: LayerConfig) -> int:
        i = self._ids.get(cfg)
        if i is None:
            i = self._ids[cfg] = len(self.configs)
            self.configs.append(cfg)
        return i

    def arch_ids(self, arch: Arch) -> list[int]:
        sp = self.space
        stem = arch.stages[0][0]
        sid = self._stem.get((stem.channels, stem.kernel))
        if sid is None:
            sid = self._stem[(stem.channels, stem.kernel)] = self.layer_id(
                LayerConfig("stem", sp.in_channels, stem.channels, stem.kernel, 1, self._strides[0], sp.resolution))
        ids = [sid]
        c_in = stem.channels
        blocks = self._blocks
        for si in range(1, len(arch.stages)):
            res = self._res[si]
            stride = self._strides[si]
            for bi, b in enumerate(arch.stages[si]):
                s = stride if bi == 0 else 1
                key = (c_in, b, s, res)
                pair = blocks.get(key)
                if pair is None:
                    pair = blocks[key] = (
                        self.layer_id(LayerConfig("bconv", c_in, c_in, b.kernel, b.groups1, s, res)),
                        self.layer_id(LayerConfig("bconv", c_in, b.channels, 1, b.groups2, 1, res // s)))
                ids.extend(pair)
                res //= s
                c_in = b.channels
        last_res = self._res[-1] // self._strides[-1]
        hid = self._head.get(c_in)
        if hid is None:
            hid = self._head[c_in] = self.layer_id(LayerConfig("head", c_in, sp.num_classes, 1, 1, 1, last_res))
        ids.append(hid)
        return ids

    def index(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """(flat layer ids of all archs, start offset of each arch) for `np.add.reduceat`."""
        flat: list[int] = []
        starts = np.empty(len(archs), dtype=np.int64)
        for n, a in enumerate(archs):
            starts[n] = len(flat)
            flat.extend(self.arch_ids(a))
        return np.asarray(flat, dtype=np.int64), starts


def space_layer_configs(space: SearchSpace) -> list[LayerConfig]:
    """Every layer configuration an ND arch of `space` can contain (sorted, no duplicates; may include a
    few unreachable ones when later stages cannot follow a width, never misses a reachable one)."""
    out: set[LayerConfig] = set()
    res = space.resolution
    stem_spec = space.stages[0]
    for c in stem_spec.channels:
        for k in stem_spec.kernel:
            out.add(LayerConfig("stem", space.in_channels, c, k, 1, stem_spec.stride, res))
    res //= stem_spec.stride
    prev = set(stem_spec.channels)
    for spec in space.stages[1:]:
        reachable = {c for c in spec.channels if c >= min(prev)}  # ND: never narrower than the last stage allows
        for bi in range(spec.max_depth):
            s = spec.stride if bi == 0 else 1
            r_in = res if bi == 0 else res // spec.stride
            inputs = prev if bi == 0 else reachable
            for c_in in inputs:
                for k in spec.kernel:
                    for g in spec.groups1:
                        out.add(LayerConfig("bconv", c_in, c_in, k, g, s, r_in))
                for c_out in spec.channels:
                    if c_out < c_in:
                        continue
                    for g in spec.groups2:
                        out.add(LayerConfig("bconv", c_in, c_out, 1, g, 1, r_in // s))
        res //= spec.stride
        prev = reachable
    for c in prev:
        out.add(LayerConfig("head", c, space.num_classes, 1, 1, 1, res))
    return sorted(out)
