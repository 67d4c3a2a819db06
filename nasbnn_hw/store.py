"""The measurement store: every latency measured on any device, in one SQLite file.

One row per (device, target, TVM version, kind, key). Writes are single transactions, so a run killed at
any point leaves only whole rows; re-running skips keys already stored; INSERT OR IGNORE makes a retried
write after a lost connection harmless (no duplicates).

Rounds: an item measured again later (`profile --rounds R`, against a device whose timing drifts with its
load or temperature) keeps every round in `rounds` (round 0 is the first measurement); its row in
`measurements` then holds the median of the round medians, which is what every reader uses.

Reference: items measured under the reference protocol (`nasbnn_hw.timing`) are in units of the device's
reference-kernel time, kept in `reference` per (device, target, TVM version): the first calibration is
kept, so later runs (and a second profiler on the same store) scale by the same number. Stores written
before this table existed open unchanged and gain it empty.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    tvm_version TEXT NOT NULL,
    kind TEXT NOT NULL,            -- 'layer' or 'subnet'
    key TEXT NOT NULL,             -- LayerConfig.key() or the arch JSON with its space name
    config TEXT NOT NULL,          -- JSON: LayerConfig.to_dict() or {"space": ..., "arch": ...}
    median_s REAL NOT NULL,
    iqr_s REAL NOT NULL,
    repeats INTEGER NOT NULL,
    samples TEXT NOT NULL,         -- JSON list of seconds
    created REAL NOT NULL,
    UNIQUE (device, target, tvm_version, kind, key)
);
CREATE TABLE IF NOT EXISTS rounds (
    measurement INTEGER NOT NULL REFERENCES measurements (id),
    round INTEGER NOT NULL,        -- 0: the first measurement, 1, 2, ...: later ones
    median_s REAL NOT NULL,
    iqr_s REAL NOT NULL,
    repeats INTEGER NOT NULL,
    samples TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (measurement, round)
);
CREATE TABLE IF NOT EXISTS reference (
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    tvm_version TEXT NOT NULL,
    layer TEXT NOT NULL,           -- the reference kernel (nasbnn_hw.timing.REFERENCE_LAYER key)
    baseline_s REAL NOT NULL,      -- its time on the device when first calibrated
    created REAL NOT NULL,
    UNIQUE (device, target, tvm_version, layer)
);
CREATE TABLE IF NOT EXISTS agreement (
    device TEXT NOT NULL,
    subnets INTEGER NOT NULL,      -- how many subnets were measured twice
    kendall_tau REAL NOT NULL,     -- second measurement against the first
    acc10 REAL NOT NULL,           -- share within +-10 %
    created REAL NOT NULL
);
"""

_KEY = "device=? AND target=? AND tvm_version=? AND kind=? AND key=?"


@dataclass(frozen=True)
class Measurement:
    device: str
    target: str
    tvm_version: str
    kind: str
    key: str
    config: dict = field(compare=False)
    median_s: float = 0.0
    iqr_s: float = 0.0
    repeats: int = 0
    samples: tuple[float, ...] = field(default=(), compare=False)
    created: float = 0.0


class MeasurementStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def has(self, device: str, target: str, tvm_version: str, kind: str, key: str) -> bool:
        return self.rounds(device, target, tvm_version, kind, key) > 0

    def rounds(self, device: str, target: str, tvm_version: str, kind: str, key: str) -> int:
        """How many times that item has been measured (0: not stored)."""
        row = self._db.execute(f"SELECT id FROM measurements WHERE {_KEY}",
                               (device, target, tvm_version, kind, key)).fetchone()
        if row is None:
            return 0
        (n,) = self._db.execute("SELECT COUNT(*) FROM rounds WHERE measurement=?", row).fetchone()
        return max(1, n)

    def round_medians(self, device: str, target: str, tvm_version: str, kind: str, key: str) -> list[float]:
        """The median of each round of that item, first round first ([] when not stored)."""
        row = self._db.execute(f"SELECT id, median_s FROM measurements WHERE {_KEY}",
                               (device, target, tvm_version, kind, key)).fetchone()
        if row is None:
            return []
        meds = [r[0] for r in self._db.execute("SELECT median_s FROM rounds WHERE measurement=? ORDER BY round",
                                               (row[0],))]
        return meds or [row[1]]

    def add_round(self, m: Measurement) -> int:
        """Store `m` as a further round of an item already stored (or as its first measurement when it is
        not), set the item's median to the median of its round medians, and return the round number. One
        transaction: a run killed here leaves the item as it was."""
        import statistics
        k = (m.device, m.target, m.tvm_version, m.kind, m.key)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(f"SELECT id, median_s, iqr_s, repeats, samples, created FROM measurements "
                                   f"WHERE {_KEY}", k).fetchone()
            if row is None:
                self._db.execute("ROLLBACK")
                self.add(m)
                return 0
            mid = row[0]
            n = self._db.execute("SELECT COUNT(*) FROM rounds WHERE measurement=?", (mid,)).fetchone()[0]
            if n == 0:  # the first measurement becomes round 0
                self._db.execute("INSERT INTO rounds VALUES (?,?,?,?,?,?,?)", (mid, 0, *row[1:]))
                n = 1
            self._db.execute("INSERT INTO rounds VALUES (?,?,?,?,?,?,?)",
                             (mid, n, m.median_s, m.iqr_s, m.repeats, json.dumps(list(m.samples)),
                              m.created or time.time()))
            meds = [r[0] for r in self._db.execute("SELECT median_s FROM rounds WHERE measurement=?", (mid,))]
            self._db.execute("UPDATE measurements SET median_s=? WHERE id=?", (statistics.median(meds), mid))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return n

    def reference_baseline(self, device: str, target: str, tvm_version: str, layer: str) -> float | None:
        """The stored reference-kernel time of that device (seconds), or None."""
        row = self._db.execute("SELECT baseline_s FROM reference WHERE device=? AND target=? AND tvm_version=? "
                               "AND layer=?", (device, target, tvm_version, layer)).fetchone()
        return None if row is None else float(row[0])

    def set_reference_baseline(self, device: str, target: str, tvm_version: str, layer: str,
                               baseline_s: float) -> float:
        """Keep `baseline_s` unless a baseline is already stored; return the one the store keeps."""
        self._db.execute("INSERT OR IGNORE INTO reference VALUES (?,?,?,?,?,?)",
                         (device, target, tvm_version, layer, float(baseline_s), time.time()))
        return self.reference_baseline(device, target, tvm_version, layer)

    def add_agreement(self, device: str, subnets: int, kendall_tau: float, acc10: float) -> None:
        """Record how well `device` agreed with itself (`compare --remeasure`, the quickstart)."""
        self._db.execute("INSERT INTO agreement VALUES (?,?,?,?,?)",
                         (device, int(subnets), float(kendall_tau), float(acc10), time.time()))

    def agreement(self, device: str) -> dict | None:
        """The latest recorded self-agreement of `device`, or None."""
        row = self._db.execute("SELECT subnets, kendall_tau, acc10, created FROM agreement WHERE device=? "
                               "ORDER BY created DESC LIMIT 1", (device,)).fetchone()
        return None if row is None else dict(zip(("subnets", "kendall_tau", "acc10", "created"), row))

    def add(self, m: Measurement) -> bool:
        """Store `m`; return False (and change nothing) if that key is already stored."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO measurements (device, target, tvm_version, kind, key, config, median_s, "
            "iqr_s, repeats, samples, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (m.device, m.target, m.tvm_version, m.kind, m.key, json.dumps(m.config, sort_keys=True),
             m.median_s, m.iqr_s, m.repeats, json.dumps(list(m.samples)), m.created or time.time()))
        return cur.rowcount == 1

    def query(self, device: str | None = None, kind: str | None = None, target: str | None = None) -> list[Measurement]:
        sql, params = "SELECT device, target, tvm_version, kind, key, config, median_s, iqr_s, repeats, samples, " \
                      "created FROM measurements WHERE 1=1", []
        for col, val in (("device", device), ("kind", kind), ("target", target)):
            if val is not None:
                sql += f" AND {col}=?"
                params.append(val)
        sql += " ORDER BY id"
        return [Measurement(d, t, v, k, key, json.loads(c), med, iqr, rep, tuple(json.loads(s)), cr)
                for d, t, v, k, key, c, med, iqr, rep, s, cr in self._db.execute(sql, params)]

    def round_counts(self) -> dict[tuple, int]:
        """(device, target, tvm_version, kind, key) -> number of rounds, for items measured more than once."""
        return {k[:5]: k[5] for k in self._db.execute(
            "SELECT m.device, m.target, m.tvm_version, m.kind, m.key, COUNT(*) FROM rounds r "
            "JOIN measurements m ON m.id = r.measurement GROUP BY r.measurement")}

    def summary(self) -> list[dict]:
        """One dict per (device, target, TVM version, kind, space): how many items, how many of them were
        measured in more than one round, median and range of their medians, first and last time."""
        groups: dict[tuple, list] = {}
        rounds = {mid: (n, last) for mid, n, last in self._db.execute(
            "SELECT measurement, COUNT(*), MAX(created) FROM rounds GROUP BY measurement")}
        for mid, d, t, v, k, c, med, cr in self._db.execute(
                "SELECT id, device, target, tvm_version, kind, config, median_s, created FROM measurements"):
            cfg = json.loads(c)
            space = f"{cfg.get('space')}@{cfg.get('resolution')}" if k == "subnet" else ""
            n, last = rounds.get(mid, (1, cr))
            groups.setdefault((d, t, v, k, space), []).append((med, cr, n, max(cr, last)))
        out = []
        for (d, t, v, k, space), rows in sorted(groups.items()):
            meds = sorted(r[0] for r in rows)
            out.append({"device": d, "target": t, "tvm_version": v, "kind": k, "space": space, "items": len(rows),
                        "multi_round": sum(r[2] > 1 for r in rows), "max_rounds": max(r[2] for r in rows),
                        "median_s": meds[len(meds) // 2], "min_s": meds[0], "max_s": meds[-1],
                        "first": min(r[1] for r in rows), "last": max(r[3] for r in rows)})
        return out

    def devices(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT device FROM measurements ORDER BY device")]

    def count(self, device: str | None = None, kind: str | None = None) -> int:
        return len(self.query(device=device, kind=kind))

    def add_many(self, ms: Iterable[Measurement]) -> int:
        return sum(self.add(m) for m in ms)
