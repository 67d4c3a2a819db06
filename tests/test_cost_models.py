"""Cost models: analytic counts, lookup table, learned predictor (JSON, no pickle), registry and plug-ins,
metrics, active profiling and the report. Measurements come from a simulated device (cost_models.synthetic)."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cost_models import (CostModelError, IncompatibleArtifactError, LatencyPredictor, MissingMeasurementError,
                         UnknownCostModelError, evaluate, fit_predictor, get_cost_model, list_cost_models)
from cost_models._layers import LayerIndex, space_layer_configs
from cost_models.active import active_profile, select_uncertain
from cost_models.analytic import layer_params
from cost_models.metrics import evaluate, kendall_tau, largest_swap, mape, rmse, spearman, within
from cost_models.report import write_report
from cost_models.synthetic import SimulatedDevice
from nasbnn_hw.core.arch import Arch, Block
from nasbnn_hw.core.layers import LayerConfig, arch_layers, count_ops
from nasbnn_hw.core.sampling import largest, sample_uniform, smallest
from nasbnn_hw.core.space import get_space
from nasbnn_hw.profiling.store import MeasurementStore

REPO = Path(__file__).resolve().parents[1]
SMALL = get_space("small")
DEV = SimulatedDevice(name="simdev")


def _archs(space, n, seed):
    rng = random.Random(seed)
    return [sample_uniform(space, rng) for _ in range(n)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    st = MeasurementStore(tmp_path_factory.mktemp("store") / "m.db")
    DEV.fill_store(st, space_layer_configs(SMALL), [(SMALL, a) for a in _archs(SMALL, 80, 1)])
    yield st
    st.close()


@pytest.fixture(scope="module")
def predictor(store):
    return fit_predictor(store, "simdev", n_estimators=24)


# --- layers and analytic models ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small", "imagenet"])
def test_layer_index_matches_arch_layers_and_enumeration(name):
    space = get_space(name)
    index = LayerIndex(space)
    archs = _archs(space, 300, 0) + [largest(space), smallest(space)]
    for a in archs:
        assert [index.configs[i] for i in index.arch_ids(a)] == arch_layers(a, space)
    assert set(index.configs) <= set(space_layer_configs(space))
    flat, starts = index.index(archs[:3])
    assert list(starts) == [0, len(arch_layers(archs[0], space)),
                            len(arch_layers(archs[0], space)) + len(arch_layers(archs[1], space))]


def test_ops_matches_official_check_values_and_count_ops():
    space = get_space("imagenet")
    ops = get_cost_model("ops", space)
    assert ops.cost(largest(space)) / 1e6 == pytest.approx(331.814248, abs=1e-6)
    assert ops.cost(smallest(space)) / 1e6 == pytest.approx(20.772760, abs=1e-6)
    archs = _archs(space, 50, 3)
    want = [count_ops(a, space) for a in archs]
    np.testing.assert_allclose(ops.costs(archs), [c.ops for c in want])
    np.testing.assert_allclose(get_cost_model("flops", space).costs(archs), [c.flops for c in want])
    np.testing.assert_allclose(get_cost_model("bops", space).costs(archs), [c.bops for c in want])


def test_params_and_memory_by_hand():
    # small space, smallest arch: stem 1->8 k3, stage1 one block 16, stage2 32 k3 g2, stage3 64 k3 g4 h2
    a = smallest(SMALL)
    stem = 3 * 3 * 1 * 8
    s1 = 3 * 3 * 8 * 8 + 8 * 16
    s2 = 3 * 3 * (16 // 2) * 16 + 16 * 32
    s3 = 3 * 3 * (32 // 4) * 32 + (32 // 2) * 64
    head = 64 * 10 + 10
    assert get_cost_model("params", SMALL).cost(a) == stem + s1 + s2 + s3 + head
    assert get_cost_model("model_bytes", SMALL).cost(a) == stem + (s1 + s2 + s3) / 8 + 4 * head
    # peak activation: first binary conv of stage 1 at 14x14: float in (8ch) + packed (1 word) + float out
    first = 4 * 8 * 14 * 14 + 8 * 14 * 14 + 4 * 8 * 14 * 14
    stem_b = 4 * (1 * 28 * 28 + 8 * 14 * 14)
    s1b = 4 * 8 * 196 + 8 * 196 + 4 * 16 * 196
    assert get_cost_model("peak_memory", SMALL).cost(a) == max(first, stem_b, s1b)
    assert layer_params(LayerConfig("bconv", 64, 128, 1, 2, 1, 7)) == 64 * 64


@pytest.mark.parametrize("name", ["ops", "flops", "bops", "params", "model_bytes", "peak_memory"])
def test_monotone_models_bounded_by_smallest_and_largest(name):
    m = get_cost_model(name, SMALL)
    assert m.monotone and m.device is None
    c = m.costs(_archs(SMALL, 200, 5))
    assert (c >= m.cost(smallest(SMALL))).all() and (c <= m.cost(largest(SMALL))).all()
    assert m.costs([]).shape == (0,)


# --- registry and plug-ins -----------------------------------------------------------------------
def test_registry_errors_are_clear(store):
    with pytest.raises(UnknownCostModelError, match=r"unknown cost model 'opz'.*did you mean 'ops'"):
        get_cost_model("opz", SMALL)
    with pytest.raises(CostModelError, match="needs a device: write lut@DEVICE"):
        get_cost_model("lut", SMALL, store=store)
    with pytest.raises(CostModelError, match="analytic and takes no device"):
        get_cost_model("ops@rpi4", SMALL)
    with pytest.raises(CostModelError, match="needs a search space"):
        get_cost_model("ops")
    with pytest.raises(CostModelError, match="needs predictor=PATH.json .* or store=M.db"):
        get_cost_model("latency@simdev", SMALL)
    with pytest.raises(CostModelError, match="no measurements for device 'rpi4'.*devices there: simdev"):
        get_cost_model("lut@rpi4", SMALL, store=store)
    assert {"ops", "params", "lut@DEVICE", "latency@DEVICE"} <= set(list_cost_models())


def test_third_party_plugin_found_by_entry_point(tmp_path, monkeypatch):
    site = tmp_path / "site"
    pkg = site / "acme_cost"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import numpy as np
        class Depth:
            name, unit, monotone = "depth", "blocks", True
            def __init__(self, space, device=None, scale=1.0):
                self.space, self.device, self.scale = space, device, scale
            def cost(self, arch):
                return self.scale * sum(len(s) for s in arch.stages)
            def costs(self, archs):
                return np.array([self.cost(a) for a in archs])
        def factory(space, device=None, **kw):
            return Depth(space, device, **kw)
        """))
    dist = site / "acme_cost-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-cost\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[nasbnn_hw.cost_models]\ndepth = acme_cost:factory\n")
    monkeypatch.syspath_prepend(str(site))
    assert "depth" in list_cost_models()
    m = get_cost_model("depth@board", SMALL, scale=2.0)
    assert m.device == "board"
    assert m.cost(largest(SMALL)) == 2.0 * sum(max(s.depth) for s in SMALL.stages)
    # a plug-in returning something that is not a cost model is named in the error
    (dist / "entry_points.txt").write_text("[nasbnn_hw.cost_models]\nbroken = acme_cost:np\n")
    with pytest.raises(CostModelError, match="plug-in 'broken'"):
        get_cost_model("broken", SMALL)


