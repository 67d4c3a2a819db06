"""The cost-model protocol and a base class for models that reduce a per-layer table over an arch.

Units are SI base units: OPs, FLOPs, BOPs and params are plain counts, memory is in bytes, latency in
seconds. Constraint strings (`searchers.constraints`) convert "30ms" or "100M" to these units.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.layers import LayerConfig
from nasbnn_hw.core.space import SearchSpace, get_space

from ._layers import LayerIndex

__all__ = ["CostModel", "UncertainCostModel", "LayerTableCostModel", "TIME_UNIT", "check_cost_model"]

TIME_UNIT = "s"


@runtime_checkable
class CostModel(Protocol):
    """What an arch costs. `monotone` (optional attribute, default False) promises that growing any
    choice (width, depth, kernel, fewer groups) never lowers the cost, so the smallest arch is the cheapest."""
    name: str
    unit: str
    device: str | None

    def cost(self, arch: Arch) -> float: ...

    def costs(self, archs: Sequence[Arch]) -> np.ndarray: ...


@runtime_checkable
class UncertainCostModel(CostModel, Protocol):
    def costs_with_uncertainty(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, standard deviation) per arch, in `unit`."""
        ...


def check_cost_model(model, source: str) -> None:
    """Raise a clear error if `model` (from a registry factory or plug-in) lacks part of the protocol."""
    from .errors import CostModelError
    missing = [a for a in ("name", "unit", "device", "cost", "costs") if not hasattr(model, a)]
    if missing:
        raise CostModelError(f"{source} returned {type(model).__name__}, which lacks {', '.join(missing)} "
                             f"(a cost model needs name, unit, device, cost(arch), costs(archs))")


class LayerTableCostModel:
    """Base of every model whose arch cost is a reduction (sum, or max) of a per-layer value.

    Subclasses implement `layer_values(configs) -> np.ndarray` (one value per config, or one row of
    ensemble members per config); values are computed once per distinct layer config and cached.
    """
    name = "?"
    unit = "?"
    device: str | None = None
    monotone = False
    reduce = "sum"        # or "max"

    def __init__(self, space: SearchSpace | str):
        self.space = get_space(space)
        self._index = LayerIndex(self.space)
        self._values: np.ndarray | None = None   # (n_configs,) or (n_configs, n_members)

    def __repr__(self) -> str:
        dev = f", device={self.device!r}" if self.device else ""
        return f"{type(self).__name__}(name={self.name!r}, space={self.space.name!r}{dev})"

    def layer_values(self, configs: Sequence[LayerConfig]) -> np.ndarray:
        raise NotImplementedError

    def _table(self) -> np.ndarray:
        n = len(self._index)
        have = 0 if self._values is None else len(self._values)
        if have < n:
            new = np.asarray(self.layer_values(self._index.configs[have:n]), dtype=np.float64)
            self._values = new if self._values is None else np.concatenate([self._values, new])
        return self._values

    def _reduce(self, archs: Sequence[Arch], with_counts: bool = False):
        """Per-arch reduction of the layer table: shape (n,) or (n, n_members); with_counts: also the number
        of layers of each arch."""
        archs = list(archs)
        if not archs:
            return (np.zeros(0), np.zeros(0, dtype=np.int64)) if with_counts else np.zeros(0)
        flat, starts = self._index.index(archs)
        table = self._table()
        if with_counts:
            return self._reduce_flat(table, flat, starts, len(archs)), np.diff(np.append(starts, len(flat)))
        return self._reduce_flat(table, flat, starts, len(archs))

    def _reduce_flat(self, table: np.ndarray, flat: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
        if table.ndim == 2 and self.reduce == "sum":
            # (archs x layer configs) count matrix times the (configs x members) table: avoids building a
            # (total layers x members) array, which for 20k ImageNet archs would be hundreds of MB
            from scipy.sparse import csr_matrix
            indptr = np.append(starts, len(flat))
            counts = csr_matrix((np.ones(len(flat)), flat, indptr), shape=(n, len(table)))
            return np.asarray(counts @ table)
        op = np.maximum if self.reduce == "max" else np.add
        return op.reduceat(table[flat], starts, axis=0)

    def costs(self, archs: Sequence[Arch]) -> np.ndarray:
        out = self._reduce(archs)
        return out if out.ndim == 1 else out.mean(axis=1)

    def cost(self, arch: Arch) -> float:
        return float(self.costs([arch])[0])
