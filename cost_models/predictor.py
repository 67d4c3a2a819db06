"""Learned latency predictor: per-layer regression summed over a subnet, plus a whole-network correction.

Per layer: a non-negative linear base model on physical terms (64-bit word operations, FLOPs, activation
and weight sizes, one intercept per layer kind) times exp(residual), where the residual of log-latency is
learned by a bagged forest of regression trees on `features.FEATURE_NAMES`. Each tree is one ensemble
member; a subnet's member latency is the sum of that member's layer latencies, so the spread of members
is the predictor's uncertainty. The correction maps summed layer latency to measured whole-subnet latency:
`measured ~ slope * sum + per_layer * n_layers + intercept`, fitted on measured subnets.

Saved as JSON (trees as arrays, coefficients as numbers) with metadata; never pickled.
"""
from __future__ import annotations

import json
import math
import platform
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from nasbnn_hw.core.layers import LayerConfig

from ._trees import check_tree_dict, predict_trees, tree_to_dict
from .errors import CostModelError, IncompatibleArtifactError
from .features import BASE_FEATURE_NAMES, FEATURE_NAMES, FEATURE_SCHEMA_VERSION, base_features, layer_features

__all__ = ["LatencyPredictor", "PREDICTOR_FORMAT"]

PREDICTOR_FORMAT = "nasbnn-hw/latency-predictor-v1"
_INT64 = 2 ** 63
MAX_SECONDS = 1e3   # bound of the stored coefficients and corrections: predictions stay finite


class _Constant(str):
    """NaN / Infinity / -Infinity as written in a JSON file: kept as text so the loader can name the field."""


def _bad_number(v) -> bool:
    return isinstance(v, _Constant) or (isinstance(v, float) and not math.isfinite(v)) \
        or (type(v) is int and not -_INT64 <= v < _INT64)


