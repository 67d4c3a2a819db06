"""The profiler: exact layer enumeration, stored measurements, skip-if-stored, resume after SIGKILL."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasbnn_hw.core.layers import LayerConfig, arch_layers
from nasbnn_hw.profiling.profiler import (ProfileError, TimingSettings, _TimeEvaluatorRunner, enumerate_layers,
                                profile_layers, profile_subnets, random_subnets)
from nasbnn_hw.core.sampling import sample_uniform
from nasbnn_hw.core.space import SearchSpace, get_space
from nasbnn_hw.profiling.store import MeasurementStore

TINY = {"name": "tiny", "resolution": 8, "in_channels": 1, "num_classes": 4, "stage": [
    {"channels": [8], "depth": [1], "kernel": [3], "groups1": [1], "groups2": [1], "stride": 2},
    {"channels": [8, 16], "depth": [1, 2], "kernel": [3], "groups1": [1], "groups2": [1], "stride": 1},
    {"channels": [16, 24], "depth": [1], "kernel": [3, 5], "groups1": [1, 2], "groups2": [1], "stride": 2},
]}
FAST = TimingSettings(warmup=1, repeat=3, number=2)


def _brute_force_layers(space: SearchSpace) -> set[LayerConfig]:
    out = set()
    for depths in itertools.product(*(st.depth for st in space.stages)):
        per_block = [st.channels for st, d in zip(space.stages, depths) for _ in range(d)]
        for widths in itertools.product(*per_block):
            if any(b < a for a, b in zip(widths, widths[1:])):
                continue
            it = iter(widths)
            stages = [[next(it) for _ in range(d)] for d in depths]
            res = space.resolution
            stem = space.stages[0]
            out |= {LayerConfig("stem", space.in_channels, stages[0][0], k, 1, stem.stride, res) for k in stem.kernel}
            res //= stem.stride
            c = stages[0][0]
            for si in range(1, len(space.stages)):
                st = space.stages[si]
                for bi, w in enumerate(stages[si]):
                    s = st.stride if bi == 0 else 1
                    out |= {LayerConfig("bconv", c, c, k, g, s, res) for k in st.kernel for g in st.groups1}
                    res //= s
                    out |= {LayerConfig("bconv", c, w, 1, g, 1, res) for g in st.groups2}
                    c = w
            out.add(LayerConfig("head", c, space.num_classes, 1, 1, 1, res))
    return out


@pytest.mark.parametrize("space", [SearchSpace.from_dict(TINY), get_space("small16")], ids=["tiny", "small16"])
def test_enumerate_layers_is_exact(space):
    assert set(enumerate_layers(space)) == _brute_force_layers(space)


def test_enumerate_layers_covers_sampled_imagenet_archs():
    space = get_space("imagenet")
    layers = set(enumerate_layers(space))
    rng = random.Random(0)
    for _ in range(300):
        assert set(arch_layers(sample_uniform(space, rng), space)) <= layers
    assert len(layers) == len(enumerate_layers(space))


def test_random_subnets_are_distinct_and_reproducible():
    space = get_space("small16")
    a, b = random_subnets(space, 6, seed=3), random_subnets(space, 6, seed=3)
    assert a == b and len(set(a)) == 6
    with pytest.raises(ProfileError):
        random_subnets(space, -1)


def _book():
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    from nasbnn_hw.profiling.tuning import ScheduleBook
    return ScheduleBook(resolve_target("local"))


BOOK = _book()   # no tuned layers: the target's defaults, whose keys name them where they are not the legacy tile
KEY = BOOK.layer_key


def test_profile_layers_then_skip(tmp_path):
    from cost_models._store import layer_from_config
    from nasbnn_hw.deploy.kernels.schedule import default_schedule
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    space = SearchSpace.from_dict(TINY)
    layers = enumerate_layers(space)[:4]
    with MeasurementStore(tmp_path / "m.db") as store:
        rep = profile_layers(space, "cpu-test", store, _TimeEvaluatorRunner(), layers=layers, timing=FAST,
                             progress=False)
        assert len(rep.measured) == 4 and rep.skipped == 0 and not rep.failed
        rows = store.query(device="cpu-test", kind="layer")
        assert sorted(r.key for r in rows) == sorted(KEY(l) for l in layers)
        for r in rows:
            assert KEY(layer_from_config(r.config)) == r.key
            if r.config["kind"] == "bconv":  # the schedule it was built with travels with it
                cfg = layer_from_config(r.config)
                assert r.config["schedule"] == default_schedule(resolve_target("local"), cfg).fingerprint()
            assert len(r.samples) == 3 and r.median_s > 0 and r.iqr_s >= 0 and r.repeats == 3
        rep2 = profile_layers(space, "cpu-test", store, _TimeEvaluatorRunner(), layers=layers, timing=FAST,
                              progress=False)
        assert rep2.measured == [] and rep2.skipped == 4
        assert store.count(device="cpu-test") == 4


def test_store_rounds_keep_every_measurement_and_the_median_of_rounds(tmp_path):
    from nasbnn_hw.profiling.store import Measurement
    k = ("d", "t", "0.27", "layer", "L1")
    with MeasurementStore(tmp_path / "m.db") as store:
        assert store.rounds(*k) == 0 and store.round_medians(*k) == []
        assert store.add_round(Measurement(*k, {"x": 1}, median_s=3.0, iqr_s=0.1, repeats=3, samples=(3.0,) * 3)) == 0
        assert store.rounds(*k) == 1 and store.round_medians(*k) == [3.0]
        assert store.add_round(Measurement(*k, {"x": 1}, median_s=1.0, iqr_s=0.1, repeats=3, samples=(1.0,) * 3)) == 1
        assert store.query()[0].median_s == 2.0            # median of 3.0 and 1.0
        assert store.add_round(Measurement(*k, {"x": 1}, median_s=1.5, iqr_s=0.1, repeats=3, samples=(1.5,) * 3)) == 2
        assert store.rounds(*k) == 3 and store.round_medians(*k) == [3.0, 1.0, 1.5]
        (row,) = store.query()
        assert row.median_s == 1.5 and row.samples == (3.0,) * 3 and store.count() == 1


def test_measurements_command_summarises_and_exports(tmp_path, capsys):
    import csv

    from nasbnn_hw.cli import main
    from nasbnn_hw.profiling.store import Measurement
    db = tmp_path / "m.db"
    with MeasurementStore(db) as store:
        for i in range(3):
            store.add(Measurement("board", "t", "0.27", "layer", f"L{i}", {}, median_s=(i + 1) * 1e-3))
        store.add_round(Measurement("board", "t", "0.27", "layer", "L0", {}, median_s=3e-3))
        store.add(Measurement("board", "t", "0.27", "subnet", "A", {"space": "small", "resolution": 28},
                              median_s=0.5))
        store.add(Measurement("other", "t", "0.27", "layer", "L0", {}, median_s=1.0))
        store.add_agreement("board", 8, 0.7, 1.0, largest_swap=0.04)   # close swaps only: agrees
        store.add_agreement("other", 8, 0.95, 0.5, largest_swap=0.0)   # half of them moved by 10 % or more
    assert main(["measurements", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("board: agrees with itself: 8 subnets measured twice, largest swap 4.0 %")
    assert lines[-1].startswith("other: does NOT agree with itself: ") and "50 % of them within ±10 %" in lines[-1]
    lines = lines[:-2]
    assert len(lines) == 4 and lines[0].split()[:3] == ["device", "kind", "space"]
    board_layers = next(l for l in lines if l.startswith("board") and " layer " in l).split()
    assert board_layers[2:5] == ["-", "3", "1x2"] and board_layers[5] == "2"     # L0: median of 1 and 3 ms
    assert any("small@28" in l for l in lines)
    assert main(["measurements", str(db), "--device", "other"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    out = tmp_path / "m.csv"
    assert main(["measurements", str(db), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and {r["rounds"] for r in rows if r["key"] == "L0" and r["device"] == "board"} == {"2"}
    assert main(["measurements", str(tmp_path / "missing.db")]) == 2
    assert "no measurement store at" in capsys.readouterr().err


def test_profile_rounds_are_interleaved_and_resumable(tmp_path):
    space = SearchSpace.from_dict(TINY)
    layers = enumerate_layers(space)[:3]
    with MeasurementStore(tmp_path / "m.db") as store:
        rep = profile_layers(space, "cpu-test", store, _TimeEvaluatorRunner(), layers=layers, timing=FAST,
                             progress=False, rounds=2)
        assert len(rep.measured) == 6 and rep.summary().startswith("3 measured (6 measurements)")
        rows = store.query()
        assert len(rows) == 3 and all(store.rounds(r.device, r.target, r.tvm_version, "layer", r.key) == 2
                                      for r in rows)
        con = sqlite3.connect(str(tmp_path / "m.db"))
        created = dict(con.execute("SELECT round, MAX(created) FROM rounds GROUP BY round"))
        first_of_1 = con.execute("SELECT MIN(created) FROM rounds WHERE round=1").fetchone()[0]
        con.close()
        assert created[0] <= first_of_1            # every layer's round 0 before any layer's round 1
        for r in rows:
            meds = store.round_medians(r.device, r.target, r.tvm_version, "layer", r.key)
            assert len(meds) == 2 and r.median_s == pytest.approx(sum(meds) / 2)
        again = profile_layers(space, "cpu-test", store, _TimeEvaluatorRunner(), layers=layers, timing=FAST,
                               progress=False, rounds=2)
        assert again.measured == [] and again.skipped == 3
        more = profile_layers(space, "cpu-test", store, _TimeEvaluatorRunner(), layers=layers, timing=FAST,
                              progress=False, rounds=3)
        assert sorted(more.measured) == sorted(KEY(l) for l in layers) and store.count() == 3
        with pytest.raises(ProfileError, match="rounds must be an integer >= 1"):
            profile_layers(space, "cpu-test", store, _TimeEvaluatorRunner(), layers=layers, rounds=0)


class _NoisyRunner:
    """A device where one library (`noisy` in its path) scatters by +-30 % from sample to sample and every
    other one, the reference included, takes a fixed time."""

    def __init__(self, noisy: str):
        self.noisy, self.rng = noisy, random.Random(5)

    def _t(self, lib) -> float:
        return 1e-5 * (1 + (self.rng.uniform(0, 0.6) if self.noisy in str(lib) else 0))

    def time_library(self, lib_path, args, *, warmup, repeat, number=1, return_outputs=False):
        from nasbnn_hw.profiling.runners.base import Timing
        return Timing(tuple(self._t(lib_path) for _ in range(repeat)))

    def time_interleaved(self, items, *, warmup, repeat):
        return [tuple(self._t(lib) for _ in range(repeat)) for lib, _a, _n in items]


def test_imprecise_items_take_further_rounds_up_to_max_rounds_and_resume(tmp_path):
    """With `precision`, an item whose kept percentile is not yet within +-precision (95 % confidence) after
    its base rounds is visited again, up to max_rounds; a steady one stops at the base rounds. A later run
    with a larger max_rounds continues the imprecise item only."""
    from nasbnn_hw.profiling.timing import quantile_ci
    space = SearchSpace.from_dict(TINY)
    layers = enumerate_layers(space)[:2]
    noisy = KEY(layers[1])
    noisy_lib = layers[1].key()     # the library's file name (the store key may add the schedule)
    timing = TimingSettings(warmup=1, repeat=3, number=1, reference=True, rounds=2, precision=0.01, max_rounds=6)
    with MeasurementStore(tmp_path / "m.db") as store:
        rep = profile_layers(space, "cpu-test", store, _NoisyRunner(noisy_lib), layers=layers, timing=timing,
                             progress=False)
        n = {r.key: store.rounds(r.device, r.target, r.tvm_version, "layer", r.key) for r in store.query()}
        assert n == {KEY(layers[0]): 2, noisy: 6} and len(rep.measured) == 8
        row = next(r for r in store.query() if r.key == noisy)
        pooled = [x for r in store.round_samples(row.device, row.target, row.tvm_version, "layer", noisy) for x in r]
        assert len(pooled) == 18 and quantile_ci(pooled) > 0.01
        more = profile_layers(space, "cpu-test", store, _NoisyRunner(noisy_lib), layers=layers,
                              timing=dataclasses.replace(timing, max_rounds=8), progress=False)
        assert more.measured == [noisy, noisy] and more.skipped == 1
    with pytest.raises(ProfileError, match="precision=0.01 needs the reference protocol"):
        TimingSettings(precision=0.01)
    assert TimingSettings(reference=True, rounds=20, precision=0.01).round_limit(20) == 60
    assert TimingSettings(reference=True, rounds=20).round_limit(20) == 20


def test_quantile_ci_narrows_with_more_samples_and_is_zero_for_a_steady_item():
    from nasbnn_hw.profiling.timing import quantile_ci
    rng = random.Random(1)
    few, many = ([1 + rng.expovariate(10) for _ in range(n)] for n in (30, 300))
    assert 0 < quantile_ci(many) < quantile_ci(few) < 1
    assert quantile_ci([2.0] * 20) == 0.0 and quantile_ci([1.0]) == math.inf


def test_profile_subnets_stores_arch_json(tmp_path):
    space = SearchSpace.from_dict(TINY)
    with MeasurementStore(tmp_path / "m.db") as store:
        rep = profile_subnets(space, 2, "cpu-test", store, _TimeEvaluatorRunner(), timing=FAST, progress=False)
        assert len(rep.measured) == 2
        rows = store.query(kind="subnet")
        archs = random_subnets(space, 2)
        assert [r.key for r in rows] == [BOOK.subnet_key(a, space) for a in archs]
        cfg = rows[0].config
        assert {k: cfg[k] for k in ("space", "resolution", "arch")} == {"space": "tiny", "resolution": 8,
                                                                         "arch": archs[0].to_dict()}
        assert profile_subnets(space, 2, "cpu-test", store, _TimeEvaluatorRunner(), timing=FAST,
                               progress=False).skipped == 2


def test_only_cache_heavy_spaces_take_a_reference_subnet():
    from nasbnn_hw.profiling.profiler import uses_subnet_reference
    on = TimingSettings(reference=True, subnet_reference=True)
    assert uses_subnet_reference(get_space("imagenet").with_resolution(64), on)
    assert not uses_subnet_reference(get_space("small16"), on) and not uses_subnet_reference(get_space("small"), on)
    assert not uses_subnet_reference(get_space("imagenet"), TimingSettings(reference=True))


@pytest.fixture
def any_space_takes_a_reference_subnet(monkeypatch):
    import nasbnn_hw.profiling.profiler as prof
    monkeypatch.setattr(prof, "SUBNET_REFERENCE_MIN_BYTES", 0)


def test_subnets_are_timed_beside_a_reference_subnet_of_their_space(tmp_path, any_space_takes_a_reference_subnet):
    """Under `subnet_reference` whole subnets are bracketed by a fixed subnet of their space: its baseline
    is kept in the store under its own key, every item records it, and `measure_again` reuses that baseline
    (the same units: the second measurement lands near the first)."""
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.profiling.profiler import measure_again, subnet_reference_of
    from nasbnn_hw.profiling.tuning import ScheduleBook
    space = SearchSpace.from_dict(TINY)
    # subnets of a few microseconds: enough samples that two campaigns' pooled estimates are comparable (with
    # 3 samples x 2 rounds one run in six measured 1.0 against 2.1 us)
    timing = TimingSettings(warmup=1, repeat=5, min_sample_ms=0.2, reference=True, rounds=3, subnet_reference=True)
    key = subnet_reference_of(space, resolve_target("local"), ScheduleBook.load(None, "cpu-test", "local"))[0]
    assert key.startswith("subnet:tiny@8:")
    archs = random_subnets(space, 2)
    with MeasurementStore(tmp_path / "m.db") as store:
        rep = profile_subnets(space, 0, "cpu-test", store, archs=archs, timing=timing, progress=False)
        assert len(set(rep.measured)) == 2 and not rep.failed
        rows = store.query(kind="subnet")
        assert [r.config["reference"] for r in rows] == [key, key]
        assert all(len(r.samples) == 5 for r in rows)
        refs = dict(store._db.execute("SELECT layer, baseline_s FROM reference").fetchall())
        assert list(refs) == [key] and refs[key] > 0        # the reference layer was never needed
        first = [r.median_s for r in rows]
    again = measure_again(space, archs, "cpu-test", timing=timing, baseline_from=tmp_path / "m.db")
    assert all(0.5 < b / a < 2.0 for a, b in zip(first, again)), (first, again)


def test_measure_again_in_a_fresh_process_lands_near_the_first_measurement(tmp_path):
    """The self-agreement check's second measurement in a new process (its own stack and heap placement),
    with the store's reference baseline: the same units as the first."""
    from nasbnn_hw.profiling.profiler import measure_again
    from nasbnn_hw.profiling.runners.local import LocalRunner
    space = SearchSpace.from_dict(TINY)
    timing = TimingSettings(warmup=1, repeat=3, min_sample_ms=0.2, reference=True, rounds=2)
    archs = random_subnets(space, 2)
    with MeasurementStore(tmp_path / "m.db") as store:
        profile_subnets(space, 0, "cpu-test", store, archs=archs, timing=timing, progress=False)
        first = [r.median_s for r in store.query(kind="subnet")]     # in the order measured: archs
    with LocalRunner("cpu-test", threads=1) as runner:
        again = measure_again(space, archs, "cpu-test", runner, timing=timing, baseline_from=tmp_path / "m.db",
                              fresh_process=True)
        assert not runner._modules            # timed by the child's own runner: nothing was loaded here
        measure_again(space, archs[:1], "cpu-test", runner, timing=timing, baseline_from=tmp_path / "m.db")
        assert runner._modules                # ... while the same call in this process loads the libraries here
    assert len(again) == 2 and all(0.5 < b / a < 2.0 for a, b in zip(first, again)), (first, again)