def test_packages_do_not_import_torch():
    code = "import sys, cost_models, searchers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


# --- lookup table --------------------------------------------------------------------------------
def test_lut_is_sum_of_measured_medians_plus_fitted_overhead(store):
    lut = get_cost_model("lut@simdev", SMALL, store=store)
    med = {m.key.split(" @")[0]: m.median_s for m in store.query(device="simdev", kind="layer")}  # key @schedule
    gaps = []
    for m in store.query(device="simdev", kind="subnet"):
        a = Arch.from_dict(m.config["arch"])
        gaps.append(m.median_s - sum(med[c.key()] for c in arch_layers(a, SMALL)))
    assert lut.overhead_s == pytest.approx(float(np.median(gaps)))
    assert lut.overhead_s > 0       # the simulated device has a graph overhead the layer sum misses
    archs = _archs(SMALL, 20, 9)
    want = [sum(med[c.key()] for c in arch_layers(a, SMALL)) + lut.overhead_s for a in archs]
    np.testing.assert_allclose(lut.costs(archs), want)
    mean, std = lut.costs_with_uncertainty(archs)
    np.testing.assert_allclose(mean, want)
    assert (std > 0).all()
    meas = [DEV.measure_subnet(a, SMALL, trial=1) for a in archs]
    assert evaluate(lut.costs(archs), meas)["acc10"] >= 0.9


