"""Errors of the searchers: each is a `NasBnnError` (one line, exit status 2 in the CLI)."""
from __future__ import annotations

from nasbnn_hw.errors import NasBnnError

__all__ = ["SearchError", "ConstraintError", "ConstraintUnsatisfiableError", "UnknownSearcherError",
           "InvalidParameterError"]


class SearchError(NasBnnError):
    """A search cannot start or continue with the given arguments."""


class InvalidParameterError(SearchError, TypeError):
    """A searcher hyper-parameter has a bad type or value."""


class ConstraintError(SearchError):
    """A constraint string is malformed or names an unknown model or unit."""


class ConstraintUnsatisfiableError(SearchError):
    """No arch of the space can meet the constraints."""


class UnknownSearcherError(SearchError):
    """No searcher is registered under that name."""
