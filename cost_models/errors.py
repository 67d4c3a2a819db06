"""Errors of the cost models: each is a `NasBnnError`, so the CLI prints one line and exits with status 2."""
from __future__ import annotations

from nasbnn_hw.errors import NasBnnError

__all__ = ["CostModelError", "UnknownCostModelError", "MissingMeasurementError", "IncompatibleArtifactError"]


class CostModelError(NasBnnError):
    """A cost model cannot be built or used with the given arguments."""


class UnknownCostModelError(CostModelError):
    """No cost model is registered under that name."""


class MissingMeasurementError(CostModelError):
    """A lookup table lacks a measurement it needs."""


class IncompatibleArtifactError(CostModelError):
    """A saved predictor does not fit this device, feature schema or format."""
