"""Kernel schedules per device: the candidate space, `tune` (resumable, checked against the default's
output), the store's winners, and builds and measurements that use them without mixing schedules."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from nasbnn_hw.cli import main
from nasbnn_hw.core.layers import LayerConfig, arch_layers
from nasbnn_hw.core.space import get_space
from nasbnn_hw.deploy.kernels import schedule as S
from nasbnn_hw.deploy.kernels.layer import build_layer
from nasbnn_hw.deploy.kernels.targets import resolve_target
from nasbnn_hw.profiling.profiler import TimingSettings, enumerate_layers, profile_layers, profile_subnets, \
    random_subnets
from nasbnn_hw.profiling.store import MeasurementStore
from nasbnn_hw.profiling.tuning import ScheduleBook, tune_layers

pytest_plugins = ["ssh_fixtures"]     # fixtures: ssh_board, ssh_client_key, ssh_known_hosts

FAST = TimingSettings(warmup=1, repeat=3, min_sample_ms=1.0)
LOCAL = resolve_target("local")


def test_schedule_values_are_checked_in_one_line():
    with pytest.raises(S.ScheduleError, match="acc_dtype='int8' not supported"):
        S.CpuSchedule(7, 16, 8, "int8")
    with pytest.raises(S.ScheduleError, match="vector=16 must be <= channels=8"):
        S.CpuSchedule(7, 8, 16, "int64")
    with pytest.raises(S.ScheduleError, match="pixels=0 must be a positive integer"):
        S.CpuSchedule(0, 8, 8, "int64")
    with pytest.raises(S.ScheduleError, match="is not a schedule"):
        S.CpuSchedule.from_dict({"pixels": 7, "tile": 3})
    s = S.CpuSchedule(4, 32, 8, "int32")
    assert S.CpuSchedule.from_dict(s.to_dict()) == s and s.fingerprint() == "p4c32v8-int32-pm131072"
    assert S.CpuSchedule(2, 8, 1, "int64").popcount == "scalar" and s.popcount == "vector"


def test_candidates_start_with_the_default_and_never_overflow():
    cfg = LayerConfig("bconv", 256, 256, 3, 1, 1, 14)
    cands = S.candidate_schedules(LOCAL, cfg)
    assert cands[0] == S.default_schedule(LOCAL, cfg) and len(cands) >= 8
    assert len({c.effective(cfg) for c in cands}) == len(cands)  # no two compile to the same code
    assert {c.acc_dtype for c in cands} == {"int64", "int32", "int16"} and {c.popcount for c in cands} >= {
        "scalar", "vector", "nibble"}  # every x86-64 CPU these run on has AVX2 (and some AMX: "amx")
    wide = LayerConfig("bconv", 2048, 2048, 5, 1, 1, 7)  # 25 x 2048 popcounts can exceed int16
    assert all(c.acc_dtype != "int16" for c in S.candidate_schedules(LOCAL, wide))
    with pytest.raises(S.ScheduleError, match="int16 accumulator can overflow"):
        build_layer(wide, "local", schedule=S.CpuSchedule(7, 16, 8, "int16"))
    arm = S.candidate_schedules(resolve_target("rpi4"), cfg)
    assert arm[0] == S.BYTE_ARM and set(arm).isdisjoint(S.X86_CANDIDATES[1:])
    assert S.candidate_schedules(resolve_target("cuda-sm80"), cfg) == []
    assert S.candidate_schedules(LOCAL, LayerConfig("stem", 3, 16, 3, 1, 2, 32)) == []


@pytest.mark.parametrize("cfg", [LayerConfig("bconv", 64, 64, 3, 2, 2, 8), LayerConfig("bconv", 48, 96, 1, 1, 1, 7),
                                 LayerConfig("bconv", 40, 40, 5, 1, 1, 6)])
def test_every_candidate_computes_the_default_result(cfg):
    ref = build_layer(cfg, "local").run()
    for s in S.candidate_schedules(LOCAL, cfg)[1:]:
        np.testing.assert_array_equal(build_layer(cfg, "local", schedule=s).run(), ref, err_msg=s.fingerprint())


def test_tune_stores_winners_resumes_and_is_heaviest_first(tmp_path):
    space = get_space("small16")
    with MeasurementStore(tmp_path / "m.db") as st:
        first = tune_layers(space, "local", st, timing=FAST, limit=1, rounds=2, progress=False)
        assert len(first.tuned) == 1 and not first.failed
        r = first.tuned[0]
        heaviest = max((c for c in enumerate_layers(space) if c.kind == "bconv"),
                       key=lambda c: c.resolution ** 2 * c.out_channels * c.in_channels // c.groups * c.kernel ** 2)
        assert r["layer"] == heaviest.key() and r["candidates"] >= 5
        assert r["best_s"] <= r["default_s"]
        again = tune_layers(space, "local", st, timing=FAST, limit=2, rounds=1, progress=False)
        assert again.skipped == 1 and len(again.tuned) == 1 and again.tuned[0]["layer"] != r["layer"]
        rows = st.tuned_schedules("local", LOCAL.description(), _version())
        assert set(rows) == {r["layer"], again.tuned[0]["layer"]}
        row = rows[r["layer"]]
        assert len(row["trials"]) == r["candidates"] and all(t["median_s"] > 0 for t in row["trials"])
        assert S.CpuSchedule.from_dict(row["schedule"]).fingerprint() == r["schedule"]


def _version():
    import tvm
    return str(tvm.__version__)


class _Corrupting:
    """A local runner that returns a wrong output for one candidate library (`tune-1.so`)."""

    def __init__(self):
        from nasbnn_hw.profiling.runners.local import LocalRunner
        self.inner = LocalRunner()

    def time_library(self, lib_path, args, **kw):
        t = self.inner.time_library(lib_path, args, **kw)
        if t.outputs is not None and str(lib_path).endswith("tune-1.so"):
            from nasbnn_hw.profiling.runners.base import Timing
            return Timing(t.samples, (t.outputs[0] + 1,))
        return t

    def close(self):
        self.inner.close()


def test_a_candidate_with_another_result_is_rejected(tmp_path):
    cfg = LayerConfig("bconv", 64, 64, 3, 1, 1, 8)
    with MeasurementStore(tmp_path / "m.db") as st:
        rep = tune_layers(get_space("small16"), "local", st, _Corrupting(), layers=[cfg], timing=FAST, rounds=1,
                          progress=False)
        row = st.tuned_schedules("local", LOCAL.description(), _version())[cfg.key()]
    bad = S.candidate_schedules(LOCAL, cfg)[1].fingerprint()
    trial = next(t for t in row["trials"] if t["schedule"] == bad)
    assert "differs" in trial["rejected"] and trial["median_s"] is None
    assert rep.tuned[0]["schedule"] != bad


def test_tuned_schedules_are_built_and_never_mixed_with_other_measurements(tmp_path):
    space = get_space("small16")
    cfg = LayerConfig("bconv", 16, 16, 3, 1, 1, 8)
    other = S.CpuSchedule(2, 8, 1, "int64")  # the scalar-popcount candidate, surely not the default
    db = tmp_path / "m.db"
    with MeasurementStore(db) as st:
        profile_layers(space, "local", st, timing=FAST, layers=[cfg], progress=False)
        archs = random_subnets(space, 2, seed=3)
        profile_subnets(space, 0, "local", st, archs=archs, timing=FAST, progress=False)
        old_keys = {m.key for m in st.query(device="local")}
        book0 = ScheduleBook.load(st, "local", "local")
        assert book0.layer_key(cfg) in old_keys and book0.subnet_key(archs[0], space) in old_keys
        # the winner of a tune (planted: which schedule wins depends on the machine)
        st.add_tuned_schedule("local", LOCAL.description(), _version(), cfg.key(), other.to_dict(), 1e-6, 2e-6, [])
        book = ScheduleBook.load(st, "local", "local")
        untuned = LayerConfig("bconv", 24, 24, 3, 1, 1, 8)
        assert book(cfg) == other and book(untuned) == S.default_schedule(LOCAL, untuned)
        rep = profile_layers(space, "local", st, timing=FAST, layers=[cfg], progress=False)
        assert rep.measured == [f"{cfg.key()} @{other.fingerprint()}"]  # measured again, under its own key
        with_layer = [a for a in random_subnets(space, 40, seed=5)
                      if cfg in arch_layers(a, space)][:1]
        assert with_layer, "no subnet of small16 uses the planted layer"
        profile_subnets(space, 0, "local", st, archs=with_layer + archs[:1], timing=FAST, progress=False)
        new = {m.key: m for m in st.query(device="local")}
    key = book.subnet_key(with_layer[0], space)
    assert " @" in key and new[key].config["schedule_id"] == key.split(" @")[1]
    from cost_models._store import load_device_measurements
    dm = load_device_measurements(db, "local")
    assert dm.layers[cfg.key()].key == f"{cfg.key()} @{other.fingerprint()}"   # only the current schedule's row
    used = {m.key for m in dm.subnets}
    assert key in used and book0.subnet_key(with_layer[0], space) != key
    # a subnet without the tuned layer keeps its key and its row
    if cfg not in arch_layers(archs[0], space):
        assert book0.subnet_key(archs[0], space) in used
    # the schedule changes the code, never the result
    from nasbnn_hw.deploy.tvm_net import compile_random_subnet
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)
    a = compile_random_subnet(with_layer[0], space, "local", seed=1)
    b = compile_random_subnet(with_layer[0], space, "local", seed=1, schedules=book)
    np.testing.assert_allclose(b(x), a(x), rtol=1e-6, atol=1e-6)


def test_keys_stay_as_before_where_the_schedule_is_the_legacy_one():
    """Stores written before schedules existed hold bare keys: a layer whose default is the legacy schedule
    (AVX-512 where dense rows save nothing; NEON on layers the byte strategy does not cover) keeps them;
    AVX2's, NEON's, the dense defaults and the tiled CUDA kernels name themselves, so legacy rows are not
    mixed with them."""
    space = get_space("small16")
    cfg, arch = LayerConfig("bconv", 16, 16, 3, 1, 1, 8), random_subnets(space, 1, seed=1)[0]
    book = ScheduleBook(resolve_target({"kind": "llvm", "mcpu": "icelake-server"}))
    wide = LayerConfig("bconv", 64, 64, 3, 1, 1, 8)
    assert not book.all_legacy and book.layer_key(wide) == wide.key()      # 64 channels: nothing to save
    assert book.layer_key(cfg) == f"{cfg.key()} @{S.DENSE_X86.fingerprint()}"   # a 3 x 16-bit row in one word
    assert book.subnet_key(arch, space).startswith(arch.to_json() + " @")
    gpu = ScheduleBook(resolve_target("cuda-sm80"))   # the tiled CUDA kernels name themselves (stem, binary)
    head = LayerConfig("head", 64, 10, 1, 1, 1, 1)
    assert not gpu.all_legacy and gpu.layer_key(cfg) == f"{cfg.key()} @{S.GPU_SCHEDULE_ID}" \
        and gpu.layer_key(head) == head.key() and gpu.subnet_key(arch, space).startswith(arch.to_json() + " @")
    assert gpu.layer_config(cfg)["schedule"] == S.GPU_SCHEDULE_ID and "schedule" not in gpu.layer_config(head)
    arm = ScheduleBook(resolve_target("rpi4"))
    assert not arm.all_legacy and arm.layer_key(cfg) == f"{cfg.key()} @byte-p2c128v16-int16-pm131072"
    narrow = LayerConfig("bconv", 24, 24, 3, 1, 1, 8)
    assert arm.layer_key(narrow) == narrow.key() and arm.subnet_key(arch, space).startswith(arch.to_json() + " @")
    avx2 = ScheduleBook(resolve_target({"kind": "llvm", "mcpu": "haswell"}))   # an Intel core: 7 x 32 lookups
    assert avx2(wide) == S.NIBBLE_X86_32 and avx2.layer_key(wide) == f"{wide.key()} @nib-p7c32v32-int16-pm131072"
    zen = ScheduleBook(resolve_target({"kind": "llvm", "mcpu": "znver3"}))
    assert zen(wide) == S.NIBBLE_X86 and zen.layer_key(wide) == f"{wide.key()} @nib-p7c64v32-int16-pm131072"
    assert avx2(cfg) == avx2(narrow) == S.DENSE_AVX2 and avx2.layer_key(narrow) == f"{narrow.key()} @{S.DENSE_AVX2.fingerprint()}"
    one = LayerConfig("bconv", 24, 24, 1, 1, 1, 8)
    assert avx2(one) == S.AVX2_X86 and avx2.layer_key(one) == f"{one.key()} @{S.AVX2_X86.fingerprint()}"
    assert avx2.subnet_key(arch, space).startswith(arch.to_json() + " @")
    assert avx2.layer_key(LayerConfig("stem", 1, 16, 3, 1, 1, 16)) == "stem_i1_o16_k3_g1_s1_r16"


def test_a_store_without_the_schedules_table_still_opens(tmp_path):
    db = tmp_path / "old.db"
    MeasurementStore(db).close()
    con = sqlite3.connect(db)
    con.execute("DROP TABLE schedules")
    con.commit()
    con.close()
    with MeasurementStore(db, readonly=True) as st:
        assert st.tuned_schedules("local", LOCAL.description(), _version()) == {}
    assert len(ScheduleBook.load(db, "local", "local")) == 0


def test_tune_cli(checkpoint, tmp_path, capsys):
    db = tmp_path / "m.db"
    assert main(["tune", "--space", "small16", "--store", str(db), "--limit", "1", "--rounds", "1", "--repeat",
                 "3", "--quiet"]) == 0
    assert "1 layer(s) tuned" in capsys.readouterr().out
    assert main(["measurements", str(db)]) == 0
    assert "local: 1 layer(s) with tuned kernel schedules" in capsys.readouterr().out
    assert main(["tune", "--device", "jetson-orin", "--space", "small16", "--store", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a GPU" in err[0]
    out = tmp_path / "net.so"
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--format", "tvm",
                 "--store", str(db), "--out", str(out)]) == 0
    o = capsys.readouterr().out
    assert "kernel schedules: 1 tuned layer(s) of device 'local'" in o and "same top-1: True" in o
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--format", "tvm",
                 "--store", str(tmp_path / "none.db"), "--out", str(tmp_path / "n.so")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_tune_over_ssh_uses_the_board_and_its_store_key(ssh_board, ssh_client_key, ssh_known_hosts, tmp_path):
    """Tuning runs each candidate on the board (outputs checked there), like profiling does."""
    from ssh_fixtures import profile_for

    from nasbnn_hw.profiling.runners import get_runner
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts)
    cfg = LayerConfig("bconv", 32, 32, 3, 1, 1, 8)
    with MeasurementStore(tmp_path / "m.db") as st, get_runner(prof) as runner:
        rep = tune_layers(get_space("small16"), prof.name, st, runner, prof, layers=[cfg], rounds=1,
                          timing=FAST, progress=False)
        assert len(rep.tuned) == 1 and not rep.failed
        spec = resolve_target(prof)
        rows = st.tuned_schedules(prof.name, spec.description(), _version())
        assert list(rows) == [cfg.key()] and all(t["median_s"] for t in rows[cfg.key()]["trials"])
        assert st.tuned_schedules("local", LOCAL.description(), _version()) == {}
        assert len(ScheduleBook.load(st, prof.name, prof)) == 1