def test_lut_missing_layer_names_the_layer_and_the_command(tmp_path):
    st = MeasurementStore(tmp_path / "m.db")
    layers = space_layer_configs(SMALL)
    missing = next(c for c in layers if c.kind == "bconv" and c.kernel == 5)
    DEV.fill_store(st, [c for c in layers if c != missing])
    lut = get_cost_model("lut@simdev", SMALL, store=st)
    a = next(a for a in _archs(SMALL, 500, 2) if missing in arch_layers(a, SMALL))
    with pytest.raises(MissingMeasurementError) as e:
        lut.cost(a)
    assert missing.key() in str(e.value) and "nasbnn-hw profile --device simdev --space small" in str(e.value)
    assert lut.missing_layers(layers) == [missing]


# --- learned predictor ---------------------------------------------------------------------------
def test_predictor_held_out_accuracy(predictor):
    ho = predictor.held_out_
    assert ho["subnets"]["n"] == 16 and ho["layers"]["n"] == 19
    assert ho["subnets"]["acc10"] >= 0.9 and ho["subnets"]["kendall_tau"] > 0.8
    assert ho["layers"]["acc10"] >= 0.8
    assert predictor.correction_["n"] == 80
    model = get_cost_model("latency@simdev", SMALL, predictor=predictor)
    archs = _archs(SMALL, 100, 11)
    meas = [DEV.measure_subnet(a, SMALL, trial=2) for a in archs]
    m = evaluate(model.costs(archs), meas)
    assert m["acc10"] >= 0.9 and m["spearman"] > 0.9
    mean, std = model.costs_with_uncertainty(archs)
    np.testing.assert_allclose(mean, model.costs(archs))
    assert (std > 0).all() and (std < 0.5 * mean).all()


def test_predictor_save_load_json_round_trip_and_checks(predictor, tmp_path):
    path = tmp_path / "p.json"
    predictor.save(path)
    raw = path.read_bytes()
    d = json.loads(raw)                       # plain JSON: nothing to unpickle
    assert d["metadata"]["device"] == "simdev" and d["metadata"]["n_train_layers"] == 94
    assert d["metadata"]["feature_schema"]["version"] == 1 and "scikit-learn" in d["metadata"]["library_versions"]
    loaded = LatencyPredictor.load(path, device="simdev")
    cfgs = space_layer_configs(SMALL)
    np.testing.assert_allclose(loaded.predict_layer_members(cfgs), predictor.predict_layer_members(cfgs))
    m1 = get_cost_model("latency@simdev", SMALL, predictor=str(path))
    m2 = get_cost_model("latency@simdev", SMALL, predictor=predictor)
    archs = _archs(SMALL, 30, 4)
    np.testing.assert_allclose(m1.costs(archs), m2.costs(archs))
    with pytest.raises(IncompatibleArtifactError, match="fitted for device 'simdev', not 'rpi4'"):
        get_cost_model("latency@rpi4", SMALL, predictor=str(path))
    with pytest.warns(UserWarning, match="not 'rpi4'"):
        m3 = get_cost_model("latency@rpi4", SMALL, predictor=str(path), allow_other_device=True)
    assert m3.name == "latency@rpi4"
    bad = json.loads(raw)
    bad["metadata"]["feature_schema"]["names"] = bad["metadata"]["feature_schema"]["names"][:-1]
    with pytest.raises(IncompatibleArtifactError, match="feature schema"):
        LatencyPredictor.from_dict(bad)
    bad = json.loads(raw)
    bad["trees"][0]["feature"][0] = 999
    with pytest.raises(IncompatibleArtifactError, match="out-of-range"):
        LatencyPredictor.from_dict(bad)
    with pytest.raises(IncompatibleArtifactError, match="not a latency predictor"):
        LatencyPredictor.from_dict({"format": "something-else"})
    with pytest.raises(CostModelError, match="not fitted"):
        LatencyPredictor().predict_layers(cfgs)


