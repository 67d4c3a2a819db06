"""`Arch`: one subnet of a search space, as an immutable value.

An arch lists, per stage, its blocks; each block is `(channels, kernel, groups1, groups2)`, so a stage's
depth is the number of its blocks. Stage 0 holds the stem (one block, kernel and groups fixed).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from nasbnn_hw.errors import ArchError
from nasbnn_hw.core.space import SearchSpace

ARCH_FORMAT = "nasbnn-hw/arch-v1"


@dataclass(frozen=True, order=True)
class Block:
    channels: int
    kernel: int = 3
    groups1: int = 1
    groups2: int = 1

    def as_list(self) -> list[int]:
        return [self.channels, self.kernel, self.groups1, self.groups2]


@dataclass(frozen=True, order=True)
class Arch:
    stages: tuple[tuple[Block, ...], ...]

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    def blocks(self) -> Iterator[tuple[int, int, Block]]:
        """(stage, index in stage, block) for every block, stem first."""
        for si, st in enumerate(self.stages):
            for bi, b in enumerate(st):
                yield si, bi, b

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(b.channels for _, _, b in self.blocks())

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": ARCH_FORMAT, "stages": [[b.as_list() for b in st] for st in self.stages]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Arch":
        if not isinstance(d, dict) or "stages" not in d:
            raise ArchError("an arch must be a JSON object with a 'stages' list "
                            "(stages -> blocks -> [channels, kernel, groups1, groups2])")
        if d.get("format", ARCH_FORMAT) != ARCH_FORMAT:
            raise ArchError(f"arch format={d['format']!r} not supported (allowed: {ARCH_FORMAT})")
        if not isinstance(d["stages"], list):
            raise ArchError(f"arch 'stages' = {str(d['stages'])[:60]!r} must be a list of stages "
                            "(stages -> blocks -> [channels, kernel, groups1, groups2])")
        stages = []
        for si, st in enumerate(d["stages"]):
            if not isinstance(st, list) or not st:
                raise ArchError(f"stage {si}: {st!r} must be a non-empty list of blocks")
            blocks = []
            for bi, b in enumerate(st):
                if (not isinstance(b, (list, tuple)) or not 1 <= len(b) <= 4
                        or not all(isinstance(x, int) and not isinstance(x, bool) for x in b)):
                    raise ArchError(f"stage {si} block {bi}: {b!r} must be [channels, kernel, groups1, groups2] integers")
                blocks.append(Block(*b))
            stages.append(tuple(blocks))
        return cls(tuple(stages))

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ArchError(f"arch is not valid JSON: {e}") from None

    def save(self, path: str | Path) -> None:
        from nasbnn_hw.utils import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Arch":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ArchError(f"cannot read arch file {str(path)!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ArchError(f"arch file {str(path)!r} is not UTF-8 text (expected JSON)") from None
        try:
            return cls.from_json(text)
        except ArchError as e:
            raise ArchError(f"arch file {str(path)!r}: {e}") from None

    def short(self) -> str:
        """Compact human-readable form, e.g. `16|24.24|48k5g2 ...`."""
        parts = []
        for st in self.stages:
            parts.append(".".join(f"{b.channels}" + (f"k{b.kernel}" if b.kernel != 3 else "")
                                  + (f"g{b.groups1}" if b.groups1 != 1 else "")
                                  + (f"h{b.groups2}" if b.groups2 != 1 else "") for b in st))
        return "|".join(parts)

    # --- official candidate format -------------------------------------------------------------
    def to_official(self, space: SearchSpace) -> list[list[int]]:
        """One row per supernet block slot: [stage, block, channels, kernel, groups1, groups2]."""
        rows = []
        for si, spec in enumerate(space.stages):
            for bi in range(spec.max_depth):
                if bi < len(self.stages[si]):
                    rows.append([si, bi, *self.stages[si][bi].as_list()])
                else:
                    rows.append([-1, -1, 0, 0, 0, 0])
        return rows

    @classmethod
    def from_official(cls, rows: Sequence[Sequence[int]], space: SearchSpace) -> "Arch":
        rows = official_rows(rows)
        if len(rows) != space.num_slots or any(len(r) != 6 for r in rows):
            raise ArchError(f"official candidate has {len(rows)} rows of {sorted({len(r) for r in rows})} values; "
                            f"space '{space.name}' needs {space.num_slots} rows of 6 "
                            f"[stage, block, channels, kernel, groups1, groups2]")
        stages: list[list[Block]] = [[] for _ in space.stages]
        slot = 0
        for si, spec in enumerate(space.stages):
            for bi in range(spec.max_depth):
                r = rows[slot]
                slot += 1
                if r[0] == -1:
                    continue
                if r[0] != si or r[1] != bi:
                    raise ArchError(f"official candidate row {slot - 1} = {r}: expected stage {si} block {bi} or -1")
                if len(stages[si]) != bi:
                    raise ArchError(f"official candidate: stage {si} block {bi} follows a skipped slot")
                stages[si].append(Block(*r[2:]))
        arch = cls(tuple(tuple(s) for s in stages))
        validate(arch, space)
        return arch


def official_rows(rows) -> list[list[int]]:
    """Official candidate rows as lists of ints: a list/tuple of rows, or a 2-D integer tensor; anything else
    (strings, floats with a fraction, nesting of another depth) raises ArchError."""
    if hasattr(rows, "dim") and hasattr(rows, "tolist"):   # a tensor
        if rows.dim() != 2 or rows.is_floating_point() and not bool((rows == rows.round()).all()):
            raise ArchError(f"official candidate: a tensor of shape {tuple(rows.shape)} and dtype {rows.dtype}; "
                            "expected a 2-D integer tensor of [stage, block, channels, kernel, groups1, groups2] rows")
        return rows.long().tolist()
    if not isinstance(rows, (list, tuple)):
        raise ArchError(f"official candidate: {type(rows).__name__} given; expected a list of "
                        "[stage, block, channels, kernel, groups1, groups2] rows")
    out = []
    for i, r in enumerate(rows):
        if hasattr(r, "tolist"):
            r = r.tolist()
        if not isinstance(r, (list, tuple)) or not all(
                type(x) is int or (type(x) is float and x.is_integer() and abs(x) < 2**31) for x in r):
            raise ArchError(f"official candidate row {i} = {str(r)[:60]}: expected 6 integers "
                            "[stage, block, channels, kernel, groups1, groups2]")
        out.append([int(x) for x in r])
    return out


def validate(arch: Arch, space: SearchSpace) -> Arch:
    """Check `arch` against `space` and the ND constraint; raise ArchError naming the first bad value."""
    if len(arch.stages) != len(space.stages):
        raise ArchError(f"arch has {len(arch.stages)} stages; space '{space.name}' has {len(space.stages)}")
    prev = None
    for si, (st, spec) in enumerate(zip(arch.stages, space.stages)):
        if len(st) not in spec.depth:
            raise ArchError(f"stage {si}: depth={len(st)} not in allowed choices {list(spec.depth)}")
        for bi, b in enumerate(st):
            for field, allowed in (("channels", spec.channels), ("kernel", spec.kernel),
                                   ("groups1", spec.groups1), ("groups2", spec.groups2)):
                v = getattr(b, field)
                if v not in allowed:
                    raise ArchError(f"stage {si} block {bi}: {field}={v} not in allowed choices {list(allowed)}")
            if prev is not None and b.channels < prev:
                raise ArchError(f"stage {si} block {bi}: channels={b.channels} is fewer than the previous block's "
                                f"{prev} (non-decreasing constraint: allowed >= {prev})")
            prev = b.channels
    return arch


def is_valid(arch: Arch, space: SearchSpace) -> bool:
    try:
        validate(arch, space)
        return True
    except ArchError:
        return False
