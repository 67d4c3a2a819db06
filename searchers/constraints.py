"""Constraints such as "latency@rpi4 <= 30ms", "ops <= 100M", "params <= 2M", "peak_memory < 1.5MiB".

Values are converted to the cost model's SI unit: seconds for latency (s, ms, us, ns), counts with K/M/G/T
(thousand, million, ...), bytes with B/KB/MB/GB or KiB/MiB/GiB. A time suffix on a non-time model (or the
reverse) is an error, so "ops <= 30ms" never silently means 0.03 OPs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import ConstraintError

__all__ = ["Constraint", "parse_constraint", "format_cost"]

_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_COUNT = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BYTES = {"B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30}
_OPS = ("<=", ">=", "<", ">")
_RE = re.compile(r"^\s*([A-Za-z_][\w.\-]*(?:@[\w.\-:]+)?)\s*(<=|>=|<|>)\s*"
                 r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-zµ]*)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`model_name op value` with value in the model's SI unit; `model` is the bound cost model (or None)."""
    text: str
    model_name: str
    op: str
    value: float
    suffix: str = ""
    model: object = field(default=None, compare=False, repr=False)

    @property
    def is_upper(self) -> bool:
        return self.op in ("<=", "<")

    def satisfied(self, costs) -> np.ndarray:
        c = np.asarray(costs, dtype=np.float64)
        return {"<=": c <= self.value, "<": c < self.value, ">=": c >= self.value, ">": c > self.value}[self.op]

    def bind(self, model) -> "Constraint":
        """This constraint with its cost model attached; checks the unit suffix against the model's unit."""
        unit = getattr(model, "unit", "")
        if self.suffix in _TIME and unit != "s":
            raise ConstraintError(f"constraint {self.text!r}: time unit '{self.suffix}' on cost model "
                                  f"{self.model_name!r}, whose unit is {unit!r}")
        if unit == "s" and self.suffix not in _TIME:
            raise ConstraintError(f"constraint {self.text!r}: cost model {self.model_name!r} measures seconds; "
                                  f"give a time unit (s, ms, us), e.g. '{self.model_name} {self.op} 30ms'")
        if self.suffix in _BYTES and unit != "B":
            raise ConstraintError(f"constraint {self.text!r}: byte unit '{self.suffix}' on cost model "
                                  f"{self.model_name!r}, whose unit is {unit!r}")
        return Constraint(self.text, self.model_name, self.op, self.value, self.suffix, model)


def parse_constraint(text: str) -> Constraint:
    if not isinstance(text, str):
        raise ConstraintError(f"a constraint must be a string like 'ops <= 100M', got {type(text).__name__}")
    m = _RE.match(text)
    if not m:
        raise ConstraintError(f"cannot parse constraint {text!r}; write MODEL OP VALUE[UNIT], e.g. "
                              f"'latency@rpi4 <= 30ms', 'ops <= 100M', 'params <= 2M' (OP: {', '.join(_OPS)})")
    name, op, num, suffix = m.groups()
    scale = _TIME.get(suffix) or _COUNT.get(suffix) or _BYTES.get(suffix)
    if scale is None:
        raise ConstraintError(f"constraint {text!r}: unknown unit {suffix!r} (time: {', '.join(_TIME)}; counts: "
                              f"K, M, G, T; bytes: {', '.join(_BYTES)})")
    value = float(num) * scale
    if not math.isfinite(value):
        raise ConstraintError(f"constraint {text!r}: value is not finite")
    return Constraint(" ".join(text.split()), name, op, value, suffix)


def format_cost(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.4g}ms"
    if unit == "B":
        return f"{value / 2 ** 20:.4g}MiB"
    for s, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= f:
            return f"{value / f:.4g}{s} {unit}"
    return f"{value:.4g} {unit}"


def bind_constraints(constraints: Sequence, resolve) -> list[Constraint]:
    """Parse strings and bind every constraint to a cost model via `resolve(model_name)`."""
    out = []
    for c in constraints:
        c = parse_constraint(c) if isinstance(c, str) else c
        if not isinstance(c, Constraint):
            raise ConstraintError(f"constraints must be strings or Constraint objects, got {type(c).__name__}")
        out.append(c if c.model is not None else c.bind(resolve(c.model_name)))
    return out