def test_json_trees_reproduce_sklearn():
    from sklearn.tree import DecisionTreeRegressor

    from cost_models._trees import check_tree_dict, predict_trees, tree_to_dict
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 5)), rng.normal(size=300)
    t = DecisionTreeRegressor(random_state=0).fit(X, y)
    Xt = rng.normal(size=(200, 5))
    np.testing.assert_array_equal(predict_trees([check_tree_dict(tree_to_dict(t), 5)], Xt)[:, 0], t.predict(Xt))


def test_batched_predictions_equal_one_by_one(predictor):
    """The batched path (one prediction per distinct layer config, summed through a count matrix) gives
    what predicting each arch alone gives; its speed is printed by benchmarks/search_compare.py."""
    model = get_cost_model("latency@simdev", SMALL, predictor=predictor)
    archs = _archs(SMALL, 2000, 12)
    c = model.costs(archs)
    assert c.shape == (2000,) and np.isfinite(c).all() and (c > 0).all()
    one = np.array([model.cost(a) for a in archs[:40]])
    np.testing.assert_allclose(c[:40], one, rtol=1e-9)
    assert len(np.unique(c)) > 100


# --- metrics, active profiling, report -----------------------------------------------------------
def test_metrics_known_values():
    meas = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.04, 2.3, 2.9, 4.0])
    assert within(pred, meas, 0.10) == 0.75 and within(pred, meas, 0.05) == 0.75
    assert rmse(pred, meas) == pytest.approx(np.sqrt((0.04 ** 2 + 0.3 ** 2 + 0.1 ** 2) / 4))
    assert mape(pred, meas) == pytest.approx(100 * (0.04 + 0.15 + 0.1 / 3) / 4)
    assert kendall_tau(pred, meas) == 1.0 and spearman(pred, meas) == 1.0
    assert kendall_tau(pred[::-1], meas) == -1.0
    assert largest_swap(pred, meas) == 0.0 and largest_swap(pred[::-1], meas) == pytest.approx(3.0)


def test_largest_swap_sees_how_far_apart_the_swapped_subnets_are():
    meas = np.array([10.0, 20.0, 30.0, 30.5, 31.0])
    close = np.array([10.0, 20.0, 30.5, 31.0, 30.0])      # two near-ties swapped: a lower tau ...
    far = np.array([20.0, 10.0, 30.0, 30.5, 31.0])        # ... than one pair 2x apart swapped
    assert kendall_tau(close, meas) == pytest.approx(0.6) and kendall_tau(far, meas) == pytest.approx(0.8)
    assert largest_swap(close, meas) == pytest.approx(31 / 30 - 1)
    assert largest_swap(far, meas) == pytest.approx(1.0)
    tied = np.array([10.0, 20.0, 30.0, 30.0, 31.0])       # a tie orders neither way: a swap
    assert largest_swap(tied, meas) == pytest.approx(30.5 / 30 - 1)
    assert largest_swap([3.0, 1.0], [2.0, 2.0]) == 0.0 and largest_swap([1.0], [1.0]) == 0.0
    assert evaluate(far, meas)["largest_swap"] == pytest.approx(1.0)


