"""Lookup-table latency: the sum of measured per-layer medians plus a constant per-network overhead.

The overhead (graph launch, memory planning, everything a sum of isolated layers misses) is the median of
`measured subnet - sum of its layers` over the device's measured subnets of this space, 0 when none exist.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.layers import LayerConfig
from nasbnn_hw.core.space import SearchSpace

from ._store import load_device_measurements, subnet_space_arch
from .base import TIME_UNIT, LayerTableCostModel
from .errors import MissingMeasurementError

__all__ = ["LookupTableModel"]


class LookupTableModel(LayerTableCostModel):
    unit = TIME_UNIT

    def __init__(self, space: SearchSpace | str, store, device: str, *, target: str | None = None,
                 tvm_version: str | None = None, overhead_s: float | None = None):
        super().__init__(space)
        self.device = device
        self.name = f"lut@{device}"
        data = load_device_measurements(store, device, target, tvm_version)
        self.target, self.tvm_version, self.source = data.target, data.tvm_version, data.source
        self._median = {k: m.median_s for k, m in data.layers.items()}
        self._iqr = {k: m.iqr_s for k, m in data.layers.items()}
        self.n_subnets_for_overhead = 0
        self.overhead_residual_std_s = 0.0
        if overhead_s is None:
            overhead_s = self._fit_overhead(data.subnets)
        self.overhead_s = float(overhead_s)

    def _fit_overhead(self, subnets) -> float:
        gaps = []
        for m in subnets:
            sa = subnet_space_arch(m, self.space)
            if sa is None or sa[0] != self.space:
                continue
            ids = self._index.arch_ids(sa[1])
            if all(self._index.configs[i].key() in self._median for i in set(ids)):
                gaps.append(m.median_s - sum(self._median[self._index.configs[i].key()] for i in ids))
        self.n_subnets_for_overhead = len(gaps)
        if not gaps:
            return 0.0
        self.overhead_residual_std_s = float(np.std(gaps))
        return float(np.median(gaps))

    def _missing_error(self, cfg: LayerConfig) -> MissingMeasurementError:
        return MissingMeasurementError(
            f"layer {cfg.key()} has no measurement for device {self.device!r} (target {self.target!r}, TVM "
            f"{self.tvm_version}) in {self.source}; measure the space's layers with `nasbnn-hw profile "
            f"--device {self.device} --space {self.space.name}`, or use a latency predictor")

    def layer_values(self, configs: Sequence[LayerConfig]):
        out = np.empty((len(configs), 2))
        for n, c in enumerate(configs):
            k = c.key()
            if k not in self._median:
                raise self._missing_error(c)
            out[n] = self._median[k], (self._iqr[k] / 1.349) ** 2   # IQR -> std of a normal, as variance
        return out

    def missing_layers(self, configs: Sequence[LayerConfig]) -> list[LayerConfig]:
        return [c for c in configs if c.key() not in self._median]

    def costs(self, archs: Sequence[Arch]) -> np.ndarray:
        return self._reduce(archs)[:, 0] + self.overhead_s if len(archs) else np.zeros(0)

    def costs_with_uncertainty(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        if not len(archs):
            return np.zeros(0), np.zeros(0)
        r = self._reduce(archs)
        return r[:, 0] + self.overhead_s, np.sqrt(r[:, 1] + self.overhead_residual_std_s ** 2)
