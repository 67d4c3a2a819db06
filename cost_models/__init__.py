"""What an arch costs: analytic counts (OPs, FLOPs, BOPs, params, memory), measured lookup tables and
learned latency predictors, behind one small protocol and a registry of names. No torch import here."""
from .analytic import (BopsModel, FlopsModel, ModelBytesModel, OpsModel, ParamsModel, PeakMemoryModel)
from .base import CostModel, LayerTableCostModel, UncertainCostModel
from .errors import (CostModelError, IncompatibleArtifactError, MissingMeasurementError,
                     UnknownCostModelError)
from .learned import PredictorCostModel, fit_predictor
from .lut import LookupTableModel
from .metrics import evaluate
from .predictor import LatencyPredictor
from .registry import ENTRY_POINT_GROUP, get_cost_model, list_cost_models, register_cost_model

__all__ = ["CostModel", "UncertainCostModel", "LayerTableCostModel", "OpsModel", "FlopsModel", "BopsModel",
           "ParamsModel", "ModelBytesModel", "PeakMemoryModel", "LookupTableModel", "LatencyPredictor",
           "PredictorCostModel", "fit_predictor", "evaluate", "get_cost_model", "list_cost_models",
           "register_cost_model", "ENTRY_POINT_GROUP", "CostModelError", "UnknownCostModelError",
           "MissingMeasurementError", "IncompatibleArtifactError"]