def test_select_uncertain_ranks_and_excludes():
    items = ["a", "b", "c", "d"]
    mean, std = np.array([1.0, 10.0, 1.0, 2.0]), np.array([0.1, 0.5, 0.3, 0.1])
    unc = lambda xs: (mean[[items.index(x) for x in xs]], std[[items.index(x) for x in xs]])  # noqa: E731
    assert select_uncertain(items, unc, 2) == ["c", "a"]
    assert select_uncertain(items, unc, 2, score="absolute") == ["b", "c"]
    assert select_uncertain(items, unc, 2, exclude={"c"}) == ["a", "b"]
    with pytest.raises(CostModelError, match="score='x' not allowed"):
        select_uncertain(items, unc, 1, score="x")


@pytest.mark.parametrize("strategy", ["uncertainty", "random"])
def test_active_profile_respects_budget_and_calls_measure(strategy):
    pool = space_layer_configs(SMALL)
    calls = []

    def measure(items):
        calls.append(list(items))
        return [DEV.measure_layer(c) for c in items]

    res = active_profile(pool, measure, budget=40, initial=10, batch_size=10, strategy=strategy, seed=0,
                         fit=lambda xs, ys: LatencyPredictor(n_estimators=8).fit(xs, ys))
    flat = [c for b in calls for c in b]
    assert len(flat) == 40 == len(set(flat)) == len(res.measured)
    assert [r.n_measured for r in res.rounds] == [10, 20, 30, 40]
    if strategy == "uncertainty":   # each batch is the most uncertain under the model fitted before it
        prev = LatencyPredictor(n_estimators=8).fit(flat[:30], [DEV.measure_layer(c) for c in flat[:30]])
        rest = [c for c in pool if c not in set(flat[:30])]
        assert select_uncertain(rest, prev.predict_layers, 10) == calls[-1]


def test_report_files_and_metrics(tmp_path):
    rng = np.random.default_rng(0)
    meas = rng.uniform(1e-3, 5e-3, 60)
    rows = [{"id": i, "measured": m, "ops": 2e8 * m + 1e6, "predictor": m * (1 + 0.2 * (i % 2))}
            for i, m in enumerate(meas)]
    metrics = write_report(tmp_path / "r", rows)
    assert metrics["ops"]["acc5"] == 1.0 and metrics["ops"]["kendall_tau"] == pytest.approx(1.0)
    assert metrics["predictor"]["acc10"] == 0.5 and metrics["predictor"]["unit"] == "s"
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| predictor | 50.0% | 50.0% |" in md and "| ops | 100.0% |" in md
    for f in ("scatter_ops.png", "scatter_predictor.png"):
        assert (tmp_path / "r" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "r" / "points.csv").read_text().splitlines()
    assert lines[0] == "id,measured,ops,predictor" and len(lines) == 61
    with pytest.raises(CostModelError, match="at least one row"):
        write_report(tmp_path / "r2", [])


# --- CLI -----------------------------------------------------------------------------------------
def test_cli_fit_and_compare(store, tmp_path, capsys):
    from nasbnn_hw.cli import main
    out = tmp_path / "p.json"
    assert main(["fit", "--device", "simdev", "--store", str(store.path), "--out", str(out),
                 "--n-estimators", "12"]) == 0
    text = capsys.readouterr().out
    assert "held-out layers" in text and "held-out subnets" in text and "n=  16" in text
    assert LatencyPredictor.load(out, device="simdev").n_train_layers_ == 94
    rep = tmp_path / "rep"
    assert main(["compare", "--device", "simdev", "--store", str(store.path), "--subnets", "30",
                 "--out", str(rep), "--n-estimators", "12"]) == 0
    text = capsys.readouterr().out
    assert "30 measured subnets of small on simdev" in text and "the 50 subnets not compared" in text
    metrics = json.loads((rep / "metrics.json").read_text())
    assert set(metrics) == {"ops", "flops", "lut", "predictor"}
    assert metrics["lut"]["acc10"] >= 0.9 and metrics["predictor"]["acc10"] >= 0.9
    assert (rep / "scatter_lut.png").exists() and len((rep / "points.csv").read_text().splitlines()) == 31
    assert main(["compare", "--device", "simdev", "--store", str(store.path), "--subnets", "5", "--out",
                 str(tmp_path / "rep2"), "--predictor", str(out)]) == 0
    assert main(["fit", "--device", "nodev", "--store", str(store.path), "--out", str(out)]) == 2
    assert "exists already; pass --force" in capsys.readouterr().err       # refused before fitting anything
    assert main(["fit", "--device", "nodev", "--store", str(store.path), "--out", str(out), "--force"]) == 2
    assert "no measurements for device 'nodev'" in capsys.readouterr().err


