"""Shared machinery of every searcher: cost models and constraints, the evaluation cache, the feasibility
check, and atomic per-generation checkpoints with resume."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.core.sampling import largest, sample_uniform, smallest
from nasbnn_hw.core.space import SearchSpace
from nasbnn_hw.utils import atomic_write_text

from .constraints import Constraint, format_cost
from .errors import ConstraintUnsatisfiableError, SearchError
from .pareto import hypervolume, pareto_bins
from .result import Candidate, GenerationStats, SearchResult

log = logging.getLogger(__name__)

STATE_FILE = "search_state.json"
EVAL_LOG = "evaluations.jsonl"
STATE_FORMAT = "nasbnn-hw/search-state-v1"
STATE_KEYS = ("rng", "generation", "bin_width", "hv_reference", "evaluated", "history")


def _rng_to_json(rng: random.Random) -> list:
    v, state, gauss = rng.getstate()
    return [v, list(state), gauss]


def _rng_from_json(s: list) -> random.Random:
    rng = random.Random()
    rng.setstate((s[0], tuple(s[1]), s[2]))
    return rng


class Session:
    """One search run: evaluates (with a cache), costs, constrains, records history, checkpoints."""

    def __init__(self, searcher: str, params: dict, space: SearchSpace, evaluate: Callable[[Arch], float],
                 cost_model, constraints: Sequence[Constraint], budget: int | None, seed: int,
                 checkpoint_dir: str | Path | None):
        if not callable(evaluate):
            raise SearchError(f"evaluate must be a callable arch -> accuracy, got {type(evaluate).__name__}")
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise SearchError(f"budget must be a positive number of evaluations or None, got {budget!r}")
        self.searcher, self.params, self.space = searcher, params, space
        self.evaluate_fn, self.cost_model, self.constraints = evaluate, cost_model, list(constraints)
        self.budget, self.seed = budget, int(seed)
        self.cost_key = cost_model.name
        self.models = {cost_model.name: cost_model}
        for c in self.constraints:
            self.models.setdefault(c.model_name, c.model)
        if "ops" not in self.models:
            from cost_models.registry import get_cost_model
            self.models["ops"] = get_cost_model("ops", space)
        self.rng = random.Random(self.seed)
        self.evaluated: dict[Arch, Candidate] = {}
        self.history: list[GenerationStats] = []
        self.generation = -1          # last completed generation
        self.bin_width = 0.0
        self.hv_reference = (0.0, 0.0)
        self.extra: dict = {}
        self.dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._acc_log: dict[str, float] = {}
        self._log_file = None

    # --- fingerprint and checkpoints ---------------------------------------------------------------
    def fingerprint(self) -> str:
        d = {"searcher": self.searcher, "params": self.params, "space": self.space.to_dict(), "cost": self.cost_key,
             "constraints": [c.text for c in self.constraints], "seed": self.seed, "budget": self.budget}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def resume(self) -> bool:
        """Load the checkpoint of this very search if there is one; True if resumed."""
        if self.dir is None:
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        log_path = self.dir / EVAL_LOG
        if log_path.exists():
            for line in log_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self._acc_log[rec["arch"]] = float(rec["accuracy"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue              # a line cut short by a kill
        state_path = self.dir / STATE_FILE
        resumed = False
        if state_path.exists():
            try:
                st = json.loads(state_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SearchError(f"{state_path}: unreadable checkpoint ({e})") from None
            if not isinstance(st, dict) or st.get("format") != STATE_FORMAT \
                    or st.get("fingerprint") != self.fingerprint():
                raise SearchError(f"{state_path} belongs to a different search (searcher, space, cost model, "
                                  f"constraints, seed or budget differ); use another checkpoint directory")
            missing = [k for k in STATE_KEYS if k not in st]
            if missing:
                raise SearchError(f"{state_path}: search state lacks {', '.join(missing)} (a complete state has "
                                  f"{', '.join(STATE_KEYS)}); remove the file to start the search afresh")
            try:
                self.rng = _rng_from_json(st["rng"])
                self.generation = int(st["generation"])
                self.bin_width = float(st["bin_width"])
                self.hv_reference = tuple(float(x) for x in st["hv_reference"])
                if len(self.hv_reference) != 2:
                    raise ValueError(f"hv_reference has {len(self.hv_reference)} values, expected 2")
                for d in st["evaluated"]:
                    c = Candidate.from_dict(d)
                    lacking = sorted(set(self.models) - set(c.costs))
                    if lacking or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in
                                          [c.accuracy, *c.costs.values()]):
                        raise ValueError(f"candidate {c.arch.short()}: costs {sorted(c.costs)} (need "
                                         f"{sorted(self.models)}) or accuracy not finite numbers")
                    self.evaluated[c.arch] = c
                self.history = [GenerationStats(**h) for h in st["history"]]
                self.extra = st.get("extra", {})
                if not isinstance(self.extra, dict):
                    raise ValueError("extra is not a dict")
            except NasBnnError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as e:
                raise SearchError(f"{state_path}: malformed search state ({type(e).__name__}: {str(e)[:120]}); "
                                  "remove the file to start the search afresh") from None
            resumed = True
            log.info("resumed %s search from %s at generation %d", self.searcher, state_path, self.generation)
        self._log_file = open(log_path, "a")
        return resumed

    def checkpoint(self) -> None:
        if self.dir is None:
            return
        st = {"format": STATE_FORMAT, "fingerprint": self.fingerprint(), "generation": self.generation,
              "rng": _rng_to_json(self.rng), "bin_width": self.bin_width, "hv_reference": list(self.hv_reference),
              "evaluated": [c.to_dict() for c in self.evaluated.values()],
              "history": [h.to_dict() for h in self.history], "extra": self.extra}
        atomic_write_text(self.dir / STATE_FILE, json.dumps(st) + "\n")

    @classmethod
    def start(cls, searcher: str, params: dict, space, evaluate: Callable[[Arch], float], cost_model,
              constraints: Sequence, budget: int | None, seed: int,
              checkpoint_dir: str | Path | None) -> "Session":
        """A session for a searcher's `search(...)` arguments: the space by name or object, the cost model
        and constraints by name or object. Use it as a context manager (closes the log)."""
        from nasbnn_hw.core.space import get_space

        from .run import prepare
        space = get_space(space)
        cost_model, constraints = prepare(space, cost_model, constraints)
        return cls(searcher, params, space, evaluate, cost_model, constraints, budget, seed, checkpoint_dir)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # --- costs and constraints ---------------------------------------------------------------------
    def costs(self, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
        return {name: np.asarray(m.costs(archs), dtype=np.float64) for name, m in self.models.items()}

    def feasible_mask(self, costs: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(costs.values())))
        ok = np.ones(n, dtype=bool)
        for c in self.constraints:
            ok &= c.satisfied(costs[c.model_name])
        return ok

    def check_satisfiable(self, n_samples: int = 2000) -> None:
        """Fail at once, naming the cheapest achievable cost, when a constraint cannot be met."""
        lo_arch, hi_arch = smallest(self.space), largest(self.space)
        sample = None
        for c in self.constraints:
            m = c.model
            extreme = lo_arch if c.is_upper else hi_arch
            if getattr(m, "monotone", False):
                v = float(m.costs([extreme])[0])
                if not c.satisfied([v])[0]:
                    word = "cheapest" if c.is_upper else "most expensive"
                    which = "smallest" if c.is_upper else "largest"
                    raise ConstraintUnsatisfiableError(
                        f"constraint '{c.text}' cannot be met in space '{self.space.name}': the {word} arch "
                        f"(the {which}) costs {format_cost(v, m.unit)} under {c.model_name}")
            else:
                if sample is None:
                    rng = random.Random(self.seed ^ 0x5EED)
                    sample = [lo_arch, hi_arch] + [sample_uniform(self.space, rng) for _ in range(n_samples)]
                v = np.asarray(m.costs(sample), dtype=np.float64)
                if not c.satisfied(v).any():
                    best = float(v.min() if c.is_upper else v.max())
                    word = "cheapest" if c.is_upper else "most expensive"
                    raise ConstraintUnsatisfiableError(
                        f"constraint '{c.text}' cannot be met in space '{self.space.name}': the {word} of "
                        f"{len(sample)} archs sampled (smallest and largest included) costs "
                        f"{format_cost(best, m.unit)} under {c.model_name}")

    def sample_feasible(self, n: int, max_tries: int, include_extremes: bool = True) -> list[Arch]:
        """Up to `n` distinct unseen feasible archs: smallest and largest first (when feasible), then uniform."""
        out: list[Arch] = []
        seen = set(self.evaluated)
        pool = [smallest(self.space), largest(self.space)] if include_extremes else []
        tries = 0
        while len(out) < n and tries < max_tries:
            batch = pool or [sample_uniform(self.space, self.rng) for _ in range(min(256, max_tries - tries))]
            tries += len(batch)
            pool = []
            mask = self.feasible_mask(self.costs(batch))
            for a, ok in zip(batch, mask):
                if ok and a not in seen and len(out) < n:
                    out.append(a)
                    seen.add(a)
        if not out and n > 0 and not self.evaluated:
            texts = "; ".join(c.text for c in self.constraints)
            raise ConstraintUnsatisfiableError(
                f"no arch of space '{self.space.name}' meets all constraints together ({texts}) "
                f"in {tries} samples; each alone can be met, so loosen one")
        return out

    # --- evaluation ------------------------------------------------------------------------------
    @property
    def remaining(self) -> float:
        return float("inf") if self.budget is None else self.budget - len(self.evaluated)

    def evaluate(self, archs: Sequence[Arch], generation: int, origins: Sequence[str]) -> list[Candidate]:
        """Evaluate unseen archs (cached; at most the remaining budget), in order; return the new candidates."""
        todo, picked = [], set()
        for a, o in zip(archs, origins):
            if a not in self.evaluated and a not in picked and len(todo) < self.remaining:
                todo.append((a, o))
                picked.add(a)
        if not todo:
            return []
        costs = self.costs([a for a, _ in todo])
        new = []
        for n, (a, origin) in enumerate(todo):
            key = a.to_json()
            if key in self._acc_log:
                acc = self._acc_log[key]
            else:
                acc = float(self.evaluate_fn(a))
                if not np.isfinite(acc):
                    raise SearchError(f"evaluate returned {acc} for arch {a.short()}")
                if self._log_file is not None:
                    self._log_file.write(json.dumps({"arch": key, "accuracy": acc}) + "\n")
                    self._log_file.flush()
            c = Candidate(a, acc, {k: float(v[n]) for k, v in costs.items()}, generation, origin)
            self.evaluated[a] = c
            new.append(c)
        return new

    # --- bins, history, result -------------------------------------------------------------------
    def set_bins(self, bin_width: float | None, n_bins: int) -> None:
        cs = [c.costs[self.cost_key] for c in self.evaluated.values()]
        upper = [c.value for c in self.constraints if c.model_name == self.cost_key and c.is_upper]
        hi = min(upper) if upper else max(cs)
        lo = min(cs)
        self.bin_width = float(bin_width) if bin_width else max((hi - lo) / n_bins, abs(hi) * 1e-9, 1e-300)
        self.hv_reference = (float(hi), 0.0)

    def pareto(self) -> list[Candidate]:
        return pareto_bins(self.evaluated.values(), self.cost_key, self.bin_width)

    def record(self, generation: int, n_new: int) -> None:
        par = self.pareto()
        ref_cost, ref_acc = self.hv_reference
        hv = hypervolume([(c.costs[self.cost_key], c.accuracy) for c in self.evaluated.values()], ref_cost, ref_acc)
        hv = hv / ref_cost if ref_cost > 0 else hv
        self.history.append(GenerationStats(generation, n_new, len(self.evaluated), len(par),
                                            max(c.accuracy for c in self.evaluated.values()), hv))
        self.generation = generation
        self.checkpoint()
        log.info("%s gen %d: %d new, %d evaluated, Pareto %d, best %.4f, HV %.4g", self.searcher, generation,
                 n_new, len(self.evaluated), len(par), self.history[-1].best_accuracy, hv)

    def result(self) -> SearchResult:
        return SearchResult(self.searcher, self.space.name, self.cost_key, getattr(self.cost_model, "unit", ""),
                            tuple(c.text for c in self.constraints), self.seed, dict(self.params),
                            tuple(self.pareto()), tuple(self.evaluated.values()), tuple(self.history),
                            self.bin_width, tuple(self.hv_reference))
