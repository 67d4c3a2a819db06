"""Cost models by name: `ops`, `params`, `lut@DEVICE`, `latency@DEVICE`, ... plus third-party plug-ins.

A name is `BASE` or `BASE@DEVICE`. Plug-ins register a factory under the entry-point group
`nasbnn_hw.cost_models`; the entry point's name is BASE and the factory is called as
`factory(space, device=DEVICE_or_None, **kwargs)` and must return an object following `CostModel`.
"""
from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from nasbnn_hw.core.space import SearchSpace, get_space

from .analytic import (BopsModel, FlopsModel, ModelBytesModel, OpsModel, ParamsModel, PeakMemoryModel)
from .base import check_cost_model
from .errors import CostModelError, UnknownCostModelError

__all__ = ["ENTRY_POINT_GROUP", "register_cost_model", "get_cost_model", "list_cost_models", "split_name"]

ENTRY_POINT_GROUP = "nasbnn_hw.cost_models"
_REGISTRY: dict[str, tuple[Callable, bool]] = {}   # base name -> (factory, needs a device)


def register_cost_model(base: str, factory: Callable, *, needs_device: bool = False, overwrite: bool = False):
    if "@" in base or not base:
        raise CostModelError(f"cost model base name {base!r} must be non-empty and contain no '@'")
    if base in _REGISTRY and not overwrite:
        raise CostModelError(f"cost model {base!r} is already registered")
    _REGISTRY[base] = (factory, needs_device)
    return factory


def split_name(name: str) -> tuple[str, str | None]:
    base, _, device = name.partition("@")
    return base.strip(), (device.strip() or None) if "@" in name else None


def _plugins() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_cost_models() -> list[str]:
    """Built-in and plug-in base names; those needing a device are listed as `base@DEVICE`."""
    names = [f"{b}@DEVICE" if dev else b for b, (_, dev) in _REGISTRY.items()]
    return names + sorted(n for n in _plugins() if n not in _REGISTRY)


def get_cost_model(name: str, space: SearchSpace | str | None = None, **kwargs):
    """Build the cost model `name` for `space`.

    Keyword arguments go to the factory: `store=` (a MeasurementStore or path) for `lut@D`, `predictor=`
    (a LatencyPredictor or a .json path) for `predictor@D`; `latency@D` uses the predictor when given,
    else the lookup table from `store`.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownCostModelError(f"cost model name must be a non-empty string, got {name!r}")
    if space is None:
        raise CostModelError(f"cost model {name!r} needs a search space (space='small' | 'imagenet' | a "
                             f"SearchSpace | a .toml path)")
    space = get_space(space)
    base, device = split_name(name)
    if base in _REGISTRY:
        factory, needs_device = _REGISTRY[base]
        if needs_device and not device:
            raise CostModelError(f"cost model {base!r} needs a device: write {base}@DEVICE, e.g. {base}@local")
        if not needs_device and device:
            raise CostModelError(f"cost model {base!r} is analytic and takes no device (got {name!r})")
        model = factory(space, device=device, **kwargs) if needs_device else factory(space, **kwargs)
        return model
    plugins = _plugins()
    if base in plugins:
        try:
            factory = plugins[base].load()
        except Exception as e:  # a broken plug-in must name itself, not crash the search with a bare trace
            raise CostModelError(f"cost model plug-in {base!r} ({plugins[base].value}) failed to load: {e}") from e
        if not callable(factory):
            raise CostModelError(f"cost model plug-in {base!r} ({plugins[base].value}) is a "
                                 f"{type(factory).__name__}, not a factory(space, device=None, **kwargs)")
        model = factory(space, device=device, **kwargs)
        check_cost_model(model, f"cost model plug-in {base!r}")
        return model
    known = [n.split("@")[0] for n in list_cost_models()]
    close = difflib.get_close_matches(base, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownCostModelError(f"unknown cost model {name!r} (known: {', '.join(list_cost_models())}){hint}")


def _analytic(cls):
    def factory(space, **kwargs):
        return cls(space, **kwargs)
    return factory


def _lut(space, device, store=None, **kw):
    from .lut import LookupTableModel
    return LookupTableModel(space, store, device, **kw)


def _load_predictor(predictor, device, allow_other_device=False):
    from .predictor import LatencyPredictor
    if isinstance(predictor, (str, Path)):
        return LatencyPredictor.load(predictor, device=device, allow_other_device=allow_other_device)
    if isinstance(predictor, LatencyPredictor):
        if predictor.device_ is not None and predictor.device_ != device:
            import warnings
            msg = f"predictor was fitted for device {predictor.device_!r}, not {device!r}"
            if not allow_other_device:
                from .errors import IncompatibleArtifactError
                raise IncompatibleArtifactError(msg + f" (fit one for it: `nasbnn-hw fit --device {device} ...`; from "
                                                      "Python, allow_other_device=True uses it anyway)")
            warnings.warn(msg, stacklevel=3)
        return predictor
    raise CostModelError(f"predictor= must be a LatencyPredictor or a path to its .json file, got {type(predictor).__name__}")


def _predictor(space, device, predictor=None, allow_other_device=False, **_ignored):
    from .learned import PredictorCostModel
    if predictor is None:
        raise CostModelError(f"cost model 'predictor@{device}' needs predictor=PATH.json "
                             f"(fit one with `nasbnn-hw fit --device {device} --store M.db --out PATH.json`)")
    return PredictorCostModel(space, _load_predictor(predictor, device, allow_other_device), device)


def _latency(space, device, predictor=None, store=None, allow_other_device=False, **kw):
    if predictor is not None:
        return _predictor(space, device, predictor, allow_other_device)
    if store is not None:
        return _lut(space, device, store=store, **kw)
    raise CostModelError(f"cost model 'latency@{device}' needs predictor=PATH.json (a fitted predictor) or "
                         f"store=M.db (a lookup table of measured layers)")


for _cls in (OpsModel, FlopsModel, BopsModel, ParamsModel, ModelBytesModel, PeakMemoryModel):
    register_cost_model(_cls.name, _analytic(_cls))
register_cost_model("lut", _lut, needs_device=True)
register_cost_model("predictor", _predictor, needs_device=True)
register_cost_model("latency", _latency, needs_device=True)
