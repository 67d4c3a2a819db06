"""The measurement store: every latency measured on any device, in one SQLite file.

One row per (device, target, TVM version, kind, key). Writes are single transactions, so a run killed at
any point leaves only whole rows; re-running skips keys already stored; INSERT OR IGNORE makes a retried
write after a lost connection harmless (no duplicates).

Rounds: an item measured again later (`profile --rounds R`, against a device whose timing drifts with its
load or temperature) keeps every round in `rounds` (round 0 is the first measurement); its row in
`measurements` then holds the median of the round medians, which is what every reader uses.

Reference: items measured under the reference protocol (`nasbnn_hw.profiling.timing`) are in units of the device's
reference-kernel time, kept in `reference` per (device, target, TVM version): the first calibration is
kept, so later runs (and a second profiler on the same store) scale by the same number. Stores written
before this table existed open unchanged and gain it empty (opened for writing; read-only, it reads as empty).

Schedules: `nasbnn-hw tune` keeps the winning kernel schedule of each tuned layer in `schedules`, per (device,
target, TVM version, layer); builds for that device use it (`nasbnn_hw.profiling.tuning.ScheduleBook`). A
measurement taken with a schedule other than the one each layer had before tuning existed carries it in its
key and config, so rows of different schedules never mix.

Safety: opening never changes a file the store did not create unless it is opened for writing
(`readonly=True`, what every reading command uses, opens the file with SQLite's `mode=ro`: no schema, no
journal-mode switch); a file that is not a store (another SQLite database, random bytes, a truncated store,
a directory) is refused at open, and every SQLite failure surfaces as a one-line `StoreError`.

Targets: the `target` column holds `canonical_target(...)` of the compilation target, the same text for
the Python API's `target="local"` and the `local` device profile; rows an older version wrote under
another spelling (TVM's own string of the target) are read and looked up as their canonical spelling.
"""
from __future__ import annotations

import functools
import json
import os
import sqlite3
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