def _check_numbers(v, source: str, where: str = "") -> None:
    """Every number of a loaded document finite and within 64 bits, else an error naming the field."""
    if isinstance(v, dict):
        for k, x in v.items():
            _check_numbers(x, source, f"{where}.{k}" if where else str(k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            if isinstance(x, (dict, list)) or _bad_number(x):
                _check_numbers(x, source, f"{where}[{i}]")
    elif _bad_number(v):
        raise IncompatibleArtifactError(f"{source}: field '{where}' is {str(v)[:40]}; every number must be finite "
                                        f"and fit in 64 bits (malformed predictor file)")


def _finite_or_none(v):
    """Metrics in `metadata.held_out` may be undefined (NaN): stored as null."""
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return None if _bad_number(v) else v


_REQUIRED = object()
_KINDS = {"object": (lambda v: isinstance(v, dict), "must be an object"),
          "list": (lambda v: isinstance(v, list), "must be a list"),
          "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "must be a number"),
          "count": (lambda v: type(v) is int and v >= 0, "must be an integer >= 0"),
          "text": (lambda v: v is None or (isinstance(v, str) and not isinstance(v, _Constant)),
                   "must be a string or null"),
          "time": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
                   "must be a number or null")}


def _field(d: dict, path: str, kind: str, source: str, default=_REQUIRED):
    """`d[a][b]` for path 'a.b', checked to be of `kind`; `default` when missing (else an error)."""
    v = d
    for i, key in enumerate(path.split(".")):
        if not isinstance(v, dict):
            raise IncompatibleArtifactError(f"{source}: field '{'.'.join(path.split('.')[:i])}' must be an object, "
                                            f"got {str(v)[:40]!r} (malformed predictor file)")
        if key not in v:
            if default is not _REQUIRED:
                return default
            raise IncompatibleArtifactError(f"{source}: missing field '{path}' (malformed predictor file; refit it "
                                            f"with `nasbnn-hw fit`)")
        v = v[key]
    ok, what = _KINDS[kind]
    if not ok(v):
        raise IncompatibleArtifactError(f"{source}: field '{path}' {what}, got {str(v)[:40]!r} "
                                        f"(malformed predictor file)")
    return v


def _versions() -> dict:
    import sklearn

    from importlib.metadata import PackageNotFoundError, version
    try:
        own = version("nasbnn-hw")
    except PackageNotFoundError:
        own = "unknown"
    return {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "nasbnn-hw": own}


class LatencyPredictor:
    """scikit-learn style: parameters in `__init__`, learned state (ending in `_`) in `fit`."""

    def __init__(self, n_estimators: int = 48, max_features: float = 0.7, min_samples_leaf: int = 1,
                 random_state: int = 0):
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("n_estimators", "max_features", "min_samples_leaf", "random_state")}

    def set_params(self, **params) -> "LatencyPredictor":
        for k, v in params.items():
            if k not in self.get_params():
                raise CostModelError(f"LatencyPredictor has no parameter {k!r} (parameters: "
                                     f"{', '.join(self.get_params())})")
            setattr(self, k, v)
        return self

    def _validate_params(self) -> None:
        own = "LatencyPredictor"
        if isinstance(self.n_estimators, bool) or not isinstance(self.n_estimators, int) or self.n_estimators < 2:
            raise CostModelError(f"The 'n_estimators' parameter of {own} must be an int in [2, inf). "
                                 f"Got {self.n_estimators!r}.")
        if not isinstance(self.max_features, (int, float)) or not 0 < self.max_features <= 1:
            raise CostModelError(f"The 'max_features' parameter of {own} must be a float in (0, 1]. "
                                 f"Got {self.max_features!r}.")
        if isinstance(self.min_samples_leaf, bool) or not isinstance(self.min_samples_leaf, int) \
                or self.min_samples_leaf < 1:
            raise CostModelError(f"The 'min_samples_leaf' parameter of {own} must be an int in [1, inf). "
                                 f"Got {self.min_samples_leaf!r}.")

    # --- fitting ---------------------------------------------------------------------------------
    def fit(self, layers: Sequence[LayerConfig], latencies_s: Sequence[float], *,
            subnet_layer_lists: Sequence[Sequence[LayerConfig]] = (), subnet_latencies_s: Sequence[float] = (),
            device: str | None = None, target: str | None = None, tvm_version: str | None = None):
        from scipy.optimize import nnls
        from sklearn.ensemble import RandomForestRegressor
        self._validate_params()
        layers = list(layers)
        y = np.asarray(latencies_s, dtype=np.float64)
        if len(layers) != len(y) or len(layers) < 2:
            raise CostModelError(f"fit needs at least 2 layer measurements with one latency each "
                                 f"(got {len(layers)} layers, {len(y)} latencies)")
        if not np.all(np.isfinite(y)) or (y <= 0).any():
            raise CostModelError("layer latencies must be finite and > 0 seconds")
        B = base_features(layers)
        scale = B.max(axis=0)
        scale[scale == 0] = 1.0
        # relative least squares: divide each row by its latency so small layers count as much as big ones
        coef, _ = nnls(B / scale / y[:, None], np.ones(len(y)))
        coef = coef / scale
        base = B @ coef
        if (base <= 0).any():
            base = np.maximum(base, y.min() * 0.5)
        self.base_coef_ = coef
        self.base_floor_ = float(y.min() * 0.5)
        resid = np.log(y) - np.log(base)
        forest = RandomForestRegressor(n_estimators=self.n_estimators, max_features=float(self.max_features),
                                       min_samples_leaf=self.min_samples_leaf, bootstrap=True,
                                       random_state=self.random_state, n_jobs=1)
        forest.fit(layer_features(layers), resid)
        self.trees_ = [check_tree_dict(tree_to_dict(e), len(FEATURE_NAMES)) for e in forest.estimators_]
        self.n_train_layers_ = len(layers)
        self.device_, self.target_, self.tvm_version_ = device, target, tvm_version
        self.correction_ = {"slope": 1.0, "per_layer": 0.0, "intercept": 0.0, "residual_std": 0.0, "n": 0}
        self.fit_correction(subnet_layer_lists, subnet_latencies_s)
        self.created_ = time.time()
        self.library_versions_ = _versions()
        self.held_out_ = {}
        return self

    def fit_correction(self, subnet_layer_lists: Sequence[Sequence[LayerConfig]], latencies_s: Sequence[float]):
        """(Re)fit only the whole-network correction on measured subnets; keeps the layer model."""
        self._check_fitted()
        y = np.asarray(latencies_s, dtype=np.float64)
        if len(subnet_layer_lists) != len(y):
            raise CostModelError("fit_correction needs one latency per subnet layer list")
        n = len(y)
        self.correction_ = {"slope": 1.0, "per_layer": 0.0, "intercept": 0.0, "residual_std": 0.0, "n": n}
        if n == 0:
            return self
        sums = np.array([self.predict_layers(ls)[0].sum() for ls in subnet_layer_lists])
        nl = np.array([len(ls) for ls in subnet_layer_lists], dtype=np.float64)
        if n >= 8:
            A = np.column_stack([sums, nl, np.ones(n)]) / y[:, None]
            (a, b, c), *_ = np.linalg.lstsq(A, np.ones(n), rcond=None)
            if a <= 0:          # degenerate fit: keep the layer sum, fit only the constant
                a, b, c = 1.0, 0.0, float(np.median(y - sums))
        else:
            a, b, c = 1.0, 0.0, float(np.median(y - sums))
        pred = a * sums + b * nl + c
        self.correction_ = {"slope": float(a), "per_layer": float(b), "intercept": float(c),
                            "residual_std": float(np.std(y - pred)), "n": n}
        return self

    # --- prediction --------------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "trees_"):
            raise CostModelError("this LatencyPredictor is not fitted yet; call fit(...) or LatencyPredictor.load(path)")

    def predict_layer_members(self, configs: Sequence[LayerConfig]) -> np.ndarray:
        """(n_configs, n_members) latency in seconds of each layer under each ensemble member."""
        self._check_fitted()
        configs = list(configs)
        if not configs:
            return np.zeros((0, len(self.trees_)))
        base = np.maximum(base_features(configs) @ self.base_coef_, self.base_floor_)
        return base[:, None] * np.exp(predict_trees(self.trees_, layer_features(configs)))

    def predict_layers(self, configs: Sequence[LayerConfig]) -> tuple[np.ndarray, np.ndarray]:
        m = self.predict_layer_members(configs)
        return m.mean(axis=1), m.std(axis=1)

    def correct(self, member_sums: np.ndarray, n_layers: np.ndarray) -> np.ndarray:
        """Apply the whole-network correction to summed layer latencies (any shape, n_layers broadcast)."""
        c = self.correction_
        return c["slope"] * member_sums + c["per_layer"] * n_layers + c["intercept"]

    # --- persistence ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        self._check_fitted()
        return {
            "format": PREDICTOR_FORMAT,
            "metadata": {
                "device": self.device_, "target": self.target_, "tvm_version": self.tvm_version_,
                "created": self.created_, "library_versions": self.library_versions_,
                "feature_schema": {"version": FEATURE_SCHEMA_VERSION, "names": list(FEATURE_NAMES),
                                   "base_names": list(BASE_FEATURE_NAMES)},
                "n_train_layers": self.n_train_layers_, "n_train_subnets": self.correction_["n"],
                "params": {"n_estimators": self.n_estimators, "max_features": self.max_features,
                           "min_samples_leaf": self.min_samples_leaf, "random_state": self.random_state},
                "held_out": self.held_out_,
            },
            "base": {"coef": self.base_coef_.tolist(), "floor": self.base_floor_},
            "trees": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in t.items()} for t in self.trees_],
            "correction": self.correction_,
        }

    def save(self, path: str | Path) -> None:
        from nasbnn_hw.utils import atomic_write_text
        d = self.to_dict()
        d["metadata"]["held_out"] = _finite_or_none(d["metadata"]["held_out"])   # strict JSON: NaN -> null
        atomic_write_text(path, json.dumps(d, separators=(",", ":"), allow_nan=False) + "\n")

    @classmethod
    def from_dict(cls, d: dict, *, device: str | None = None, allow_other_device: bool = False,
                  source: str = "<dict>") -> "LatencyPredictor":
        if not isinstance(d, dict) or d.get("format") != PREDICTOR_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise IncompatibleArtifactError(f"{source}: format {got!r} is not a latency predictor "
                                            f"(expected {PREDICTOR_FORMAT!r})")
        meta = _field(d, "metadata", "object", source, {})
        held_out = _finite_or_none(_field(d, "metadata.held_out", "object", source, {}))
        _check_numbers({k: v for k, v in d.items() if k != "metadata"}, source)
        _check_numbers({**meta, "held_out": {}}, source, "metadata")
        schema = _field(d, "metadata.feature_schema", "object", source, {})
        names = schema.get("names")
        if (schema.get("version") != FEATURE_SCHEMA_VERSION or names != list(FEATURE_NAMES)
                or schema.get("base_names") != list(BASE_FEATURE_NAMES)):
            raise IncompatibleArtifactError(
                f"{source}: feature schema v{schema.get('version')} "
                f"({len(names) if isinstance(names, list) else 'no list of'} features) "
                f"differs from this library's v{FEATURE_SCHEMA_VERSION} ({len(FEATURE_NAMES)} features); "
                f"refit it with `nasbnn-hw fit --device {meta.get('device')} ...`")
        fitted_for = _field(d, "metadata.device", "text", source, None)
        if device is not None and fitted_for != device:
            msg = (f"{source}: predictor was fitted for device {fitted_for!r}, not {device!r}; "
                   f"its latencies describe another machine")
            if not allow_other_device:
                raise IncompatibleArtifactError(msg + f" (fit one for it: `nasbnn-hw fit --device {device} ...`; from "
                                                      "Python, allow_other_device=True uses it anyway)")
            warnings.warn(msg, stacklevel=2)
        p = _field(d, "metadata.params", "object", source, {})
        self = cls(**{k: p[k] for k in ("n_estimators", "max_features", "min_samples_leaf", "random_state") if k in p})
        try:
            self._validate_params()
        except CostModelError as e:
            raise IncompatibleArtifactError(f"{source}: field 'metadata.params': {e}") from None
        if not (self.random_state is None or type(self.random_state) is int):
            raise IncompatibleArtifactError(f"{source}: field 'metadata.params.random_state' must be an integer "
                                            f"or null, got {str(self.random_state)[:40]!r}")
        coef = _field(d, "base.coef", "list", source)
        if len(coef) != len(BASE_FEATURE_NAMES) or not all(_KINDS["number"][0](c) and 0 <= c <= MAX_SECONDS
                                                           for c in coef):
            raise IncompatibleArtifactError(f"{source}: field 'base.coef' must be {len(BASE_FEATURE_NAMES)} numbers "
                                            f"from 0 to {MAX_SECONDS:g} (one per base feature), got {str(coef)[:60]}")
        self.base_coef_ = np.asarray(coef, dtype=np.float64)
        self.base_floor_ = float(_field(d, "base.floor", "number", source))
        if not 0 < self.base_floor_ <= MAX_SECONDS:
            raise IncompatibleArtifactError(f"{source}: field 'base.floor' must be > 0 and <= {MAX_SECONDS:g} "
                                            f"seconds, got {self.base_floor_}")
        trees = _field(d, "trees", "list", source)
        if not trees or ("n_estimators" in p and len(trees) != self.n_estimators):
            raise IncompatibleArtifactError(f"{source}: field 'trees' holds {len(trees)} trees; expected "
                                            f"metadata.params.n_estimators = {p.get('n_estimators', '>= 1')}")
        self.trees_ = []
        for i, t in enumerate(trees):
            try:
                self.trees_.append(check_tree_dict(t, len(FEATURE_NAMES)))
            except (TypeError, ValueError, OverflowError) as e:
                raise IncompatibleArtifactError(f"{source}: field 'trees[{i}]': {e} (malformed predictor "
                                                f"file)") from None
        self.correction_ = {k: float(_field(d, f"correction.{k}", "number", source))
                            for k in ("slope", "per_layer", "intercept", "residual_std")}
        self.correction_["n"] = _field(d, "correction.n", "count", source)
        c = self.correction_
        if not (0 < c["slope"] <= MAX_SECONDS and 0 <= c["residual_std"] <= MAX_SECONDS
                and abs(c["per_layer"]) <= MAX_SECONDS and abs(c["intercept"]) <= MAX_SECONDS):
            raise IncompatibleArtifactError(f"{source}: field 'correction' needs 0 < slope, 0 <= residual_std, "
                                            f"|per_layer| and |intercept|, all <= {MAX_SECONDS:g}; got {c}")
        self.device_ = fitted_for
        self.target_ = _field(d, "metadata.target", "text", source, None)
        self.tvm_version_ = _field(d, "metadata.tvm_version", "text", source, None)
        self.n_train_layers_ = _field(d, "metadata.n_train_layers", "count", source, 0)
        self.created_ = _field(d, "metadata.created", "time", source, None)
        self.library_versions_ = _field(d, "metadata.library_versions", "object", source, {})
        self.held_out_ = held_out
        return self

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, allow_other_device: bool = False) -> "LatencyPredictor":
        try:
            d = json.loads(Path(path).read_bytes(), parse_constant=_Constant)
        except OSError as e:
            raise CostModelError(f"cannot read predictor file {str(path)!r}: {e.strerror or e}") from None
        except (ValueError, RecursionError) as e:   # JSONDecodeError, bad UTF-8, an integer of 5000 digits
            raise IncompatibleArtifactError(f"{path}: not a JSON predictor file ({str(e)[:120]})") from None
        return cls.from_dict(d, device=device, allow_other_device=allow_other_device, source=str(path))
