"""Searchers by name (`evolutionary`, `random`) plus plug-ins from the entry-point group
`nasbnn_hw.searchers` (the entry point loads a class or factory called with the searcher's keyword
parameters, returning an object with `name` and `search(...)`)."""
from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Callable

from .errors import SearchError, UnknownSearcherError
from .evolutionary import EvolutionarySearcher
from .random_search import RandomSearcher

__all__ = ["ENTRY_POINT_GROUP", "register_searcher", "get_searcher", "list_searchers"]

ENTRY_POINT_GROUP = "nasbnn_hw.searchers"
_REGISTRY: dict[str, Callable] = {}


def register_searcher(name: str, factory: Callable, *, overwrite: bool = False) -> Callable:
    if name in _REGISTRY and not overwrite:
        raise SearchError(f"searcher {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory


def _plugins() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_searchers() -> list[str]:
    return list(_REGISTRY) + sorted(n for n in _plugins() if n not in _REGISTRY)


def get_searcher(name: str, **params):
    if name in _REGISTRY:
        return _REGISTRY[name](**params)
    plugins = _plugins()
    if name in plugins:
        try:
            factory = plugins[name].load()
        except Exception as e:
            raise SearchError(f"searcher plug-in {name!r} ({plugins[name].value}) failed to load: {e}") from e
        s = factory(**params)
        if not callable(getattr(s, "search", None)):
            raise SearchError(f"searcher plug-in {name!r} returned {type(s).__name__}, which has no search(...)")
        return s
    close = difflib.get_close_matches(str(name), list_searchers(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownSearcherError(f"unknown searcher {name!r} (known: {', '.join(list_searchers())}){hint}")


register_searcher("evolutionary", EvolutionarySearcher)
register_searcher("random", RandomSearcher)
