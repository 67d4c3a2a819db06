import json

from nasbnn_hw.cli import main


def test_search_cli_writes_result_plots_and_best_archs_then_export(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--space", "small16", "--data", "digits", "--epochs", "1", "--batch-size", "64",
                 "--max-steps-per-epoch", "3", "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "search"
    assert main(["search", "--checkpoint", str(run / "checkpoint.pt"), "--cost", "ops",
                 "--constraint", "ops <= 0.05M", "--constraint", "params <= 1M", "--searcher", "evolutionary",
                 "--population", "8", "--generations", "1", "--mutations", "4", "--crossovers", "4",
                 "--calib-batches", "1", "--val-limit", "64", "--budgets", "0.02M,0.05M", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["cost_model"] == "ops" and len(result["evaluated"]) >= 8
    assert all(c["costs"]["ops"] <= 0.05e6 for c in result["evaluated"])
    best = json.loads((out / "best.json").read_text())
    assert [b["budget"] for b in best] == [0.02e6, 0.05e6][-len(best):] and best
    assert (out / "pareto_ops.png").stat().st_size > 1000
    arch_file = best[-1]["arch_file"]
    assert main(["export", "--checkpoint", str(run / "checkpoint.pt"), "--arch", arch_file, "--format", "onnx",
                 "--out", str(tmp_path / "best.onnx")]) == 0
    assert "same top-1: True" in capsys.readouterr().out
    # a constraint nothing meets fails at once, naming the cheapest cost
    assert main(["search", "--checkpoint", str(run / "checkpoint.pt"), "--cost", "ops",
                 "--constraint", "ops <= 1K", "--out", str(tmp_path / "none"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ops" in err and len(err.strip().splitlines()) == 1
