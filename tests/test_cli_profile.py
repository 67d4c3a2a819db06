"""`nasbnn-hw export` and `nasbnn-hw profile` from the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nasbnn_hw.cli import main


def test_export_tvm_and_reload(checkpoint, tmp_path, capsys):
    out = tmp_path / "net.so"
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--format", "tvm",
                 "--out", str(out)]) == 0
    assert "same top-1: True" in capsys.readouterr().out
    from nasbnn_hw.deploy.tvm_net import TvmSubnet
    net = TvmSubnet.load(out)
    assert np.isfinite(net(np.zeros(net.input_shape, np.float32))).all()


def test_export_onnx_checked_with_onnxruntime(checkpoint, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "largest", "--format", "onnx",
                 "--no-recalibrate", "--out", str(out)]) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out and out.stat().st_size > 0


def test_cli_errors_are_one_line(checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--arch", "largest", "--out",
                 str(tmp_path / "x.so")]) == 2
    assert main(["profile", "--space", "small16", "--store", str(tmp_path / "m.db")]) == 2
    assert main(["profile", "--space", "nosuchspace", "--layers", "--store", str(tmp_path / "m.db")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("nasbnn-hw ") for line in err)
    assert "does not exist" in err[0] and "nothing to profile" in err[1] and "unknown space" in err[2]


def test_export_needs_data_for_recalibration_and_takes_subnet_files(tmp_path, capsys):
    from nasbnn_hw.nn.checkpoint import save_supernet
    from nasbnn_hw.core.sampling import smallest
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.nn.subnet_io import save_subnet
    from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet
    net = SuperBNN(get_space("small16"))
    save_supernet(tmp_path / "nodata.pt", net)
    assert main(["export", "--checkpoint", str(tmp_path / "nodata.pt"), "--arch", "largest", "--format", "onnx",
                 "--out", str(tmp_path / "a.onnx")]) == 2
    assert "pass --data" in capsys.readouterr().err
    save_subnet(tmp_path / "sub.pt", extract_subnet(net, smallest(net.space)), net)
    assert main(["export", "--checkpoint", str(tmp_path / "sub.pt"), "--format", "onnx",
                 "--out", str(tmp_path / "b.onnx")]) == 0
    assert "same top-1: True" in capsys.readouterr().out


def test_active_profiling_measures_its_budget_in_rounds(tmp_path, capsys):
    from nasbnn_hw.profiling.store import MeasurementStore
    db = tmp_path / "m.db"
    assert main(["profile", "--space", "small16", "--active", "--budget", "5", "--round-size", "2",
                 "--repeat", "3", "--warmup", "1", "--store", str(db), "--quiet"]) == 0
    with MeasurementStore(db) as store:
        rows = store.query(kind="layer")
    assert len(rows) == 5 and len({r.key for r in rows}) == 5
    assert main(["profile", "--space", "small16", "--active", "--store", str(db)]) == 2
    assert "--budget N" in capsys.readouterr().err
    assert main(["profile", "--space", "small16", "--layers", "--rounds", "0", "--store", str(db)]) == 2
    assert "--rounds: 0 is not allowed; expected an integer from 1" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_measures_what_is_missing_then_reports(tmp_path, capsys):
    from nasbnn_hw.profiling.store import MeasurementStore
    space = tmp_path / "tiny.toml"
    space.write_text("name='tiny'\nresolution=16\nin_channels=1\nnum_classes=10\n"
                     "[[stage]]\nchannels=[8,16]\ndepth=[1]\nkernel=[3]\ngroups1=[1]\ngroups2=[1]\nstride=2\n"
                     "[[stage]]\nchannels=[16,32]\ndepth=[1,2]\nkernel=[3]\ngroups1=[1,2]\ngroups2=[1]\nstride=2\n")
    db, out = tmp_path / "m.db", tmp_path / "report"
    assert main(["compare", "--device", "local", "--store", str(db), "--space", str(space), "--measure",
                 "--subnets", "3", "--out", str(out)]) == 0
    with MeasurementStore(db) as store:
        n_sub, n_lay = len(store.query(kind="subnet")), len(store.query(kind="layer"))
    assert n_sub == 9 and n_lay > 0
    assert (out / "report.md").exists() and (out / "points.csv").read_text().count("\n") == 4
    # a second run measures nothing new
    assert main(["compare", "--device", "local", "--store", str(db), "--space", str(space), "--measure",
                 "--subnets", "3", "--out", str(out)]) == 0
    with MeasurementStore(db) as store:
        assert len(store.query(kind="subnet")) == 9
    # the device against itself: 2 of the compared subnets compiled and timed again, the store untouched
    assert main(["compare", "--device", "local", "--store", str(db), "--space", str(space), "--subnets", "3",
                 "--remeasure", "2", "--out", str(out)]) == 0
    rep = json.loads((out / "repeatability.json").read_text())
    assert rep["n"] == 2 and set(rep) == {"n", "remeasured", "lut", "predictor", "first_s", "second_s"}
    assert len(rep["first_s"]) == len(rep["second_s"]) == 2 and min(rep["second_s"]) > 0
    assert 0 <= rep["remeasured"]["largest_swap"] and (out / "scatter_remeasured.png").stat().st_size > 1000
    assert 0 <= rep["remeasured"]["mape"] < 100 and rep["remeasured"]["n"] == 2
    assert "## Measurement repeatability" in (out / "report.md").read_text()
    assert "measured again" in capsys.readouterr().out
    with MeasurementStore(db) as store:
        assert len(store.query(kind="subnet")) == 9
    assert main(["compare", "--device", "local", "--store", str(db), "--subnets", "3", "--remeasure", "-1",
                 "--out", str(out)]) == 2
    assert "--remeasure: -1 is not allowed" in capsys.readouterr().err


def test_active_subnets_are_the_least_certain(tmp_path):
    from cost_models.active import next_batch
    from cost_models.learned import PredictorCostModel, fit_predictor
    from nasbnn_hw.profiling.profiler import random_subnets, subnet_key
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.profiling.store import MeasurementStore
    from nasbnn_hw.profiling.tuning import ScheduleBook
    db = tmp_path / "m.db"
    assert main(["profile", "--space", "small16", "--active", "--budget", "8", "--round-size", "4",
                 "--repeat", "3", "--warmup", "1", "--store", str(db), "--quiet"]) == 0
    space = get_space("small16")
    with MeasurementStore(db) as store:
        expected = next_batch(PredictorCostModel(space, fit_predictor(store, "local", test_fraction=0.0), "local"),
                              random_subnets(space, 40, seed=0), 2)
    assert main(["profile", "--space", "small16", "--active", "--subnets", "2",
                 "--repeat", "3", "--warmup", "1", "--store", str(db), "--quiet"]) == 0
    with MeasurementStore(db) as store:
        got = {m.key for m in store.query(kind="subnet")}
        book = ScheduleBook.load(store, "local", "local")
    assert got == {subnet_key(a, space, book) for a in expected}
