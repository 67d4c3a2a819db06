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
import platform
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from nasbnn_hw.layers import LayerConfig

from ._trees import check_tree_dict, predict_trees, tree_to_dict
from .errors import CostModelError, IncompatibleArtifactError
from .features import BASE_FEATURE_NAMES, FEATURE_NAMES, FEATURE_SCHEMA_VERSION, base_features, layer_features

__all__ = ["LatencyPredictor", "PREDICTOR_FORMAT"]

PREDICTOR_FORMAT = "nasbnn-hw/latency-predictor-v1"


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
        atomic_write_text(path, json.dumps(self.to_dict(), separators=(",", ":")) + "\n")

    @classmethod
    def from_dict(cls, d: dict, *, device: str | None = None, allow_other_device: bool = False,
                  source: str = "<dict>") -> "LatencyPredictor":
        if not isinstance(d, dict) or d.get("format") != PREDICTOR_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise IncompatibleArtifactError(f"{source}: format {got!r} is not a latency predictor "
                                            f"(expected {PREDICTOR_FORMAT!r})")
        meta = d.get("metadata", {})
        schema = meta.get("feature_schema", {})
        if (schema.get("version") != FEATURE_SCHEMA_VERSION or schema.get("names") != list(FEATURE_NAMES)
                or schema.get("base_names") != list(BASE_FEATURE_NAMES)):
            raise IncompatibleArtifactError(
                f"{source}: feature schema v{schema.get('version')} ({len(schema.get('names') or [])} features) "
                f"differs from this library's v{FEATURE_SCHEMA_VERSION} ({len(FEATURE_NAMES)} features); "
                f"refit it with `nasbnn-hw fit --device {meta.get('device')} ...`")
        if device is not None and meta.get("device") != device:
            msg = (f"{source}: predictor was fitted for device {meta.get('device')!r}, not {device!r}; "
                   f"its latencies describe another machine")
            if not allow_other_device:
                raise IncompatibleArtifactError(msg + " (pass allow_other_device=True to use it anyway)")
            warnings.warn(msg, stacklevel=2)
        p = meta.get("params", {})
        self = cls(**{k: p[k] for k in ("n_estimators", "max_features", "min_samples_leaf", "random_state") if k in p})
        try:
            self.base_coef_ = np.asarray(d["base"]["coef"], dtype=np.float64)
            self.base_floor_ = float(d["base"]["floor"])
            if self.base_coef_.shape != (len(BASE_FEATURE_NAMES),):
                raise ValueError("base coefficients have the wrong length")
            self.trees_ = [check_tree_dict(t, len(FEATURE_NAMES)) for t in d["trees"]]
            if not self.trees_:
                raise ValueError("no trees")
            corr = d["correction"]
            self.correction_ = {k: float(corr[k]) for k in ("slope", "per_layer", "intercept", "residual_std")}
            self.correction_["n"] = int(corr["n"])
        except (KeyError, TypeError, ValueError) as e:
            raise IncompatibleArtifactError(f"{source}: malformed predictor file ({e})") from None
        self.device_, self.target_, self.tvm_version_ = meta.get("device"), meta.get("target"), meta.get("tvm_version")
        self.n_train_layers_ = int(meta.get("n_train_layers", 0))
        self.created_ = meta.get("created")
        self.library_versions_ = meta.get("library_versions", {})
        self.held_out_ = meta.get("held_out", {})
        return self

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, allow_other_device: bool = False) -> "LatencyPredictor":
        try:
            d = json.loads(Path(path).read_text())
        except OSError as e:
            raise CostModelError(f"cannot read predictor file {str(path)!r}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise IncompatibleArtifactError(f"{path}: not a JSON predictor file ({e})") from None
        return cls.from_dict(d, device=device, allow_other_device=allow_other_device, source=str(path))
