"""A simulated device: plausible, deterministic layer and subnet latencies for tests and benchmarks.

Not a measurement. A binary conv costs its 64-bit word operations (xnor + popcount) at a throughput that
drops when the working set leaves a 1 MiB cache, plus memory traffic and a per-call overhead; padding
channels up to whole words is paid for. A whole subnet costs the sum of its layers, a graph overhead and a
small per-layer saving from fusion, with multiplicative log-normal noise on every measurement.
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.layers import LayerConfig, arch_layers
from nasbnn_hw.core.space import SearchSpace
from nasbnn_hw.profiling.store import Measurement, MeasurementStore

from .features import _terms

__all__ = ["SimulatedDevice"]


@dataclass(frozen=True)
class SimulatedDevice:
    name: str = "sim"
    target: str = "llvm -mtriple=aarch64-linux-gnu"
    tvm_version: str = "0.0-sim"
    word_ops_per_s: float = 2.0e9
    flops_per_s: float = 4.0e9
    bytes_per_s: float = 6.0e9
    call_overhead_s: float = 6e-6
    graph_overhead_s: float = 1.5e-4
    fusion_saving_s: float = 1.5e-6
    noise: float = 0.02
    seed: int = 0

    def true_layer_latency(self, c: LayerConfig) -> float:
        t = _terms(c)
        act_bytes = 4 * (t["in_act"] + t["out_act"])
        cache_miss = 1.0 + 0.6 * (act_bytes > 2 ** 20)
        if c.kind == "bconv":
            compute = t["word_ops"] / self.word_ops_per_s * (1.0 + 0.15 * (c.groups > 1)) * cache_miss
            # a mild, deterministic per-shape idiosyncrasy (schedule quality varies between shapes)
            quirk = 1.0 + 0.08 * math.sin(0.7 * c.in_channels / c.groups + 1.3 * c.kernel + 0.01 * c.out_channels)
            compute *= quirk
        else:
            compute = (8 * t["flops"] if c.kind == "stem" else t["flops"]) / self.flops_per_s * cache_miss
        return compute + act_bytes / self.bytes_per_s + self.call_overhead_s

    def _rng(self, key: str, trial: int) -> random.Random:
        return random.Random(zlib.crc32(f"{self.seed}|{key}|{trial}".encode()))

    def measure_layer(self, c: LayerConfig, trial: int = 0) -> float:
        return self.true_layer_latency(c) * math.exp(self._rng(c.key(), trial).gauss(0, self.noise))

    def true_subnet_latency(self, arch: Arch, space: SearchSpace) -> float:
        ls = arch_layers(arch, space)
        return (sum(self.true_layer_latency(c) for c in ls) + self.graph_overhead_s
                - self.fusion_saving_s * len(ls))

    def measure_subnet(self, arch: Arch, space: SearchSpace, trial: int = 0) -> float:
        return self.true_subnet_latency(arch, space) * math.exp(
            self._rng(f"{space.name}|{arch.to_json()}", trial).gauss(0, self.noise))

    def _measurement(self, kind: str, key: str, config: dict, median: float) -> Measurement:
        return Measurement(self.name, self.target, self.tvm_version, kind, key, config, median_s=median,
                           iqr_s=median * self.noise * 1.349, repeats=1, samples=(median,))

    def _book(self):
        """The schedules the profiler would key this device's rows with (its target's defaults); None for a
        target the kernels cannot build."""
        from nasbnn_hw.deploy.kernels.targets import resolve_target
        from nasbnn_hw.errors import NasBnnError
        from nasbnn_hw.profiling.store import canonical_target
        from nasbnn_hw.profiling.tuning import ScheduleBook

        from ._store import _target_dict
        try:  # as the cost models read the stored target text back
            return ScheduleBook(resolve_target(_target_dict(canonical_target(self.target))))
        except (NasBnnError, ValueError, TypeError, KeyError):
            return None

    def fill_store(self, store: MeasurementStore, layers: Iterable[LayerConfig] = (),
                   subnets: Sequence[tuple[SearchSpace, Arch]] = ()) -> int:
        """Add measurements of `layers` and whole `subnets` to `store`, keyed as the profiler keys them for
        this device's target (with the schedules its builds use); return the number of new rows."""
        book = self._book()
        known = book is not None  # (an empty book is falsy: it has no tuned layers)
        ms = [self._measurement("layer", book.layer_key(c) if known else c.key(),
                                book.layer_config(c) if known else c.to_dict(), self.measure_layer(c)) for c in layers]
        for space, arch in subnets:
            cfg = {"space": space.name, "resolution": space.resolution, "arch": arch.to_dict()}
            sid = book.subnet_schedule_id(arch_layers(arch, space)) if known else ""
            if sid:
                cfg["schedule_id"] = sid
            key = book.subnet_key(arch, space) if known else arch.to_json()
            ms.append(self._measurement("subnet", f"{space.name}@{space.resolution}:{key}", cfg,
                                        self.measure_subnet(arch, space)))
        return store.add_many(ms)