# --- conformance: every registered model ---------------------------------------------------------
def _build(name, store, predictor):
    base = name.split("@")[0]
    if base in ("lut", "latency"):
        return get_cost_model(f"{base}@simdev", SMALL, store=store)
    if base == "predictor":
        return get_cost_model("predictor@simdev", SMALL, predictor=predictor)
    return get_cost_model(name, SMALL)


@pytest.mark.parametrize("name", [n for n in list_cost_models()])
def test_every_registered_cost_model_conforms(name, store, predictor):
    m = _build(name, store, predictor)
    assert isinstance(m.name, str) and isinstance(m.unit, str)
    archs = _archs(SMALL, 40, 21)
    c = m.costs(archs)
    assert c.shape == (40,) and c.dtype == np.float64 and np.isfinite(c).all() and (c > 0).all()
    assert m.cost(archs[3]) == pytest.approx(c[3])
    np.testing.assert_allclose(m.costs(archs[::-1]), c[::-1])           # batch order does not matter
    np.testing.assert_allclose(_build(name, store, predictor).costs(archs), c)   # fresh instance, same costs
    assert m.costs([]).shape == (0,)
    if hasattr(m, "costs_with_uncertainty"):
        mean, std = m.costs_with_uncertainty(archs)
        np.testing.assert_allclose(mean, c)
        assert std.shape == (40,) and (std >= 0).all()
    if getattr(m, "unit", "") == "s":
        assert m.device == "simdev"


def test_select_uncertain_on_subnets(predictor):
    model = get_cost_model("latency@simdev", SMALL, predictor=predictor)
    archs = _archs(SMALL, 200, 22)
    picked = select_uncertain(archs, model.costs_with_uncertainty, 5, score="absolute")
    _, std = model.costs_with_uncertainty(archs)
    assert sorted(std[[archs.index(a) for a in picked]], reverse=True) == sorted(std, reverse=True)[:5]


def test_coverage_and_hybrid_scores(predictor):
    from cost_models.active import coverage_scores, hybrid_scores
    pool = space_layer_configs(SMALL)
    done, rest = pool[:10], pool[10:]
    assert np.allclose(coverage_scores(done[:3], done), 0.0)           # measured: no distance left
    cov = coverage_scores(rest, done)
    assert (cov > 0).all() and len(cov) == len(rest)
    assert np.allclose(coverage_scores(rest, done, weights=[4.0] * len(rest)), 2 * cov)   # sqrt(weight)
    assert np.array_equal(coverage_scores(rest[:5], []), np.ones(5)) and len(coverage_scores([], done)) == 0
    assert np.allclose(coverage_scores(rest + done[:1], done)[-1], 0.0)   # standardised over both sets
    h = hybrid_scores(predictor, rest, done, [1.0] * len(rest))
    assert h.shape == (len(rest),) and h.min() >= 2 and h.max() <= 2 * len(rest)


def test_next_batch_and_plan_next_layers(tmp_path, predictor):
    from cost_models.active import next_batch, plan_next_layers
    pool = space_layer_configs(SMALL)
    assert next_batch(predictor, pool, 3) == select_uncertain(pool, predictor.predict_layers, 3)
    with pytest.raises(CostModelError, match="reports no uncertainty"):
        next_batch(get_cost_model("ops", SMALL), _archs(SMALL, 5, 0), 2)
    st = MeasurementStore(tmp_path / "m.db")
    first = plan_next_layers(SMALL, st, "simdev", 12, seed=1)        # nothing measured yet: random pick
    assert len(first) == len(set(first)) == 12 and set(first) <= set(pool)
    DEV.fill_store(st, first)
    nxt = plan_next_layers(SMALL, st, "simdev", 10, seed=1, n_estimators=8)
    assert len(nxt) == 10 and not set(nxt) & set(first)
    DEV.fill_store(st, [c for c in pool if c not in nxt])
    assert sorted(plan_next_layers(SMALL, st, "simdev", 50, n_estimators=8)) == sorted(nxt)  # only those left


