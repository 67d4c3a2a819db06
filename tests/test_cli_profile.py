"""`nasbnn-hw export` and `nasbnn-hw profile` from the command line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nasbnn_hw.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from nasbnn_hw.checkpoint import save_supernet
    from nasbnn_hw.space import get_space
    from nasbnn_hw.supernet import SuperBNN
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "supernet.pt"
    save_supernet(path, SuperBNN(get_space("small16")))
    return path


def test_export_tvm_and_reload(checkpoint, tmp_path, capsys):
    out = tmp_path / "net.so"
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--format", "tvm",
                 "--out", str(out)]) == 0
    assert "same top-1: True" in capsys.readouterr().out
    from nasbnn_hw.deploy_tvm import TvmSubnet
    net = TvmSubnet.load(out)
    assert np.isfinite(net(np.zeros(net.input_shape, np.float32))).all()


def test_export_onnx_checked_with_onnxruntime(checkpoint, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "largest", "--format", "onnx",
                 "--out", str(out)]) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out and out.stat().st_size > 0


def test_cli_errors_are_one_line(checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--arch", "largest", "--out",
                 str(tmp_path / "x.so")]) == 2
    assert main(["profile", "--space", "small16", "--store", str(tmp_path / "m.db")]) == 2
    assert main(["profile", "--space", "nosuchspace", "--layers", "--store", str(tmp_path / "m.db")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("nasbnn-hw ") for line in err)
    assert "does not exist" in err[0] and "nothing to profile" in err[1] and "unknown space" in err[2]
