"""Search strategies behind one protocol (evolutionary NAS-BNN flavour, random), resumable, all returning a
`SearchResult`. No torch import here: a search over a predictor runs without a supernet."""
from .run import run_search
from .base import Searcher
from .constraints import Constraint, format_cost, parse_constraint
from .errors import (ConstraintError, ConstraintUnsatisfiableError, InvalidParameterError, SearchError,
                     UnknownSearcherError)
from .evolutionary import EvolutionarySearcher
from .pareto import hypervolume, nondominated, pareto_bins
from .random_search import RandomSearcher
from .registry import ENTRY_POINT_GROUP, get_searcher, list_searchers, register_searcher
from .result import Candidate, GenerationStats, SearchResult

__all__ = ["run_search", "Searcher", "Constraint", "parse_constraint", "format_cost", "SearchError",
           "ConstraintError", "ConstraintUnsatisfiableError", "InvalidParameterError", "UnknownSearcherError",
           "EvolutionarySearcher", "RandomSearcher", "hypervolume", "nondominated", "pareto_bins",
           "get_searcher", "list_searchers", "register_searcher", "ENTRY_POINT_GROUP", "Candidate",
           "GenerationStats", "SearchResult"]