from nasbnn_hw.errors import StoreError

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
    layer TEXT NOT NULL,           -- the reference kernel (nasbnn_hw.profiling.timing.reference_key)
    baseline_s REAL NOT NULL,      -- its time on the device when first calibrated
    created REAL NOT NULL,
    UNIQUE (device, target, tvm_version, layer)
);
CREATE TABLE IF NOT EXISTS schedules (
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    tvm_version TEXT NOT NULL,
    layer TEXT NOT NULL,           -- LayerConfig.key()
    schedule TEXT NOT NULL,        -- JSON: the winning CpuSchedule.to_dict()
    median_s REAL NOT NULL,        -- the winner's time
    default_s REAL NOT NULL,       -- the target's default schedule's time, measured beside it
    trials TEXT NOT NULL,          -- JSON list of {"schedule": fingerprint, "median_s": seconds or null}
    created REAL NOT NULL,
    UNIQUE (device, target, tvm_version, layer)
);
CREATE TABLE IF NOT EXISTS agreement (
    device TEXT NOT NULL,
    subnets INTEGER NOT NULL,      -- how many subnets were measured twice
    kendall_tau REAL NOT NULL,     -- second measurement against the first
    acc10 REAL NOT NULL,           -- share within +-10 %
    created REAL NOT NULL,
    largest_swap REAL              -- cost_models.metrics.largest_swap (NULL: recorded before it was)
);
"""

_TABLES = {s.split()[5]: s for s in SCHEMA.split(";") if s.strip()}  # table name -> its CREATE statement
_COLUMNS = ("id", "device", "target", "tvm_version", "kind", "key", "config", "median_s", "iqr_s", "repeats",
            "samples", "created")
_TVM_KINDS = ("llvm", "cuda", "c", "opencl", "vulkan", "rocm", "metal")


def _plain_target(d: dict) -> dict:
    """A target dict without what TVM derives from it (tag, keys, feature.*, CUDA's default limits)."""
    return {k: v for k, v in d.items() if k not in ("tag", "keys", "host") and not k.startswith("feature.")
            and not (d.get("kind") == "cuda" and (k, v) in (("max_num_threads", 1024), ("thread_warp_size", 32)))}


def _parse_tvm_string(text: str) -> dict:
    """{"kind": ..., attr: value} of a TVM target string such as 'llvm -keys=cpu -mcpu=znver3'."""
    kind, *opts = text.split()
    if kind not in _TVM_KINDS or any(not o.startswith("-") or "=" not in o for o in opts):
        raise ValueError(text)
    d: dict = {"kind": kind}
    for o in opts:
        k, v = o[1:].split("=", 1)
        d[k] = v.split(",") if k in ("keys", "mattr", "libs") else int(v) if v.isdigit() else v
    return d


@functools.lru_cache(maxsize=4096)
def canonical_target(text: str) -> str:
    """The one spelling of a compilation target in the store: compact sorted JSON {"target": {...}, "host":
    {...}} of the target as written, without what TVM derives from it. Accepts that spelling, a device
    profile's `target_key()`, a TVM target dict as JSON and TVM's target string (older stores); any other
    text is returned as it is."""
    try:
        d = json.loads(text) if text.lstrip().startswith("{") else _parse_tvm_string(text)
    except (ValueError, TypeError):
        return text
    if not isinstance(d, dict):
        return text
    tgt = d["target"] if isinstance(d.get("target"), dict) else d if "kind" in d else None
    if tgt is None:
        return text
    host = tgt.get("host", d.get("host"))
    if isinstance(host, str):
        host = {"kind": host}
    out = {"target": _plain_target(tgt), **({"host": _plain_target(host)} if isinstance(host, dict) else {})}
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


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


def _guard(fn):
    """Turn SQLite failures of a store method into one-line `StoreError`s naming the file."""
    @functools.wraps(fn)
    def wrapped(self, *a, **kw):
        try:
            return fn(self, *a, **kw)
        except sqlite3.Error as e:
            raise self._error(e, fn.__name__.strip("_")) from None
        except StoreError:
            raise
        except (ValueError, TypeError) as e:   # a row whose JSON or numbers were damaged
            raise self._fail(f"holds a malformed row ({fn.__name__.strip('_')}: {type(e).__name__}: "
                             f"{str(e)[:120]}); restore it from a copy or give a new --store path") from None
    return wrapped


class MeasurementStore:
    """The store at `path`: created when missing (for writing); `readonly=True` reads an existing store and
    never changes the file."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path, self.readonly = Path(path), bool(readonly)
        self._spell: dict[tuple, list[str]] = {}
        self._check_file()
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True, timeout=60,
                                           isolation_level=None)
            else:
                self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        except sqlite3.Error as e:
            raise self._error(e, "open") from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _fail(self, why: str) -> StoreError:
        return StoreError(f"measurement store {str(self.path)!r} {why}")

    def _error(self, e: sqlite3.Error, doing: str) -> StoreError:
        msg = str(e)
        hint = ("another process holds its write lock (tried for 60 s); retry when it is done" if "locked" in msg
                else "the file is corrupt; restore it from a copy or give a new --store path"
                if "malformed" in msg or "not a database" in msg
                else "the file or its directory cannot be written; fix the permissions or give another --store "
                     "path" if "readonly" in msg or "read-only" in msg else "")
        return self._fail(f"failed ({doing}: {msg})" + (f": {hint}" if hint else ""))

    def _check_file(self) -> None:
        """Refuse, before SQLite touches it, a path that cannot be (or become) a store."""
        p = self.path
        if p.is_dir():
            raise self._fail(f"is a directory; give a store file (e.g. {str(p / 'measurements.db')!r})")
        if not p.exists():
            if self.readonly:
                raise self._fail("does not exist (create one with `nasbnn-hw profile ... --store PATH`)")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise self._fail(f"cannot be created ({e.strerror}: {str(p.parent)!r})") from None
            if not os.access(p.parent, os.W_OK):
                raise self._fail(f"cannot be created: its directory {str(p.parent)!r} is not writable")
            return
        if not p.is_file():
            raise self._fail("is not a regular file; give an SQLite store file")
        if not self.readonly and (not os.access(p, os.W_OK) or not p.stat().st_mode & 0o222
                                  or not os.access(p.parent, os.W_OK)):
            raise self._fail(f"is read-only (mode {p.stat().st_mode & 0o777:o}, directory writable: "
                             f"{os.access(p.parent, os.W_OK)}) and cannot be written; make it writable or give "
                             f"another --store path")
        try:
            size = p.stat().st_size
            with open(p, "rb") as f:
                h = f.read(100)
        except OSError as e:
            raise self._fail(f"cannot be read ({e.strerror})") from None
        if size == 0:
            return  # an empty file: becomes a store when written, reads as an empty store
        if not h.startswith(b"SQLite format 3\x00"):
            raise self._fail("is not an SQLite database (a measurement store is the SQLite file that "
                             "`nasbnn-hw profile --store` writes)")
        if len(h) < 100:
            raise self._fail(f"is truncated or corrupt ({size} bytes, less than an SQLite header); restore it "
                             f"from a copy or give a new --store path")
        page = int.from_bytes(h[16:18], "big")
        want = int.from_bytes(h[28:32], "big") * (65536 if page == 1 else page)  # the header's database size
        wal = Path(f"{p}-wal")  # pages still in a WAL may lie beyond the file's end
        if h[92:96] == h[24:28] and size < want and not (wal.exists() and wal.stat().st_size):
            raise self._fail(f"is truncated or corrupt ({size} bytes; its header says {want}); restore it from a "
                             f"copy or give a new --store path")

    def _open(self) -> None:
        """Check that the file is a store (or empty), then create what is missing: tables when writing,
        empty temporary stand-ins when read-only."""
        try:
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "measurements" not in tables:
                raise self._fail(f"is not a nasbnn-hw measurement store (it has tables {', '.join(sorted(tables))} "
                                 f"and no 'measurements'); give a store written by `nasbnn-hw profile`, or a new "
                                 f"path")
            if "measurements" in tables:
                cols = {r[1] for r in self._db.execute("PRAGMA table_info(measurements)")}
                if set(_COLUMNS) - cols:
                    raise self._fail(f"is not a nasbnn-hw measurement store (its 'measurements' table lacks "
                                     f"columns {', '.join(c for c in _COLUMNS if c not in cols)})")
            for t in tables & set(_TABLES):  # reads each table's first page: a damaged one fails here
                self._db.execute(f"SELECT * FROM {t} LIMIT 1").fetchall()
            if self.readonly:
                for t in set(_TABLES) - tables:
                    self._db.execute(_TABLES[t].replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
                return
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            if "largest_swap" not in self._columns("agreement"):   # a store written before the column
                self._db.execute("ALTER TABLE agreement ADD COLUMN largest_swap REAL")
            self._db.execute("BEGIN IMMEDIATE")  # can it be written at all? (a read-only medium, a lock)
            self._db.execute("ROLLBACK")
        except sqlite3.Error as e:
            raise self._error(e, "open") from None
        except UnicodeDecodeError:   # text of the schema itself damaged
            raise self._fail("is corrupt (its schema is not text); restore it from a copy or give a new "
                             "--store path") from None

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def _tx(self):
        """One write transaction (BEGIN IMMEDIATE: decisions taken inside it hold until COMMIT)."""
        if self.readonly:
            raise self._fail("is opened read-only; open it with MeasurementStore(path) to write")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _spellings(self, table: str, device: str, target: str) -> list[str]:
        """The canonical spelling of `target` and any other spelling of it stored in `table` for `device`."""
        c = canonical_target(target)
        k = (table, device, c)
        if k not in self._spell:
            stored = self._db.execute(f"SELECT DISTINCT target FROM {table} WHERE device=?", (device,))
            self._spell[k] = [c] + [t for (t,) in stored if t != c and canonical_target(t) == c]
        return self._spell[k]

    def _where(self, device: str, target: str, tvm_version: str, kind: str, key: str) -> tuple[str, tuple]:
        ts = self._spellings("measurements", device, target)
        return (f"device=? AND target IN ({','.join('?' * len(ts))}) AND tvm_version=? AND kind=? AND key=? "
                f"ORDER BY id LIMIT 1", (device, *ts, tvm_version, kind, key))

    def has(self, device: str, target: str, tvm_version: str, kind: str, key: str) -> bool:
        return self.rounds(device, target, tvm_version, kind, key) > 0

    @_guard
    def rounds(self, device: str, target: str, tvm_version: str, kind: str, key: str) -> int:
        """How many times that item has been measured (0: not stored)."""
        where, params = self._where(device, target, tvm_version, kind, key)
        row = self._db.execute(f"SELECT id FROM measurements WHERE {where}", params).fetchone()
        if row is None:
            return 0
        (n,) = self._db.execute("SELECT COUNT(*) FROM rounds WHERE measurement=?", row).fetchone()
        return max(1, n)

    @_guard
    def round_medians(self, device: str, target: str, tvm_version: str, kind: str, key: str) -> list[float]:
        """The median of each round of that item, first round first ([] when not stored)."""
        where, params = self._where(device, target, tvm_version, kind, key)
        row = self._db.execute(f"SELECT id, median_s FROM measurements WHERE {where}", params).fetchone()
        if row is None:
            return []
        meds = [r[0] for r in self._db.execute("SELECT median_s FROM rounds WHERE measurement=? ORDER BY round",
                                               (row[0],))]
        return meds or [row[1]]

    @_guard
    def round_samples(self, device: str, target: str, tvm_version: str, kind: str, key: str) -> list[list[float]]:
        """The samples of each round of that item, first round first ([] when not stored)."""
        where, params = self._where(device, target, tvm_version, kind, key)
        row = self._db.execute(f"SELECT id, samples FROM measurements WHERE {where}", params).fetchone()
        if row is None:
            return []
        rounds = [json.loads(r[0]) for r in self._db.execute(
            "SELECT samples FROM rounds WHERE measurement=? ORDER BY round", (row[0],))]
        return rounds or [json.loads(row[1])]

    @_guard
    def add_round(self, m: Measurement, limit: int | None = None, pooled=None) -> int | None:
        """Store `m` as a further round of an item already stored (or as its first measurement when it is
        not), set the item's value to the median of its round medians (or, with `pooled`, a function of the
        list of every round's samples, e.g. the timing protocol's `pooled_estimate`) and return the round
        number; with `limit`, store nothing and return None when the item already has `limit` rounds. One transaction
        (the count and the insert: two profilers on one store cannot overshoot `limit`); a run killed here
        leaves the item as it was."""
        with self._tx():
            where, params = self._where(m.device, m.target, m.tvm_version, m.kind, m.key)
            row = self._db.execute(f"SELECT id, median_s, iqr_s, repeats, samples, created FROM measurements "
                                   f"WHERE {where}", params).fetchone()
            if row is None:
                self._insert(m)
                return 0
            mid = row[0]
            n = self._db.execute("SELECT COUNT(*) FROM rounds WHERE measurement=?", (mid,)).fetchone()[0]
            if limit is not None and max(1, n) >= limit:
                return None
            if n == 0:  # the first measurement becomes round 0
                self._db.execute("INSERT INTO rounds VALUES (?,?,?,?,?,?,?)", (mid, 0, *row[1:]))
                n = 1
            self._db.execute("INSERT INTO rounds VALUES (?,?,?,?,?,?,?)",
                             (mid, n, m.median_s, m.iqr_s, m.repeats, json.dumps(list(m.samples)),
                              m.created or time.time()))
            got = self._db.execute("SELECT median_s, samples FROM rounds WHERE measurement=?", (mid,)).fetchall()
            value = pooled([json.loads(r[1]) for r in got]) if pooled else statistics.median(r[0] for r in got)
            self._db.execute("UPDATE measurements SET median_s=? WHERE id=?", (value, mid))
        return n

    @_guard
    def reference_baseline(self, device: str, target: str, tvm_version: str, layer: str) -> float | None:
        """The stored reference-kernel time of that device (seconds), or None."""
        ts = self._spellings("reference", device, target)
        row = self._db.execute(f"SELECT baseline_s FROM reference WHERE device=? AND target IN "
                               f"({','.join('?' * len(ts))}) AND tvm_version=? AND layer=? ORDER BY created LIMIT 1",
                               (device, *ts, tvm_version, layer)).fetchone()
        return None if row is None else float(row[0])

    @_guard
    def set_reference_baseline(self, device: str, target: str, tvm_version: str, layer: str,
                               baseline_s: float) -> float:
        """Keep `baseline_s` unless a baseline is already stored; return the one the store keeps."""
        with self._tx():
            if self.reference_baseline(device, target, tvm_version, layer) is None:
                self._db.execute("INSERT OR IGNORE INTO reference VALUES (?,?,?,?,?,?)",
                                 (device, canonical_target(target), tvm_version, layer, float(baseline_s), time.time()))
        return self.reference_baseline(device, target, tvm_version, layer)

    @_guard
    def tuned_schedules(self, device: str, target: str, tvm_version: str) -> dict[str, dict]:
        """layer key -> {"schedule": dict, "median_s", "default_s", "trials": list, "created"} for that device."""
        ts = self._spellings("schedules", device, target)
        rows = self._db.execute(f"SELECT layer, schedule, median_s, default_s, trials, created FROM schedules WHERE "
                                f"device=? AND target IN ({','.join('?' * len(ts))}) AND tvm_version=? ORDER BY created",
                                (device, *ts, tvm_version))
        return {layer: {"schedule": json.loads(sch), "median_s": med, "default_s": dflt, "trials": json.loads(tr),
                        "created": cr} for layer, sch, med, dflt, tr, cr in rows}

    @_guard
    def add_tuned_schedule(self, device: str, target: str, tvm_version: str, layer: str, schedule: dict,
                           median_s: float, default_s: float, trials: list[dict]) -> bool:
        """Keep the winner of one tuned layer; False (nothing changed) if that layer already has one."""
        with self._tx():
            if layer in self.tuned_schedules(device, target, tvm_version):
                return False
            self._db.execute("INSERT OR IGNORE INTO schedules VALUES (?,?,?,?,?,?,?,?,?)",
                             (device, canonical_target(target), tvm_version, layer, json.dumps(schedule, sort_keys=True),
                              float(median_s), float(default_s), json.dumps(trials), time.time()))
        return True

    @_guard
    def tuned_counts(self) -> dict[tuple, int]:
        """(device, target, tvm_version) -> number of tuned layers."""
        out: dict[tuple, int] = {}
        for d, t, v, n in self._db.execute("SELECT device, target, tvm_version, COUNT(*) FROM schedules "
                                           "GROUP BY device, target, tvm_version"):
            k = (d, canonical_target(t), v)
            out[k] = out.get(k, 0) + n
        return out

    @_guard
    def add_agreement(self, device: str, subnets: int, kendall_tau: float, acc10: float,
                      largest_swap: float | None = None) -> None:
        """Record how well `device` agreed with itself (`compare --remeasure`, the quickstart)."""
        with self._tx():
            swap = None if largest_swap is None else float(largest_swap)
            self._db.execute("INSERT INTO agreement (device, subnets, kendall_tau, acc10, created, largest_swap) "
                             "VALUES (?,?,?,?,?,?)", (device, int(subnets), float(kendall_tau), float(acc10),
                                                      time.time(), swap))

    @_guard
    def agreement(self, device: str) -> dict | None:
        """The latest recorded self-agreement of `device` (subnets, kendall_tau, acc10, created, largest_swap:
        None when recorded before it was), or None."""
        keys = ("subnets", "kendall_tau", "acc10", "created")
        swap = "largest_swap" in self._columns("agreement")   # a read-only store may predate it
        row = self._db.execute(f"SELECT {', '.join(keys + (('largest_swap',) if swap else ()))} FROM agreement "
                               "WHERE device=? ORDER BY created DESC LIMIT 1", (device,)).fetchone()
        return None if row is None else {"largest_swap": None, **dict(zip(keys + ("largest_swap",), row))}

    def _insert(self, m: Measurement) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO measurements (device, target, tvm_version, kind, key, config, median_s, "
            "iqr_s, repeats, samples, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (m.device, canonical_target(m.target), m.tvm_version, m.kind, m.key, json.dumps(m.config, sort_keys=True),
             m.median_s, m.iqr_s, m.repeats, json.dumps(list(m.samples)), m.created or time.time()))
        return cur.rowcount == 1

    @_guard
    def add(self, m: Measurement) -> bool:
        """Store `m`; return False (and change nothing) if that key is already stored (under any spelling of
        its target)."""
        with self._tx():
            return self.rounds(m.device, m.target, m.tvm_version, m.kind, m.key) == 0 and self._insert(m)

    @_guard
    def query(self, device: str | None = None, kind: str | None = None, target: str | None = None) -> list[Measurement]:
        """Stored measurements, oldest first, each with its target in canonical spelling."""
        sql, params = "SELECT device, target, tvm_version, kind, key, config, median_s, iqr_s, repeats, samples, " \
                      "created FROM measurements WHERE 1=1", []
        for col, val in (("device", device), ("kind", kind)):
            if val is not None:
                sql += f" AND {col}=?"
                params.append(val)
        sql += " ORDER BY id"
        want = None if target is None else canonical_target(target)
        return [Measurement(d, canonical_target(t), v, k, key, json.loads(c), med, iqr, rep, tuple(json.loads(s)), cr)
                for d, t, v, k, key, c, med, iqr, rep, s, cr in self._db.execute(sql, params)
                if want is None or canonical_target(t) == want]

    @_guard
    def round_counts(self) -> dict[tuple, int]:
        """(device, target, tvm_version, kind, key) -> number of rounds, for items measured more than once."""
        return {(k[0], canonical_target(k[1]), *k[2:5]): k[5] for k in self._db.execute(
            "SELECT m.device, m.target, m.tvm_version, m.kind, m.key, COUNT(*) FROM rounds r "
            "JOIN measurements m ON m.id = r.measurement GROUP BY r.measurement")}

    @_guard
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
            groups.setdefault((d, canonical_target(t), v, k, space), []).append((med, cr, n, max(cr, last)))
        out = []
        for (d, t, v, k, space), rows in sorted(groups.items()):
            meds = sorted(r[0] for r in rows)
            out.append({"device": d, "target": t, "tvm_version": v, "kind": k, "space": space, "items": len(rows),
                        "multi_round": sum(r[2] > 1 for r in rows), "max_rounds": max(r[2] for r in rows),
                        "median_s": meds[len(meds) // 2], "min_s": meds[0], "max_s": meds[-1],
                        "first": min(r[1] for r in rows), "last": max(r[3] for r in rows)})
        return out

    @_guard
    def devices(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT device FROM measurements ORDER BY device")]

    def count(self, device: str | None = None, kind: str | None = None) -> int:
        return len(self.query(device=device, kind=kind))

    def add_many(self, ms: Iterable[Measurement]) -> int:
        return sum(self.add(m) for m in ms)
