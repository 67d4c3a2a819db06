"""The searcher protocol and the parameter validation every searcher shares."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.space import SearchSpace

from .errors import InvalidParameterError
from .result import SearchResult

__all__ = ["Searcher", "check_int", "check_float"]


@runtime_checkable
class Searcher(Protocol):
    name: str

    def search(self, space: SearchSpace, evaluate: Callable[[Arch], float], cost_model, constraints: Sequence = (),
               budget: int | None = None, seed: int = 0, checkpoint_dir: str | Path | None = None) -> SearchResult:
        """Search `space` maximising `evaluate(arch)` (accuracy) along `cost_model` under `constraints`
        (strings or bound `Constraint`s), with at most `budget` evaluations; resumable from `checkpoint_dir`."""
        ...


def check_int(owner: str, name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidParameterError(f"The {name!r} parameter of {owner} must be an int in [{low}, inf). Got {value!r}.")
    return value


def check_float(owner: str, name: str, value, low: float, high: float, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidParameterError(f"The {name!r} parameter of {owner} must be a float in [{low}, {high}]"
                                    f"{' or None' if allow_none else ''}. Got {value!r}.")
    return float(value)