def test_a_stored_subnet_keeps_the_reference_of_its_first_round(tmp_path, any_space_takes_a_reference_subnet):
    """Rounds against different references are never pooled: a subnet first measured against the reference
    layer (as every store before `subnet_reference` was) gets its later rounds against the layer too, while a
    new subnet in the same run gets the reference subnet."""
    space = SearchSpace.from_dict(TINY)
    old = TimingSettings(warmup=1, repeat=3, min_sample_ms=0.2, reference=True, rounds=1)
    new = TimingSettings(warmup=1, repeat=3, min_sample_ms=0.2, reference=True, rounds=2, subnet_reference=True)
    a, b, c = random_subnets(space, 3)
    with MeasurementStore(tmp_path / "m.db") as store:
        profile_subnets(space, 0, "cpu-test", store, archs=[a, c], timing=old, progress=False)  # c: not in the next run
        rep = profile_subnets(space, 0, "cpu-test", store, archs=[a, b], timing=new, progress=False)
        assert rep.measured.count(BOOK.subnet_key(a, space)) == 1 and not rep.failed
        rows = {r.key: r for r in store.query(kind="subnet")}
        assert "reference" not in rows[BOOK.subnet_key(a, space)].config
        assert rows[BOOK.subnet_key(b, space)].config["reference"].startswith("subnet:tiny@8:")
        assert store.rounds("cpu-test", rows[BOOK.subnet_key(a, space)].target, rows[BOOK.subnet_key(a, space)].tvm_version,
                            "subnet", BOOK.subnet_key(a, space)) == 2
        layers = [k for (k,) in store._db.execute("SELECT layer FROM reference")]
        assert len(layers) == 2 and any(k.startswith("subnet:") for k in layers)


