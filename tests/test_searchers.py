"""Searchers: constraints, ND operators, evolutionary and random search, Pareto bins, hypervolume, the
JSON result, kill-and-resume of a real subprocess, registry and plug-ins, plots."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cost_models import fit_predictor, get_cost_model
from cost_models._layers import space_layer_configs
from cost_models.synthetic import SimulatedDevice
from nasbnn_hw.core.arch import Arch, Block, is_valid
from nasbnn_hw.core.sampling import largest, sample_uniform, smallest
from nasbnn_hw.core.space import get_space
from nasbnn_hw.profiling.store import MeasurementStore
from searchers import (ConstraintError, ConstraintUnsatisfiableError, EvolutionarySearcher, InvalidParameterError,
                       RandomSearcher, SearchError, SearchResult, UnknownSearcherError, get_searcher, hypervolume,
                       list_searchers, nondominated, pareto_bins, parse_constraint, run_search)
from searchers.operators import crossover, mutate
from searchers.plot import plot_pareto_fronts
from searchers.synthetic import SyntheticAccuracy

REPO = Path(__file__).resolve().parents[1]
SMALL = get_space("small")
SMALL_EVO = dict(population_size=32, generations=5, mutations=16, crossovers=16)


# --- constraints --------------------------------------------------------------------------------
@pytest.mark.parametrize("text,name,op,value", [
    ("latency@rpi4 <= 30ms", "latency@rpi4", "<=", 0.03), ("ops<=100M", "ops", "<=", 1e8),
    ("params <= 2M", "params", "<=", 2e6), ("latency@x > 250us", "latency@x", ">", 2.5e-4),
    ("peak_memory < 1.5MiB", "peak_memory", "<", 1.5 * 2 ** 20), ("flops >= 1.2e3K", "flops", ">=", 1.2e6),
])
def test_parse_constraint(text, name, op, value):
    c = parse_constraint(text)
    assert (c.model_name, c.op) == (name, op) and c.value == pytest.approx(value)


def test_constraint_errors():
    with pytest.raises(ConstraintError, match="cannot parse constraint 'ops =< 3'"):
        parse_constraint("ops =< 3")
    with pytest.raises(ConstraintError, match="unknown unit 'Q'"):
        parse_constraint("ops <= 3Q")
    ops = get_cost_model("ops", SMALL)
    with pytest.raises(ConstraintError, match="time unit 'ms' on cost model 'ops'"):
        parse_constraint("ops <= 3ms").bind(ops)

    class Lat:
        name, unit = "latency@d", "s"
    with pytest.raises(ConstraintError, match="measures seconds; give a time unit"):
        parse_constraint("latency@d <= 30").bind(Lat())
    with pytest.raises(ConstraintError, match="byte unit 'MB' on cost model 'ops'"):
        parse_constraint("ops <= 3MB").bind(ops)


def test_unsatisfiable_constraint_fails_at_once_naming_cheapest_cost():
    ev = SyntheticAccuracy(SMALL)
    cheapest = get_cost_model("ops", SMALL).cost(smallest(SMALL))
    with pytest.raises(ConstraintUnsatisfiableError) as e:
        run_search(SMALL, ev, constraints=["ops <= 5K"], searcher_params=SMALL_EVO)
    assert "the cheapest arch (the smallest) costs 8.392K OPs" in str(e.value) and cheapest == 8392
    assert ev.calls == 0
    with pytest.raises(ConstraintUnsatisfiableError, match="most expensive arch .* costs 362.3K OPs"):
        run_search(SMALL, ev, constraints=["ops >= 1M"], searcher="random")
    with pytest.raises(ConstraintUnsatisfiableError, match="meets all constraints together"):
        run_search(SMALL, ev, constraints=["ops <= 10K", "params >= 100K"], searcher_params=SMALL_EVO)


def test_unsatisfiable_non_monotone_model_samples(tmp_path):
    st = MeasurementStore(tmp_path / "m.db")
    dev = SimulatedDevice(name="simdev")
    dev.fill_store(st, space_layer_configs(SMALL))
    ev = SyntheticAccuracy(SMALL)
    with pytest.raises(ConstraintUnsatisfiableError,
                       match=r"'lut@simdev <= 10us'.*cheapest of 2002 archs sampled .* costs [0-9.]+ms"):
        run_search(SMALL, ev, constraints=["lut@simdev <= 10us"], store=st, searcher_params=SMALL_EVO)
    assert ev.calls == 0


# --- operators ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small", "imagenet"])
def test_mutation_keeps_nd_and_changes_genes(name):
    space = get_space(name)
    rng = random.Random(0)
    depth_changed = width_changed = 0
    for _ in range(300):
        a = sample_uniform(space, rng)
        assert mutate(a, space, rng, 0.0) == a
        m = mutate(a, space, rng, 0.2)
        assert is_valid(m, space)
        depth_changed += m.depths != a.depths
        width_changed += m.widths != a.widths
    assert depth_changed > 20 and width_changed > 50


def test_crossover_takes_genes_from_parents_and_drops_nd_violations():
    rng = random.Random(1)
    for _ in range(200):
        a, b = sample_uniform(SMALL, rng), sample_uniform(SMALL, rng)
        c = crossover(a, b, SMALL, rng)
        if c is None:
            continue
        assert is_valid(c, SMALL)
        for si, st in enumerate(c.stages):
            assert len(st) in (len(a.stages[si]), len(b.stages[si]))
            for bi, blk in enumerate(st):
                for f in ("channels", "kernel", "groups1", "groups2"):
                    vals = {getattr(p.stages[si][bi], f) for p in (a, b) if bi < len(p.stages[si])}
                    assert getattr(blk, f) in vals
    # stage 1 widths [24, 24] x [16, 16]: a child [24, 16] breaks ND and must be dropped
    tail = [[[32, 3, 2, 1]], [[64, 3, 4, 2]]]
    a = Arch.from_dict({"stages": [[[8, 3, 1, 1]], [[24, 3, 1, 1], [24, 3, 1, 1]], *tail]})
    b = Arch.from_dict({"stages": [[[8, 3, 1, 1]], [[16, 3, 1, 1], [16, 3, 1, 1]], *tail]})
    kids = [crossover(a, b, SMALL, random.Random(s)) for s in range(100)]
    assert any(k is None for k in kids) and all(k is None or is_valid(k, SMALL) for k in kids)
    assert any(k is not None and k.stages[1] == (Block(16), Block(24)) for k in kids)


# --- evolutionary and random search --------------------------------------------------------------
def test_evolutionary_search_properties():
    ev = SyntheticAccuracy(SMALL, seed=2)
    res = run_search(SMALL, ev, constraints=["ops <= 200K", "params <= 60K"], seed=3, searcher_params=SMALL_EVO)
    n = len(res.evaluated)
    assert ev.calls == n == len({c.arch for c in res.evaluated}) == 32 + 5 * 32
    assert all(c.costs["ops"] <= 200e3 and c.costs["params"] <= 60e3 for c in res.evaluated)
    assert res.evaluated[0].arch == smallest(SMALL) and res.evaluated[0].origin == "init"
    assert {c.origin for c in res.evaluated} == {"init", "mutation", "crossover"}
    assert [h.generation for h in res.history] == list(range(6))
    assert all(h2.hypervolume >= h1.hypervolume for h1, h2 in zip(res.history, res.history[1:]))
    # Pareto: one per bin, most accurate in its bin, sorted by cost
    bins = {}
    for c in res.evaluated:
        b = int(c.costs["ops"] // res.bin_width)
        bins[b] = max(bins.get(b, -1), c.accuracy)
    assert [c.accuracy for c in res.pareto] == [bins[b] for b in sorted(bins)]
    assert res.bin_width == pytest.approx((200e3 - 8392) / 100)
    again = run_search(SMALL, SyntheticAccuracy(SMALL, seed=2), constraints=["ops <= 200K", "params <= 60K"],
                       seed=3, searcher_params=SMALL_EVO)
    assert again == res
    other = run_search(SMALL, SyntheticAccuracy(SMALL, seed=2), constraints=["ops <= 200K", "params <= 60K"],
                       seed=4, searcher_params=SMALL_EVO)
    assert other.evaluated != res.evaluated
    assert SearchResult.from_dict(json.loads(res.to_json())) == res


def test_budget_and_random_search():
    ev = SyntheticAccuracy(SMALL, seed=2)
    res = run_search(SMALL, ev, constraints=["ops <= 100K"], budget=50, seed=0, searcher_params=SMALL_EVO)
    assert len(res.evaluated) == ev.calls == 50
    ev = SyntheticAccuracy(SMALL, seed=2)
    rnd = run_search(SMALL, ev, constraints=["ops <= 100K"], searcher="random", seed=0,
                     searcher_params=dict(num_samples=100, batch_size=30))
    assert len(rnd.evaluated) == ev.calls == 100 and [h.n_new for h in rnd.history] == [30, 30, 30, 10]
    assert all(c.costs["ops"] <= 100e3 and c.origin == "random" for c in rnd.evaluated)


def test_evolutionary_beats_random_on_synthetic_accuracy():
    space = get_space("imagenet")
    params = dict(population_size=64, generations=8, mutations=32, crossovers=32)
    hv = {}
    for name, sp in (("evolutionary", params), ("random", dict(num_samples=64 + 8 * 64, batch_size=64))):
        r = run_search(space, SyntheticAccuracy(space, seed=5), constraints=["ops <= 150M"], searcher=name, seed=1,
                       searcher_params=sp, cost="ops")
        assert len(r.evaluated) == 576
        hv[name] = r.history[-1].hypervolume
    assert hv["evolutionary"] > hv["random"] + 0.002, hv


def test_searcher_parameter_validation():
    with pytest.raises(InvalidParameterError, match="'population_size' parameter of EvolutionarySearcher must "
                                                    r"be an int in \[2, inf\). Got 0."):
        EvolutionarySearcher(population_size=0)
    with pytest.raises(InvalidParameterError, match="'mutation_prob'"):
        EvolutionarySearcher(mutation_prob=1.5)
    with pytest.raises(SearchError, match="budget must be a positive"):
        run_search(SMALL, SyntheticAccuracy(SMALL), budget=0)
    with pytest.raises(UnknownSearcherError, match="unknown searcher 'evolutionery'.*did you mean 'evolutionary'"):
        get_searcher("evolutionery")


def test_search_over_latency_predictor(tmp_path):
    st = MeasurementStore(tmp_path / "m.db")
    dev = SimulatedDevice(name="simdev")
    rng = random.Random(0)
    dev.fill_store(st, space_layer_configs(SMALL), [(SMALL, sample_uniform(SMALL, rng)) for _ in range(30)])
    p = fit_predictor(st, "simdev", n_estimators=8)
    path = tmp_path / "p.json"
    p.save(path)
    res = run_search(SMALL, SyntheticAccuracy(SMALL), cost="latency@simdev", predictor=str(path),
                     constraints=["latency@simdev <= 0.32ms", "ops <= 300K"], seed=0, searcher_params=SMALL_EVO)
    assert res.cost_model == "latency@simdev" and res.cost_unit == "s"
    assert all(c.costs["latency@simdev"] <= 0.32e-3 and c.costs["ops"] <= 300e3 for c in res.evaluated)
    assert len(res.evaluated) > 100
    plots = plot_pareto_fronts(res, tmp_path / "plots")
    assert [p.name for p in plots] == ["pareto_latency_at_simdev.png", "pareto_ops.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)


# --- Pareto helpers -----------------------------------------------------------------------------
def test_hypervolume_and_nondominated_known_values():
    pts = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9)]
    # ref cost 5, acc 0: [1,2)*0.5 + [2,4)*0.7 + [4,5)*0.9
    assert hypervolume(pts, 5.0) == pytest.approx(0.5 + 1.4 + 0.9)
    assert hypervolume(pts, 5.0, 0.6) == pytest.approx(2 * 0.1 + 1 * 0.3)
    assert hypervolume([], 5.0) == 0.0
    assert nondominated(pts) == [0, 1, 3]

    class C:
        def __init__(self, cost, acc):
            self.costs, self.accuracy = {"x": cost}, acc
    cands = [C(1.0, 0.5), C(1.5, 0.6), C(2.5, 0.4), C(2.9, 0.45)]
    assert [c.accuracy for c in pareto_bins(cands, "x", 1.0)] == [0.6, 0.45]


# --- checkpoint, kill and resume ----------------------------------------------------------------
_SCRIPT = textwrap.dedent("""
    import sys
    from searchers import run_search
    from searchers.synthetic import SyntheticAccuracy
    ev = SyntheticAccuracy("small", seed=3, delay_s=float(sys.argv[3]))
    r = run_search("small", ev, constraints=["ops <= 250K"], seed=7, checkpoint_dir=sys.argv[1],
                   searcher_params=dict(population_size=32, generations=6, mutations=16, crossovers=16))
    r.save(sys.argv[2])
    print("evaluations", ev.calls)
    """)


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    ck = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(ck), str(tmp_path / "killed.json"), "0.01"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = ck / "search_state.json"
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            if state.exists() and json.loads(state.read_text())["generation"] >= 2:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail("the search never reached generation 2")
        time.sleep(0.05)                      # let it get into the next generation's evaluations
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = json.loads(state.read_text())["generation"]
    assert 2 <= killed_at < 6 and not (tmp_path / "killed.json").exists()
    out = subprocess.run([sys.executable, str(script), str(ck), str(tmp_path / "resumed.json"), "0"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    resumed_calls = int(out.stdout.split()[-1])
    resumed = SearchResult.load(tmp_path / "resumed.json")
    ev = SyntheticAccuracy("small", seed=3)
    fresh = run_search("small", ev, constraints=["ops <= 250K"], seed=7,
                       searcher_params=dict(population_size=32, generations=6, mutations=16, crossovers=16))
    assert resumed == fresh
    assert resumed_calls < ev.calls == len(fresh.evaluated)   # checkpointed archs were not evaluated again
    # the same checkpoint directory refuses a different search
    with pytest.raises(SearchError, match="belongs to a different search"):
        run_search("small", ev, constraints=["ops <= 250K"], seed=8, checkpoint_dir=ck,
                   searcher_params=dict(population_size=32, generations=6, mutations=16, crossovers=16))


# --- registry and plug-ins ----------------------------------------------------------------------
def test_searcher_plugin_found_by_entry_point(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "acme_search").mkdir(parents=True)
    (site / "acme_search" / "__init__.py").write_text(textwrap.dedent("""
        from searchers import RandomSearcher
        class Tiny(RandomSearcher):
            name = "tiny"
            def __init__(self, n=7):
                super().__init__(num_samples=n, batch_size=n)
        """))
    dist = site / "acme_search-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-search\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nasbnn_hw.searchers]\ntiny = acme_search:Tiny\n")
    monkeypatch.syspath_prepend(str(site))
    assert "tiny" in list_searchers() and {"evolutionary", "random"} <= set(list_searchers())
    res = run_search(SMALL, SyntheticAccuracy(SMALL), searcher="tiny", searcher_params={"n": 5})
    assert len(res.evaluated) == 5 and res.searcher == "tiny"


# --- conformance: every registered searcher -----------------------------------------------------
_SMALL_PARAMS = {"evolutionary": SMALL_EVO, "random": dict(num_samples=60, batch_size=20)}


@pytest.mark.parametrize("name", ["evolutionary", "random"])
def test_every_builtin_searcher_conforms(name, tmp_path):
    assert name in list_searchers()
    kw = dict(constraints=["ops <= 120K"], searcher=name, seed=11, searcher_params=_SMALL_PARAMS[name])
    ev = SyntheticAccuracy(SMALL, seed=4)
    res = run_search(SMALL, ev, checkpoint_dir=tmp_path / "a", **kw)
    assert isinstance(res, SearchResult) and res.searcher == name and res.cost_model == "ops"
    assert len(res.evaluated) == ev.calls and all(c.costs["ops"] <= 120e3 for c in res.evaluated)
    assert res == run_search(SMALL, SyntheticAccuracy(SMALL, seed=4), **kw)          # same seed, same result
    ev2 = SyntheticAccuracy(SMALL, seed=4)
    assert run_search(SMALL, ev2, checkpoint_dir=tmp_path / "a", **kw) == res        # finished: nothing re-run
    assert ev2.calls == 0
    assert res.pareto == tuple(pareto_bins(res.evaluated, "ops", res.bin_width))
    res.save(tmp_path / "r.json")
    assert SearchResult.load(tmp_path / "r.json") == res
