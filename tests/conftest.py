"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """An untrained small16 supernet checkpoint that records `digits` as its data (fast to export)."""
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.nn.checkpoint import save_supernet
    from nasbnn_hw.nn.supernet import SuperBNN
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "supernet.pt"
    save_supernet(path, SuperBNN(get_space("small16")), data_config={"source": "digits"})
    return path