def _rows(db: Path) -> dict:
    con = sqlite3.connect(str(db))
    try:
        return {r[0]: r[1:] for r in con.execute("SELECT key, median_s, created, kind FROM measurements")}
    finally:
        con.close()


def test_killed_profiler_resumes_without_loss_or_duplicates(tmp_path):
    """SIGKILL a real `nasbnn-hw profile` run mid-way, run it again: every item stored exactly once and
    the rows written before the kill unchanged."""
    space_file = tmp_path / "tiny.toml"
    lines = ['name = "tiny"', "resolution = 8", "in_channels = 1", "num_classes = 4"]
    for st in TINY["stage"]:
        lines.append("[[stage]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in st.items()]
    space_file.write_text("\n".join(lines) + "\n")
    db = tmp_path / "m.db"
    cmd = [sys.executable, "-m", "nasbnn_hw.cli", "profile", "--device", "local", "--space", str(space_file),
           "--layers", "--subnets", "2", "--store", str(db), "--warmup", "1", "--repeat", "3", "--number", "2",
           "--rounds", "1", "--precision", "0", "--quiet"]   # one round per item (resuming rounds: test_profile_rounds_...)
    env = dict(os.environ, TVM_NUM_THREADS="1")
    total = len(enumerate_layers(SearchSpace.from_dict(TINY))) + 2
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                if db.exists() and len(_rows(db)) >= 3:
                    break
            except sqlite3.OperationalError:  # the file exists, its table not yet
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = _rows(db)
    assert 3 <= len(before) < total
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(before) - sum(v[2] == 'subnet' for v in before.values())} already stored" in r.stdout
    after = _rows(db)
    assert len(after) == total
    con = sqlite3.connect(str(db))
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT kind || key) FROM measurements").fetchone() == (total, total)
    con.close()
    for key, val in before.items():
        assert after[key] == val


