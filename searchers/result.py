"""`SearchResult`: what every searcher returns, as a frozen value with a JSON round-trip."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nasbnn_hw.core.arch import Arch

from .errors import SearchError

__all__ = ["Candidate", "GenerationStats", "SearchResult", "RESULT_FORMAT"]

RESULT_FORMAT = "nasbnn-hw/search-result-v1"


@dataclass(frozen=True)
class Candidate:
    arch: Arch
    accuracy: float
    costs: dict = field(hash=False)          # cost-model name -> cost (SI units)
    generation: int = 0
    origin: str = "init"                      # init | mutation | crossover | random

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_dict()["stages"], "accuracy": self.accuracy, "costs": dict(self.costs),
                "generation": self.generation, "origin": self.origin}

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        return cls(Arch.from_dict({"stages": d["arch"]}), float(d["accuracy"]), dict(d["costs"]),
                   int(d.get("generation", 0)), str(d.get("origin", "init")))


@dataclass(frozen=True)
class GenerationStats:
    generation: int
    n_new: int
    n_evaluated: int
    pareto_size: int
    best_accuracy: float
    hypervolume: float       # of all evaluated archs, divided by the reference cost (see SearchResult)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SearchResult:
    searcher: str
    space: str
    cost_model: str
    cost_unit: str
    constraints: tuple[str, ...]
    seed: int
    params: dict = field(hash=False)
    pareto: tuple[Candidate, ...]            # most accurate arch per cost bin, by cost
    evaluated: tuple[Candidate, ...]         # every evaluated arch, in evaluation order
    history: tuple[GenerationStats, ...]
    bin_width: float = 0.0
    hv_reference: tuple[float, float] = (0.0, 0.0)   # (cost, accuracy) reference point of `hypervolume`

    def best(self, max_cost: float | None = None) -> Candidate:
        pool = [c for c in self.pareto if max_cost is None or c.costs[self.cost_model] <= max_cost]
        if not pool:
            raise SearchError(f"no Pareto arch costs <= {max_cost} ({self.cost_model})")
        return max(pool, key=lambda c: c.accuracy)

    def to_dict(self) -> dict:
        return {"format": RESULT_FORMAT, "searcher": self.searcher, "space": self.space,
                "cost_model": self.cost_model, "cost_unit": self.cost_unit, "constraints": list(self.constraints),
                "seed": self.seed, "params": self.params, "bin_width": self.bin_width,
                "hv_reference": list(self.hv_reference),
                "pareto": [c.to_dict() for c in self.pareto], "evaluated": [c.to_dict() for c in self.evaluated],
                "history": [h.to_dict() for h in self.history]}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchResult":
        if not isinstance(d, dict) or d.get("format") != RESULT_FORMAT:
            raise SearchError(f"not a search result (format {d.get('format') if isinstance(d, dict) else None!r}, "
                              f"expected {RESULT_FORMAT!r})")
        return cls(d["searcher"], d["space"], d["cost_model"], d["cost_unit"], tuple(d["constraints"]),
                   int(d["seed"]), dict(d["params"]), tuple(Candidate.from_dict(c) for c in d["pareto"]),
                   tuple(Candidate.from_dict(c) for c in d["evaluated"]),
                   tuple(GenerationStats(**h) for h in d["history"]), float(d["bin_width"]),
                   tuple(d["hv_reference"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        from nasbnn_hw.utils import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SearchResult":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except OSError as e:
            raise SearchError(f"cannot read search result {str(path)!r}: {e.strerror}") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SearchError(f"{path}: malformed search result ({e})") from None
