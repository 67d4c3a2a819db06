import json
import time

import pytest

from nasbnn_hw.workflows.quickstart import QuickstartConfig, run_quickstart

TINY_SPACE = """
name = "tiny"
resolution = 16
in_channels = 1
num_classes = 10

[[stage]]
channels = [8, 16]
depth = [1]
kernel = [3]
groups1 = [1]
groups2 = [1]
stride = 2

[[stage]]
channels = [16, 32]
depth = [1, 2]
kernel = [3, 5]
groups1 = [1, 2]
groups2 = [1]
stride = 2
"""


@pytest.mark.slow
def test_quickstart_whole_journey_and_rerun_reuses(tmp_path, capsys):
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    cfg = QuickstartConfig(out=tmp_path / "qs", data="digits", space=str(space), epochs=1, steps_per_epoch=6,
                           batch_size=64, subnets=6, population=8, generations=1, threads=2)
    t = time.time()
    report = run_quickstart(cfg)
    first = time.time() - t
    text = open(report).read()
    order = ["## 1. Does the device agree with itself?", "## 2. Cost models on held-out subnets",
             "## 3. Latency-aware vs OPs-aware search", "## Stages", "## Chosen subnet", "## Search", "## Training"]
    at = [text.index(section) for section in order]
    assert at == sorted(at)  # self-agreement first, then the models, then the headline
    summary = json.loads((tmp_path / "qs" / "report" / "summary.json").read_text())
    assert summary["exports"]["onnx"]["same_top1"] and summary["exports"]["tvm"]["same_top1"]
    assert summary["exports"]["tvm"]["max_rel_err"] <= 1e-4
    assert summary["exports"]["bundle"]["same_top1"] and summary["exports"]["bundle"]["max_rel_err"] <= 1e-4
    assert (tmp_path / "qs" / "bundle" / "manifest.json").is_file()
    names = [r["subnet"] for r in summary["subnets"]]
    assert names == ["chosen", "largest", "smallest"]
    assert all(r["measured_ms"] > 0 for r in summary["subnets"])
    for r in summary["subnets"] + summary["latency_vs_ops"]:   # each pick measured 3 times, the median kept
        runs = r["measured_runs_ms"]
        assert len(runs) == 3 and runs == sorted(runs) and r["measured_ms"] == pytest.approx(runs[1])
    for d in summary["latency_vs_ops"]:
        limit = d["budget_ms"] * 1.03
        assert d["within_budget"] == (d["measured_ms"] <= limit)
        assert d["borderline"] == (min(d["measured_runs_ms"]) <= limit < max(d["measured_runs_ms"]))
    assert summary["random_subnets_top1"]["n"] == 20 and 0 <= summary["random_subnets_top1"]["mean"] <= 100
    again = summary["repeatability"]
    assert again["n"] == 5 and 0 <= again["remeasured"]["mape"] < 100 and "predictor" in again
    assert "| second measurement vs first |" in text and "repeatability" not in summary["cost_models"]
    duel = summary["latency_vs_ops"]
    assert [d["search"] for d in duel] == ["latency-aware", "OPs-aware"] * 3
    budgets = [d["budget_ms"] for d in duel[::2]]
    assert budgets == sorted(budgets) and all(d["measured_ms"] > 0 and 0 <= d["test_top1"] <= 100 for d in duel)
    assert summary["ops_fit"]["slope_s_per_op"] > 0
    from nasbnn_hw.profiling.store import MeasurementStore
    with MeasurementStore(tmp_path / "qs" / "measurements.db") as st:   # the self-agreement is kept
        rec = st.agreement("local")
    assert rec is not None and rec["subnets"] == 5
    assert rec["kendall_tau"] == pytest.approx(again["remeasured"]["kendall_tau"])
    assert rec["largest_swap"] == pytest.approx(again["remeasured"]["largest_swap"])
    assert "largest swap" in text and (tmp_path / "qs" / "report" / "costs" / "scatter_remeasured.png").is_file()
    for png in ("training.png", "latency_vs_ops.png"):
        assert (tmp_path / "qs" / "report" / png).stat().st_size > 1000
    assert list((tmp_path / "qs" / "search").glob("pareto_*.png"))
    assert (tmp_path / "qs" / "best.onnx").exists() and (tmp_path / "qs" / "best_tvm.so").exists()
    # a second run reuses the checkpoint, the measurements and the search state
    ck = tmp_path / "qs" / "supernet" / "checkpoint.pt"
    ck_before = (ck.stat().st_mtime_ns, ck.read_bytes())
    t = time.time()
    run_quickstart(cfg)
    second = time.time() - t
    summary2 = json.loads((tmp_path / "qs" / "report" / "summary.json").read_text())
    assert (ck.stat().st_mtime_ns, ck.read_bytes()) == ck_before   # not trained again (a timing would be noise)
    assert summary2["stages_s"]["profile layers (TVM binary kernels, local)"] < 0.5 * \
        summary["stages_s"]["profile layers (TVM binary kernels, local)"]
    assert second < first
    # the picks' extra measurements are reused too: the same three per pick, none taken again
    assert [d["measured_runs_ms"] for d in summary2["latency_vs_ops"]] == \
        [d["measured_runs_ms"] for d in summary["latency_vs_ops"]]
    kept = tmp_path / "qs" / "pick_latency.json"
    kept.write_text("{not json")                        # a damaged file: measured afresh, replaced
    run_quickstart(cfg)
    assert all(len(v) == 2 for v in json.loads(kept.read_text()).values())