def test_a_failing_item_is_reported_and_the_rest_measured(tmp_path):
    space = SearchSpace.from_dict(TINY)
    good = enumerate_layers(space)[0]
    bad = LayerConfig("bconv", 24, 24, 3, 5, 1, 8)  # groups do not divide the channels
    with MeasurementStore(tmp_path / "m.db") as store:
        rep = profile_layers(space, "cpu-test", store, _TimeEvaluatorRunner(), layers=[bad, good], timing=FAST,
                             progress=False)
        assert rep.measured == [KEY(good)] and list(rep.failed) == [KEY(bad)] and "groups=5" in rep.failed[KEY(bad)]
        assert not store.has("cpu-test", rep_target(), tvm_version(), "layer", KEY(bad))
        with pytest.raises(Exception, match="groups=5"):
            profile_layers(space, "cpu-test", store, _TimeEvaluatorRunner(), layers=[bad], timing=FAST,
                           progress=False, stop_on_error=True)


def rep_target():
    from nasbnn_hw.deploy.kernels import resolve_target
    return resolve_target("local").description()


def tvm_version():
    import tvm
    return tvm.__version__


def test_an_unreachable_device_stops_the_run(tmp_path):
    from nasbnn_hw.profiling.runners.errors import BoardUnavailable

    class DownRunner:
        device = "board"
        calls = 0

        def time_library(self, *a, **kw):
            DownRunner.calls += 1
            raise BoardUnavailable("device 'board' unreachable")

        def close(self):
            pass

    space = SearchSpace.from_dict(TINY)
    with MeasurementStore(tmp_path / "m.db") as store:
        with pytest.raises(BoardUnavailable):
            profile_layers(space, "board", store, DownRunner(), layers=enumerate_layers(space)[:3], timing=FAST,
                           progress=False)
        assert DownRunner.calls == 1 and store.count() == 0
