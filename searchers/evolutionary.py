"""Evolutionary search, NAS-BNN flavour (METHOD.md "Search").

Initial population: random archs within the constraints, the smallest and largest included when they
qualify. Each generation: `mutations` children by mutation and `crossovers` by crossover, parents drawn
uniformly from the current Pareto set (the most accurate arch of each cost bin), every child new, valid
under ND and within the constraints. Defaults are the official ones: population 512, 20 generations,
128 + 128 children, mutation probability 0.2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.core.space import SearchSpace

from ._session import Session
from .base import check_float, check_int
from .operators import crossover, mutate
from .result import SearchResult

__all__ = ["EvolutionarySearcher"]


class EvolutionarySearcher:
    name = "evolutionary"

    def __init__(self, population_size: int = 512, generations: int = 20, mutations: int = 128,
                 crossovers: int = 128, mutation_prob: float = 0.2, bin_width: float | None = None,
                 n_bins: int = 100, max_tries_factor: int = 50):
        own = type(self).__name__
        self.population_size = check_int(own, "population_size", population_size, 2)
        self.generations = check_int(own, "generations", generations, 0)
        self.mutations = check_int(own, "mutations", mutations, 0)
        self.crossovers = check_int(own, "crossovers", crossovers, 0)
        self.mutation_prob = check_float(own, "mutation_prob", mutation_prob, 0.0, 1.0)
        self.bin_width = check_float(own, "bin_width", bin_width, 1e-300, float("inf"), allow_none=True)
        self.n_bins = check_int(own, "n_bins", n_bins, 1)
        self.max_tries_factor = check_int(own, "max_tries_factor", max_tries_factor, 1)

    def params(self) -> dict:
        return {k: getattr(self, k) for k in ("population_size", "generations", "mutations", "crossovers",
                                              "mutation_prob", "bin_width", "n_bins", "max_tries_factor")}

    def search(self, space: SearchSpace | str, evaluate: Callable[[Arch], float], cost_model,
               constraints: Sequence = (), budget: int | None = None, seed: int = 0,
               checkpoint_dir: str | Path | None = None) -> SearchResult:
        with Session.start(self.name, self.params(), space, evaluate, cost_model, constraints, budget, seed,
                           checkpoint_dir) as s:
            if not s.resume():
                s.check_satisfiable()
                init = s.sample_feasible(self.population_size, self.max_tries_factor * self.population_size)
                s.evaluate(init, 0, ["init"] * len(init))
                s.set_bins(self.bin_width, self.n_bins)
                s.record(0, len(init))
            while s.generation < self.generations and s.remaining > 0:
                gen = s.generation + 1
                children, origins = self._children(s, s.space)
                new = s.evaluate(children, gen, origins)
                s.record(gen, len(new))
            return s.result()

    def _children(self, s: Session, space: SearchSpace) -> tuple[list[Arch], list[str]]:
        parents = [c.arch for c in s.pareto()]
        taken: set[Arch] = set()
        children: list[Arch] = []
        origins: list[str] = []
        for kind, n in (("mutation", self.mutations), ("crossover", self.crossovers)):
            got, tries, max_tries = 0, 0, self.max_tries_factor * max(n, 1)
            while got < n and tries < max_tries:
                batch = []
                for _ in range(min(2 * (n - got) + 8, max_tries - tries)):
                    tries += 1
                    if kind == "mutation":
                        child = mutate(s.rng.choice(parents), space, s.rng, self.mutation_prob)
                    else:
                        child = crossover(s.rng.choice(parents), s.rng.choice(parents), space, s.rng)
                    if child is not None and child not in s.evaluated and child not in taken:
                        batch.append(child)
                        taken.add(child)
                if not batch:
                    continue
                ok = s.feasible_mask(s.costs(batch))
                for child, good in zip(batch, ok):
                    if good and got < n:
                        children.append(child)
                        origins.append(kind)
                        got += 1
        return children, origins
