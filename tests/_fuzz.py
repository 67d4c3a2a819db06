"""Seeded fuzzing of file loaders: mistyped, truncated and byte-flipped variants of a valid document.

`value_variants(doc, rng)` walks a parsed document (dicts, lists, scalars) and yields copies with one
change each: a value replaced by one of another type or out of range, a key dropped, an unknown key added,
a list emptied or nested once more. `byte_variants(data, rng)` yields truncations and byte flips of a
file's bytes. A loader under test must raise only the project's own error (or accept the variant).
"""
from __future__ import annotations

import copy
import math
import random
from typing import Iterator

ODD_VALUES = (None, True, False, 0, -1, 10**12, 10**30, 1e308, 2.5, -0.0, math.nan, math.inf, "", "x",
              "-delete", "\n", [], [1], [[1, 2]], {}, {"a": 1})


def _paths(doc, prefix=()) -> list[tuple]:
    """Every path to a value in `doc` (keys and list indices)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _parent(doc, path):
    for p in path[:-1]:
        doc = doc[p]
    return doc


def value_variants(doc, rng: random.Random, n: int = 200) -> Iterator[tuple[str, object]]:
    """(description, mutated copy) pairs, `n` of them, each one change away from `doc`."""
    paths = [p for p in _paths(doc) if p]
    for _ in range(n):
        d = copy.deepcopy(doc)
        path = rng.choice(paths)
        parent, last = _parent(d, path), path[-1]
        kind = rng.randrange(5)
        if kind == 0 and isinstance(parent, dict):
            del parent[last]
            what = f"drop {path}"
        elif kind == 1 and isinstance(parent, dict):
            parent[f"{last}_typo"] = parent[last]
            what = f"unknown key beside {path}"
        elif kind == 2 and isinstance(parent[last], list):
            parent[last] = [] if rng.random() < 0.5 else [parent[last]]
            what = f"empty or nest list {path}"
        elif kind == 3 and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
            parent[last] = rng.choice((-1, 0, 10**9, -(10**9), 1.5, math.nan, math.inf, True))
            what = f"number {path} = {parent[last]!r}"
        else:
            parent[last] = copy.deepcopy(rng.choice(ODD_VALUES))
            what = f"{path} = {parent[last]!r}"
        yield what, d
    yield "not a table", [doc]
    yield "a bare string", "x"


def byte_variants(data: bytes, rng: random.Random, n: int = 60) -> Iterator[tuple[str, bytes]]:
    """(description, bytes) pairs: the empty file, truncations at random points, random byte flips."""
    yield "empty", b""
    for _ in range(n):
        if rng.random() < 0.5 or len(data) < 2:
            cut = rng.randrange(0, max(1, len(data)))
            yield f"truncated at {cut}", data[:cut]
        else:
            b = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(b))
                b[i] = rng.randrange(256)
            yield "byte flips", bytes(b)


def toml_dumps(doc: dict) -> str:
    """A minimal TOML writer for fuzzed documents (tables of scalars, lists and arrays of tables); values it
    cannot write in TOML (None, NaN as a key...) come out as text TOML rejects or reads as another type,
    which is fine for a fuzzer: the loader must still answer with its own error."""
    def val(v):
        if v is None:
            return '"__none__"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f'"{k}" = {val(x)}' for k, x in v.items()) + "}"
        return '"?"'
    lines, tables = [], []
    for k, v in doc.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.append((k, v))
        else:
            lines.append(f'"{k}" = {val(v)}')
    for k, rows in tables:
        for row in rows:
            lines.append(f'[["{k}"]]')
            lines += [f'"{kk}" = {val(x)}' for kk, x in row.items()]
    return "\n".join(lines) + "\n"
