"""The measurement store's safety: read-only opening changes nothing, files that are not stores are refused
with one-line errors, concurrent profilers cannot overshoot the rounds wanted, one target has one key."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from nasbnn_hw.errors import StoreError
from nasbnn_hw.core.layers import LayerConfig
from nasbnn_hw.profiling.store import SCHEMA, Measurement, MeasurementStore, canonical_target

K = ("dev", "t", "0.27", "layer")


def _m(key: str, med: float = 1e-3, target: str = "t") -> Measurement:
    return Measurement("dev", target, "0.27", "layer", key, {"k": key}, median_s=med, iqr_s=0.0, repeats=3,
                       samples=(med,) * 3)


def _sqlite(path: Path, script: str) -> Path:
    """A plain SQLite file at `path` made by `script` (not a store)."""
    con = sqlite3.connect(str(path))
    con.executescript(script)
    con.commit()
    con.close()
    return path


def _foreign(path: Path) -> Path:
    return _sqlite(path, "CREATE TABLE x (a); CREATE TABLE y (b); INSERT INTO x VALUES (1);")


def _tables(path: Path) -> set[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()


def _is_wal(path: Path) -> bool:
    return path.read_bytes()[18:20] == b"\x02\x02"  # file format write/read version 2: WAL


def _big_store(path: Path, n: int = 300) -> Path:
    with MeasurementStore(path) as st:
        for i in range(n):
            st.add(Measurement("dev", "t", "0.27", "layer", f"L{i}", {"i": i}, median_s=1.0,
                               samples=tuple(float(j) for j in range(50))))
    return path


# -- read-only opening changes nothing ------------------------------------------------------------

def test_measurements_on_a_foreign_sqlite_file_leaves_it_untouched(tmp_path, capsys):
    from nasbnn_hw.cli import main
    f = _foreign(tmp_path / "other.db")
    before = f.read_bytes()
    assert main(["measurements", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0] and "not a nasbnn-hw measurement store" in err[0] and "x, y" in err[0]
    for ro in (True, False):  # refused for writing as well, before anything is created in it
        with pytest.raises(StoreError, match="has tables x, y"):
            MeasurementStore(f, readonly=ro)
    assert f.read_bytes() == before and not _is_wal(f) and _tables(f) == {"x", "y"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_read_only_open_of_an_older_store_reads_missing_tables_as_empty(tmp_path, capsys):
    from nasbnn_hw.cli import main
    old = tmp_path / "old.db"
    con = sqlite3.connect(str(old))
    con.executescript(SCHEMA.split(";")[0] + ";")       # a store from before rounds / reference / agreement
    con.execute("INSERT INTO measurements (device, target, tvm_version, kind, key, config, median_s, iqr_s, "
                "repeats, samples, created) VALUES ('dev','t','0.27','layer','L0','{}',0.002,0,3,'[0.002]',1.0)")
    con.commit()
    con.close()
    before = old.read_bytes()
    with MeasurementStore(old, readonly=True) as st:
        assert [m.key for m in st.query()] == ["L0"] and st.rounds(*K, "L0") == 1
        assert st.round_counts() == {} and st.agreement("dev") is None
        assert st.reference_baseline("dev", "t", "0.27", "ref") is None
        assert st.tuned_schedules("dev", "t", "0.27") == {} and st.tuned_counts() == {}
        assert st.summary()[0]["items"] == 1 and st.round_medians(*K, "L0") == [0.002]
        for write in (lambda: st.add(_m("L1")), lambda: st.add_round(_m("L0")),
                      lambda: st.add_agreement("dev", 3, 0.9, 1.0),
                      lambda: st.set_reference_baseline("dev", "t", "0.27", "ref", 1.0),
                      lambda: st.add_tuned_schedule("dev", "t", "0.27", "L0", {}, 1.0, 1.0, [])):
            with pytest.raises(StoreError, match="read-only"):
                write()
    assert main(["measurements", str(old)]) == 0 and "dev" in capsys.readouterr().out
    assert old.read_bytes() == before and not _is_wal(old) and _tables(old) == {"measurements"}
    with MeasurementStore(old) as st:                  # opened for writing, it gains the tables
        st.add_agreement("dev", 3, 0.9, 1.0)
    assert _tables(old) == {"measurements", "rounds", "reference", "agreement", "schedules"}


def test_read_only_open_sees_a_live_writer(tmp_path):
    db = tmp_path / "m.db"
    with MeasurementStore(db) as w:
        w.add(_m("L0"))
        with MeasurementStore(db, readonly=True) as r:
            w.add(_m("L1"))
            assert [m.key for m in r.query()] == ["L0", "L1"]


# -- what is not a store is refused at open ---------------------------------------------------------

def _random_bytes(p: Path) -> Path:
    p.write_bytes(os.urandom(8192))
    return p


def _truncated(p: Path) -> Path:
    _big_store(p)
    size = p.stat().st_size
    assert size > 8 * 4096
    with open(p, "r+b") as f:
        f.truncate(size // 2)
    return p


def _tiny(p: Path) -> Path:
    _big_store(p, 3)
    p.write_bytes(p.read_bytes()[:60])
    return p


def _wrong_columns(p: Path) -> Path:
    return _sqlite(p, "CREATE TABLE measurements (device, target)")


BAD = {"random bytes": (_random_bytes, "not an SQLite database"),
       "truncated store": (_truncated, "truncated or corrupt"),
       "store cut inside its header": (_tiny, "truncated or corrupt"),
       "measurements lacking columns": (_wrong_columns, "lacks columns id, tvm_version"),
       "directory": (lambda p: (p.mkdir(), p)[1], "is a directory")}


@pytest.mark.parametrize("readonly", [True, False], ids=["read-only", "write"])
@pytest.mark.parametrize("name", list(BAD))
def test_bad_files_are_refused_at_open_with_their_path(tmp_path, name, readonly):
    make, why = BAD[name]
    p = make(tmp_path / "bad.db")
    before = p.read_bytes() if p.is_file() else None
    with pytest.raises(StoreError, match=why) as e:
        MeasurementStore(p, readonly=readonly)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    assert (p.read_bytes() if p.is_file() else None) == before


@pytest.mark.parametrize("name", ["random bytes", "truncated store", "measurements lacking columns"])
def test_measurements_command_on_a_bad_file_prints_one_line(tmp_path, capsys, name):
    from nasbnn_hw.cli import main
    p = BAD[name][0](tmp_path / "bad.db")
    assert main(["measurements", str(p)]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasbnn-hw measurements: error:") and str(p) in err[0]
    assert "Traceback" not in out.err + out.out


def test_missing_file_read_only_and_read_only_file_for_writing(tmp_path):
    missing = tmp_path / "none.db"
    with pytest.raises(StoreError, match="does not exist") as e:
        MeasurementStore(missing, readonly=True)
    assert str(missing) in str(e.value) and not missing.exists()
    ro = _big_store(tmp_path / "ro.db", 2)
    ro.chmod(0o444)
    try:
        before = ro.read_bytes()
        with pytest.raises(StoreError, match="is read-only") as e:
            MeasurementStore(ro)
        assert str(ro) in str(e.value) and ro.read_bytes() == before
        with MeasurementStore(ro, readonly=True) as st:   # reading it is fine
            assert st.count() == 2
    finally:
        ro.chmod(0o644)


def test_empty_file_and_new_path_become_stores(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with MeasurementStore(empty, readonly=True) as st:      # reads as an empty store, stays 0 bytes
        assert st.query() == [] and st.summary() == []
    assert empty.stat().st_size == 0
    for p in (empty, tmp_path / "new" / "dir" / "m.db"):
        with MeasurementStore(p) as st:
            assert st.add(_m("L0")) and st.count() == 1


def test_sqlite_errors_from_queries_are_store_errors(tmp_path):
    st = MeasurementStore(tmp_path / "m.db")
    st._db.close()  # any sqlite3.Error on a query: here, a connection gone under the store
    with pytest.raises(StoreError, match="m.db"):
        st.query()
    with pytest.raises(StoreError, match="m.db"):
        st.add(_m("L0"))


def test_profile_with_an_unwritable_store_fails_before_the_device(tmp_path, capsys, monkeypatch):
    from nasbnn_hw.cli import profile as cli_profile
    from nasbnn_hw.cli import main
    opened = []
    monkeypatch.setattr(cli_profile, "_device", lambda *a, **kw: opened.append(a) or pytest.fail("device opened"))
    ro = _big_store(tmp_path / "ro.db", 2)
    ro.chmod(0o444)
    try:
        for bad in (ro, _foreign(tmp_path / "other.db")):
            before = bad.read_bytes()
            assert main(["profile", "--device", "local", "--layers", "--store", str(bad)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and str(bad) in err[0], err
            assert bad.read_bytes() == before
        assert main(["profile", "--device", "local", "--device", "rpi4", "--layers", "--store", str(ro)]) == 2
        assert str(ro) in capsys.readouterr().err
    finally:
        ro.chmod(0o644)
    assert opened == []


# -- rounds: two profilers on one store -----------------------------------------------------------

def _race(n_threads: int, work) -> list:
    barrier, out, errors = threading.Barrier(n_threads), [], []

    def run(i):
        try:
            out.append(work(i, barrier))
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return out


def _rounds_per_item(db: Path) -> dict[str, list[int]]:
    con = sqlite3.connect(str(db))
    try:
        got: dict[str, list[int]] = {}
        for key, rnd in con.execute("SELECT m.key, r.round FROM measurements m LEFT JOIN rounds r "
                                    "ON r.measurement = m.id ORDER BY m.key, r.round"):
            got.setdefault(key, []).append(rnd)
        return got
    finally:
        con.close()


def test_concurrent_add_round_never_exceeds_the_rounds_wanted(tmp_path):
    db = tmp_path / "m.db"
    MeasurementStore(db).close()
    keys = [f"L{i}" for i in range(12)]

    def profiler(i, barrier):
        with MeasurementStore(db) as st:  # its own connection, as a second process would have
            missing = {k: 2 - st.rounds(*K, k) for k in keys}   # both decide: every round is missing
            barrier.wait()
            return [st.add_round(_m(k, 1e-3 * (i + 1)), limit=2) for r in range(2) for k in keys if missing[k] > r]
    results = _race(2, profiler)
    assert sum(n is not None for res in results for n in res) == 2 * len(keys)   # the rest stored nothing
    assert _rounds_per_item(db) == {k: [0, 1] for k in keys}


def test_two_profilers_with_rounds_2_store_exactly_2_rounds(tmp_path, monkeypatch):
    from nasbnn_hw.profiling import profiler
    from nasbnn_hw.deploy.kernels.targets import TargetSpec
    from nasbnn_hw.profiling.runners.base import Timing
    monkeypatch.setattr(profiler, "_tvm_version", lambda: "0.27")
    spec = TargetSpec("fake", {"kind": "llvm"}, key='{"target":{"kind":"llvm"}}')
    db = tmp_path / "m.db"
    MeasurementStore(db).close()

    class Runner:
        def __init__(self, barrier):
            self.barrier = barrier

        def time_library(self, lib, args, *, warmup, repeat, number=1, return_outputs=False):
            if self.barrier is not None:  # both runs have planned their rounds before either stores one
                self.barrier.wait()
                self.barrier = None
            time.sleep(0.002)
            return Timing((1e-3,) * repeat)

    def build(tmp: Path):
        lib = tmp / f"{threading.get_ident()}-{time.perf_counter_ns()}.so"
        lib.write_bytes(b"")
        return lib, []
    items = [(f"L{i}", {"i": i}, build) for i in range(8)]

    def run(i, barrier):
        with MeasurementStore(db) as st:
            return profiler._run(items, "layer", "dev", st, Runner(barrier), spec,
                                 profiler.TimingSettings(warmup=0, repeat=3, number=1), False, tmp_path, True, 2)
    reports = _race(2, run)
    assert _rounds_per_item(db) == {k: [0, 1] for k, _, _ in items}
    assert sum(len(r.measured) for r in reports) == 2 * len(items)


# -- one target, one key --------------------------------------------------------------------------

def test_canonical_target_spellings():
    new = '{"target":{"kind":"llvm","mcpu":"znver3"}}'
    for old in ('{"kind":"llvm","tag":"","keys":["cpu"],"mcpu":"znver3"}', "llvm -keys=cpu -mcpu=znver3",
                '{"target": {"mcpu": "znver3", "kind": "llvm"}}'):
        assert canonical_target(old) == new
    cuda_old = ('{"kind":"cuda","tag":"","keys":["cuda","gpu"],"host":{"kind":"llvm","tag":"","keys":["cpu"],'
                '"feature.is_aarch64":true,"mtriple":"aarch64-linux-gnu"},"max_num_threads":1024,'
                '"thread_warp_size":32,"arch":"sm_87"}')
    assert canonical_target(cuda_old) == ('{"host":{"kind":"llvm","mtriple":"aarch64-linux-gnu"},'
                                          '"target":{"arch":"sm_87","kind":"cuda"}}')
    assert canonical_target(new) != canonical_target('{"target":{"kind":"llvm","mcpu":"cortex-a72"}}')
    for other in ("t", "", "{not json", "[1, 2]", '{"a": 1}'):
        assert canonical_target(other) == other


def test_api_local_and_the_local_profile_share_one_key_and_old_stores_still_read(tmp_path):
    from cost_models._store import load_device_measurements
    from device_profiles import load_profile
    from nasbnn_hw.deploy.kernels import resolve_target
    api, prof = resolve_target("local"), resolve_target(load_profile("local", []))
    key = api.description()
    assert key == prof.description() == canonical_target(key)
    legacy = str(api.tvm_target())  # what the API stored before: TVM's own text of the target
    assert legacy != key
    cfg = LayerConfig("stem", 3, 8, 3, 1, 2, 16)  # a stem: its rows are read on every target (no schedule)
    db = tmp_path / "old.db"
    con = sqlite3.connect(str(db))
    con.executescript(SCHEMA)
    con.execute("INSERT INTO measurements (device, target, tvm_version, kind, key, config, median_s, iqr_s, "
                "repeats, samples, created) VALUES ('local',?,'0.27','layer',?,?,0.002,0,3,'[0.002]',1.0)",
                (legacy, cfg.key(), json.dumps(cfg.to_dict())))
    con.execute("INSERT INTO reference VALUES ('local',?,'0.27','ref',5e-6,1.0)", (legacy,))
    con.commit()
    con.close()
    before = db.read_bytes()
    with MeasurementStore(db, readonly=True) as st:
        item = ("local", key, "0.27", "layer", cfg.key())
        assert st.has(*item) and st.rounds(*item) == 1
        assert [m.target for m in st.query(target=key)] == [key] and st.query()[0].target == key
        assert st.reference_baseline("local", key, "0.27", "ref") == 5e-6
        assert st.summary()[0]["target"] == key
    assert db.read_bytes() == before                   # read as the new spelling, not rewritten
    for t in (key, legacy, None):
        data = load_device_measurements(str(db), "local", target=t)
        assert list(data.layers) == [cfg.key()] and data.target == key
    with MeasurementStore(db) as st:                   # writers find the old row under the new key
        assert not st.add(Measurement("local", key, "0.27", "layer", cfg.key(), {}, median_s=1.0))
        assert st.add_round(Measurement("local", key, "0.27", "layer", cfg.key(), {}, median_s=0.004), limit=2) == 1
        assert st.add_round(Measurement("local", key, "0.27", "layer", cfg.key(), {}, median_s=0.004), limit=2) is None
        assert st.set_reference_baseline("local", key, "0.27", "ref", 1.0) == 5e-6
        assert st.count() == 1
    con = sqlite3.connect(str(db))
    assert con.execute("SELECT target FROM measurements").fetchall() == [(legacy,)]
    assert con.execute("SELECT COUNT(*) FROM reference").fetchone() == (1,)
    con.close()
