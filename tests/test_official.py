import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasbnn_hw import CheckpointError, get_space, largest, sample_uniform, smallest, count_ops
from nasbnn_hw.nn.checkpoint import import_official_search, load_official_candidate, load_supernet
from nasbnn_hw.nn.supernet import SuperBNN

from test_supernet import _randomize

TSV = Path(__file__).parent / "data" / "official_superbnn_imagenet_state_dict.tsv"


def _official_shapes():
    out = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#"):
            continue
        k, s = line.split("\t")
        out[k] = () if s == "scalar" else tuple(int(v) for v in s.split("x"))
    return out


def test_state_dict_names_and_shapes_match_official():
    ref = _official_shapes()
    mine = {k: tuple(v.shape) for k, v in SuperBNN(get_space("imagenet")).state_dict().items()}
    ref.pop("biggest_cand"), ref.pop("smallest_cand")
    assert mine == ref


def _official_checkpoint(tmp_path, net):
    sp = net.space
    sd = {"module." + k: v.clone() for k, v in net.state_dict().items()}
    sd["module.biggest_cand"] = torch.tensor(largest(sp).to_official(sp))
    sd["module.smallest_cand"] = torch.tensor(smallest(sp).to_official(sp))
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": sd, "epoch": 511, "best_acc1": 0.0}, path)
    return path


def test_official_checkpoint_loads_with_same_logits(tmp_path):
    sp = get_space("imagenet")
    net = SuperBNN(sp)
    _randomize(net, seed=3)
    net.eval()
    path = _official_checkpoint(tmp_path, net)
    loaded = load_supernet(path).supernet.eval()
    x = torch.randn(2, 3, 32, 32)  # the supernet is resolution-agnostic; small input keeps this fast
    for a in [largest(sp), smallest(sp), sample_uniform(sp, random.Random(5))]:
        with torch.no_grad():
            assert torch.equal(net(x, a), loaded(x, a))
    # and via the converter CLI
    out = tmp_path / "converted.pt"
    r = subprocess.run([sys.executable, "-m", "nasbnn_hw.cli", "convert-official", "--checkpoint", str(path),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    conv = load_supernet(out).supernet.eval()
    with torch.no_grad():
        assert torch.equal(conv(x, smallest(sp)), net(x, smallest(sp)))


class Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_unsafe_and_wrong_checkpoints_are_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_supernet(p)
    p = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"features.0.0.conv.weight": torch.zeros(3)}}, p)
    with pytest.raises(CheckpointError, match="does not fit this supernet"):
        load_supernet(p)
    p = tmp_path / "small.pth"
    torch.save({"state_dict": SuperBNN(get_space("small")).state_dict()}, p)
    with pytest.raises(CheckpointError, match="does not fit|expects"):
        load_supernet(p, space="imagenet")
    p = tmp_path / "junk.pth"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_supernet(p)
    r = subprocess.run([sys.executable, "-m", "nasbnn_hw.cli", "convert-official", "--checkpoint",
                        str(tmp_path / "evil.pth"), "--out", str(tmp_path / "o.pt")], capture_output=True, text=True)
    assert r.returncode == 2 and "arbitrary unpickling" in r.stderr and "Traceback" not in r.stderr


def test_import_official_search_result(tmp_path):
    sp = get_space("imagenet")
    archs = [sample_uniform(sp, random.Random(i)) for i in range(5)]
    cands = [tuple(tuple(r) for r in a.to_official(sp)) for a in archs]
    vis = {c: {"acc": 60.0 + i, "ops": count_ops(a, sp).ops / 1e6, "visited": True}
           for i, (c, a) in enumerate(zip(cands, archs))}
    info = {"pareto_global": {10: cands[1], 20: cands[3]}, "vis_dict": vis, "memory": [], "candidates": cands,
            "epoch": 20}
    torch.save(info, tmp_path / "info.pth.tar")
    recs = import_official_search(tmp_path / "info.pth.tar", sp)
    assert [r.arch for r in recs] == archs
    assert [r.acc for r in recs] == [60.0, 61.0, 62.0, 63.0, 64.0]
    assert [r.pareto for r in recs] == [False, True, False, True, False]
    assert recs[2].ops == pytest.approx(count_ops(archs[2], sp).ops / 1e6)
    torch.save(torch.tensor(archs[4].to_official(sp)), tmp_path / "cand.pt")
    assert load_official_candidate(tmp_path / "cand.pt", sp) == archs[4]


def test_search_the_official_checkpoint_directly_on_an_image_folder(tmp_path):
    """`search --checkpoint <official .pth.tar> --data imagefolder:DIR` with no conversion step: the official
    layout is read, the imagenet space assumed, the folder streamed at 224 (fitness = images held out of
    train/)."""
    import json

    import numpy as np
    from PIL import Image

    from nasbnn_hw.cli import main
    sp = get_space("imagenet")
    torch.manual_seed(0)
    ck = _official_checkpoint(tmp_path, SuperBNN(sp))
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("n01", "n02"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (240, 300, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / c / f"{i}.jpg")
    out = tmp_path / "search"
    rc = main(["search", "--checkpoint", str(ck), "--data", f"imagefolder:{tmp_path / 'img'}", "--cost", "ops",
               "--searcher", "random", "--budget", "3", "--calib-batches", "1", "--calib-batch-size", "2",
               "--workers", "0", "--out", str(out), "--quiet"])
    assert rc == 0
    res = json.loads((out / "result.json").read_text())
    assert len(res["evaluated"]) == 3
    assert all(0 <= c["accuracy"] <= 100 and c["costs"]["ops"] > 20e6 for c in res["evaluated"])