def test_predictor_parameters_validated():
    cfgs = space_layer_configs(SMALL)[:10]
    lat = [DEV.measure_layer(c) for c in cfgs]
    with pytest.raises(CostModelError, match=r"'n_estimators' parameter of LatencyPredictor must be an int in \[2, inf\)"
                                             r". Got 1."):
        LatencyPredictor(n_estimators=1).fit(cfgs, lat)
    with pytest.raises(CostModelError, match="'max_features'"):
        LatencyPredictor(max_features=0).fit(cfgs, lat)
    with pytest.raises(CostModelError, match="no parameter 'depth'"):
        LatencyPredictor().set_params(depth=3)
    p = LatencyPredictor().set_params(n_estimators=4)
    assert p.get_params()["n_estimators"] == 4 and len(p.fit(cfgs, lat).trees_) == 4
    with pytest.raises(CostModelError, match="finite and > 0"):
        LatencyPredictor().fit(cfgs, [0.0] * 10)


def test_lut_reads_rows_by_config_not_row_key(tmp_path):
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.profiling.store import Measurement
    from nasbnn_hw.profiling.tuning import ScheduleBook
    st = MeasurementStore(tmp_path / "m.db")
    layers = space_layer_configs(SMALL)
    # an AVX-512 target: rows without a schedule were taken with the legacy schedule, its default where dense
    # rows save nothing; the other layers' rows name their (dense) schedule
    book = ScheduleBook(resolve_target({"kind": "llvm", "mcpu": "icelake-server"}))
    configs = [c.to_dict() if book.layer_key(c) == c.key() else book.layer_config(c) for c in layers]
    assert 0 < sum("schedule" in d for d in configs) < len(configs)
    st.add_many(Measurement("d", "llvm -mcpu=icelake-server", "0.27", "layer", f"row{n}",
                            {**configs[n], "dtype": "int32"},
                            median_s=1e-5 * (n + 1), iqr_s=0.0, repeats=3, samples=(1e-5,))
                for n, c in enumerate(layers))
    lut = get_cost_model("lut@d", SMALL, store=st)
    a = smallest(SMALL)
    assert lut.cost(a) == pytest.approx(sum(1e-5 * (layers.index(c) + 1) for c in arch_layers(a, SMALL)))
    st.add(Measurement("d", "llvm -mcpu=icelake-server", "0.27", "layer", "bad", {"kind": "bconv"},
                       median_s=1.0))
    with pytest.raises(CostModelError, match=r"row 'bad'.*is not a layer config"):
        get_cost_model("lut@d", SMALL, store=st)


def test_cli_several_tvm_versions_need_a_choice(tmp_path, capsys):
    from nasbnn_hw.cli import main
    st = MeasurementStore(tmp_path / "m.db")
    layers = space_layer_configs(SMALL)
    subnets = [(SMALL, a) for a in _archs(SMALL, 12, 31)]
    SimulatedDevice(name="d", tvm_version="0.26").fill_store(st, layers, subnets)
    SimulatedDevice(name="d", tvm_version="0.27").fill_store(st, layers, subnets)
    out = str(tmp_path / "p.json")
    assert main(["fit", "--device", "d", "--store", str(st.path), "--out", out]) == 2
    assert "several (target, TVM version) pairs" in capsys.readouterr().err
    assert main(["fit", "--device", "d", "--store", str(st.path), "--out", out, "--tvm-version", "0.27",
                 "--n-estimators", "4"]) == 0
    assert LatencyPredictor.load(out).tvm_version_ == "0.27"
    assert main(["compare", "--device", "d", "--store", str(st.path), "--tvm-version", "0.26", "--subnets", "4",
                 "--out", str(tmp_path / "r"), "--n-estimators", "4"]) == 0
