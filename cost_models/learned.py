"""The latency predictor as a cost model, and fitting it from a measurement store with a held-out split."""
from __future__ import annotations

import logging
import random
from typing import Sequence

import numpy as np

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.layers import LayerConfig, arch_layers
from nasbnn_hw.core.space import SearchSpace

from ._store import layer_from_config, load_device_measurements, subnet_space_arch
from .base import TIME_UNIT, LayerTableCostModel
from .metrics import evaluate
from .predictor import LatencyPredictor

log = logging.getLogger(__name__)

__all__ = ["PredictorCostModel", "fit_predictor", "store_training_data"]


class PredictorCostModel(LayerTableCostModel):
    unit = TIME_UNIT

    def __init__(self, space: SearchSpace | str, predictor: LatencyPredictor, device: str | None = None):
        super().__init__(space)
        predictor._check_fitted()
        self.predictor = predictor
        self.device = device or predictor.device_
        self.name = f"latency@{self.device}"

    def layer_values(self, configs: Sequence[LayerConfig]) -> np.ndarray:
        return self.predictor.predict_layer_members(configs)

    def _members(self, archs: Sequence[Arch]) -> np.ndarray:
        archs = list(archs)
        if not archs:
            return np.zeros((0, len(self.predictor.trees_)))
        sums, n_layers = self._reduce(archs, with_counts=True)
        return self.predictor.correct(sums, n_layers[:, None])

    def costs(self, archs: Sequence[Arch]) -> np.ndarray:
        return self._members(archs).mean(axis=1)

    def costs_with_uncertainty(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        m = self._members(archs)
        return m.mean(axis=1), np.sqrt(m.var(axis=1) + self.predictor.correction_["residual_std"] ** 2)


def store_training_data(store, device: str, target: str | None = None, tvm_version: str | None = None):
    """(layer configs, layer latencies, [(space, arch, latency) of measured subnets], DeviceMeasurements)."""
    data = load_device_measurements(store, device, target, tvm_version)
    layers = [layer_from_config(m.config) for m in data.layers.values()]
    lat = [m.median_s for m in data.layers.values()]
    subnets = []
    for m in data.subnets:
        sa = subnet_space_arch(m)
        if sa is not None:
            subnets.append((sa[0], sa[1], m.median_s))
    return layers, lat, subnets, data


def fit_predictor(store, device: str, *, test_fraction: float = 0.2, seed: int = 0, refit_all: bool = True,
                  target: str | None = None, tvm_version: str | None = None, **params) -> LatencyPredictor:
    """Fit on a random (1 - test_fraction) of the device's layers and subnets, record held-out metrics in
    `predictor.held_out_`, then (refit_all) refit on everything for the returned predictor."""
    layers, lat, subnets, data = store_training_data(store, device, target, tvm_version)
    rng = random.Random(seed)
    li = list(range(len(layers)))
    si = list(range(len(subnets)))
    rng.shuffle(li)
    rng.shuffle(si)
    nlt = int(round(len(li) * test_fraction)) if len(li) >= 10 else 0
    nst = int(round(len(si) * test_fraction)) if len(si) >= 5 else 0
    l_test, l_train = li[:nlt], li[nlt:]
    s_test, s_train = si[:nst], si[nst:]

    def _fit(lidx, sidx):
        return LatencyPredictor(**params).fit(
            [layers[i] for i in lidx], [lat[i] for i in lidx],
            subnet_layer_lists=[arch_layers(subnets[i][1], subnets[i][0]) for i in sidx],
            subnet_latencies_s=[subnets[i][2] for i in sidx],
            device=device, target=data.target, tvm_version=data.tvm_version)

    held_out = {"test_fraction": test_fraction, "seed": seed}
    if nlt or nst:
        p = _fit(l_train, s_train)
        if nlt:
            held_out["layers"] = evaluate(p.predict_layers([layers[i] for i in l_test])[0], [lat[i] for i in l_test])
        if nst:
            pred = [subnet_latency(p, subnets[i][0], subnets[i][1]) for i in s_test]
            held_out["subnets"] = evaluate(pred, [subnets[i][2] for i in s_test])
    final = _fit(li, si) if refit_all or not (nlt or nst) else p
    final.held_out_ = held_out
    return final


def subnet_latency(predictor: LatencyPredictor, space: SearchSpace, arch: Arch) -> float:
    ls = arch_layers(arch, space)
    return float(predictor.correct(predictor.predict_layer_members(ls).sum(axis=0), len(ls)).mean())
