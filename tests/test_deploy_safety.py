"""Deployment never destroys a file and refuses bad input early: `export` output checks (before compiling),
--batch and --space checks, validation of the exported .npz / .so and of predictor JSON, with fuzz loops
(seeded truncations, byte flips, mistyped values, missing keys) asserting only `NasBnnError` ever escapes."""
from __future__ import annotations

import io
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch

from _fuzz import byte_variants, value_variants
from nasbnn_hw.cli import main
from nasbnn_hw.errors import NasBnnError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(library path, its .npz bytes) of the smallest small16 subnet, batch 1."""
    from nasbnn_hw.deploy.tvm_net import compile_subnet
    from nasbnn_hw.core.sampling import smallest
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet
    torch.manual_seed(0)
    sup = SuperBNN(get_space("small16")).eval()
    net = compile_subnet(extract_subnet(sup, smallest(sup.space)).eval(), batch=1)
    path = net.export(tmp_path_factory.mktemp("net") / "net.so")
    return path, path.with_suffix(".npz").read_bytes()


def _snapshot(d):
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in sorted(d.iterdir())}


def _one_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasbnn-hw export: error:"), err
    assert all(n in err[0] for n in needles), err[0]
    return err[0]


# --- export: outputs that would destroy a file -----------------------------------------------------
def test_export_refuses_outputs_that_destroy_files(checkpoint, tmp_path, capsys):
    from nasbnn_hw.core.sampling import smallest
    from nasbnn_hw.core.space import get_space
    ck = tmp_path / "ck.pt"
    shutil.copy(checkpoint, ck)
    shutil.copy(checkpoint, tmp_path / "model.npz")   # a checkpoint whose name is another output's companion
    smallest(get_space("small16")).save(tmp_path / "arch.json")
    os.link(ck, tmp_path / "hard.so")
    os.symlink(ck, tmp_path / "sym.so")
    (tmp_path / "dir.so").mkdir()
    (tmp_path / "old.so").write_bytes(b"old library")
    (tmp_path / "comp.npz").write_bytes(b"old parameters")
    before = _snapshot(tmp_path)
    base = ["export", "--checkpoint", str(ck), "--arch", str(tmp_path / "arch.json"), "--no-recalibrate"]
    cases = [("ck.pt", ["checkpoint"]), ("hard.so", ["checkpoint"]), ("sym.so", ["checkpoint"]),
             ("arch.json", ["arch file"]), ("x.npz", ["same file as the library", "not ending in .npz"]),
             ("dir.so", ["existing directory"]), ("old.so", ["exists already", "--force"]),
             ("comp.so", ["comp.npz", "exists already"])]
    for out, needles in cases:
        assert main([*base, "--out", str(tmp_path / out)]) == 2, out
        named = "comp.npz" if out == "comp.so" else out
        _one_error(capsys, repr(str(tmp_path / named)), *needles)
    # --force never overrides an input, a directory or the library/companion clash
    for out in ("ck.pt", "hard.so", "arch.json", "dir.so", "x.npz"):
        assert main([*base, "--force", "--out", str(tmp_path / out)]) == 2
        _one_error(capsys)
    # the companion .npz of --out is the checkpoint; ONNX too refuses the checkpoint
    assert main(["export", "--checkpoint", str(tmp_path / "model.npz"), "--arch", "smallest", "--force",
                 "--out", str(tmp_path / "model.so")]) == 2
    _one_error(capsys, "model.npz", "checkpoint")
    assert main([*base, "--format", "onnx", "--force", "--out", str(ck)]) == 2
    _one_error(capsys, "ONNX file", "checkpoint")
    assert _snapshot(tmp_path) == before


def test_export_force_overwrites_atomically(checkpoint, tmp_path, capsys):
    from nasbnn_hw.deploy.tvm_net import TvmSubnet
    out = tmp_path / "net.so"
    out.write_bytes(b"old")
    args = ["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--no-recalibrate", "--space",
            "small16", "--out", str(out)]
    assert main(args) == 2 and out.read_bytes() == b"old"
    _one_error(capsys, "exists already")
    assert main([*args, "--force"]) == 0
    assert "same top-1: True" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.npz", "net.so"]   # no temporary left behind
    net = TvmSubnet.load(out)
    assert np.isfinite(net(np.zeros(net.input_shape, np.float32))).all()


def test_export_killed_midway_leaves_old_files(exported, tmp_path, monkeypatch):
    import nasbnn_hw.deploy.kernels.targets as targets
    from nasbnn_hw.deploy.tvm_net import TvmSubnet
    so, npz = exported
    shutil.copy(so, tmp_path / "n.so")
    (tmp_path / "n.npz").write_bytes(npz)
    net = TvmSubnet.load(tmp_path / "n.so")
    before = _snapshot(tmp_path)

    def half_written(executable, path, target):
        path.write_bytes(b"half a library")
        raise KeyboardInterrupt
    monkeypatch.setattr(targets, "export_library", half_written)
    with pytest.raises(KeyboardInterrupt):
        net.export(tmp_path / "n.so")

    def whole(executable, path, target):
        path.write_bytes(b"new library")
        return path

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(targets, "export_library", whole)
    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        net.export(tmp_path / "n.so")
    assert _snapshot(tmp_path) == before


# --- export: --batch and --space -------------------------------------------------------------------
def test_batch_must_be_positive(checkpoint, tmp_path, capsys):
    from nasbnn_hw.deploy.tvm_net import DeployError, compile_random_subnet
    from nasbnn_hw.core.sampling import smallest
    from nasbnn_hw.core.space import get_space
    for bad in ("0", "-3", "x"):
        assert main(["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--batch", bad,
                     "--out", str(tmp_path / "n.so")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--batch" in err[0] and bad in err[0], err
    space = get_space("small16")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DeployError, match="batch must be a positive integer"):
            compile_random_subnet(smallest(space), space, batch=bad)
    assert not list(tmp_path.iterdir())


def test_space_other_than_the_checkpoints_is_refused(checkpoint, tmp_path, capsys):
    base = ["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--no-recalibrate",
            "--out", str(tmp_path / "n.so")]
    assert main([*base, "--space", "small"]) == 2            # same stages, other resolution
    _one_error(capsys, "'small'", "'small16'", "resolution")
    assert main([*base, "--space", "imagenet"]) == 2
    _one_error(capsys, "imagenet", "small16")
    assert not list(tmp_path.iterdir())


# --- TvmSubnet.load: the .npz and the .so ----------------------------------------------------------
def _arrays(npz: bytes) -> dict:
    with np.load(io.BytesIO(npz), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _meta(arrays: dict) -> dict:
    return json.loads(arrays["__meta__"].tobytes())


def _with_meta(arrays: dict, meta: dict | str) -> dict:
    text = meta if isinstance(meta, str) else json.dumps(meta)
    return {**arrays, "__meta__": np.frombuffer(text.encode(), np.uint8)}


def _savez(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _load(so, tmp_path, npz: bytes, name: str = "v"):
    from nasbnn_hw.deploy.tvm_net import TvmSubnet
    lib = tmp_path / f"{name}.so"
    if not lib.exists():
        shutil.copy(so, lib)
    lib.with_suffix(".npz").write_bytes(npz)
    return TvmSubnet.load(lib)


def test_npz_is_validated_at_load(exported, tmp_path):
    from nasbnn_hw.deploy.tvm_net import DeployError, TvmSubnet
    so, npz = exported
    a = _arrays(npz)
    meta = _meta(a)
    assert _load(so, tmp_path, npz).param_names == meta["param_names"]
    p1 = a["p0001"]
    cases = [({**a, "p0001": p1[..., :-1]}, f"array 'p0001' ({meta['param_names'][1]}) has shape"),
             ({**a, "p0001": p1.astype(np.float64 if p1.dtype != np.float64 else np.float32)}, "has dtype"),
             ({k: v for k, v in a.items() if k != "p0002"}, "missing array 'p0002'"),
             ({**a, "p9999": p1}, "unexpected arrays p9999"),
             ({k: v for k, v in a.items() if k != "__meta__"}, "missing array '__meta__'"),
             ({**a, "__meta__": np.array([{"x": 1}], dtype=object)}, "dtype object, expected uint8"),
             (_with_meta(a, "{not json"), "bad metadata (invalid JSON"),
             (_with_meta(a, json.dumps(meta).replace('"input_shape": [', '"input_shape": [NaN, ')), "NaN is not a finite"),
             (_with_meta(a, [1, 2]), "a JSON object expected"),
             (_with_meta(a, {**meta, "format": "other"}), "format 'other' not supported"),
             (_with_meta(a, {k: v for k, v in meta.items() if k != "layers"}), "missing 'layers'"),
             (_with_meta(a, {**meta, "input_shape": [1, "1", 16, 16]}), "'input_shape' must be a list of positive"),
             (_with_meta(a, {**meta, "input_shape": [2, 1, 16, 16]}), "'output_shape' [1, 10]"),
             (_with_meta(a, {**meta, "output_shape": [1, 11]}), "'output_shape' [1, 11]"),
             (_with_meta(a, {**meta, "param_names": meta["param_names"][:-1]}), "'param_names'"),
             (_with_meta(a, {**meta, "layers": [{**meta["layers"][0], "kind": "conv"}, *meta["layers"][1:]]}),
              "layer 0"),
             (_with_meta(a, {**meta, "layers": meta["layers"][1:], "schedules": meta["schedules"][1:]}), "layer 0"),
             (_with_meta(a, {**meta, "schedules": "nibble"}), "'schedules' must list one entry per layer"),
             (_with_meta(a, {**meta, "schedules": [None, {"pixels": "7"}, *meta["schedules"][2:]]}),
              "layer 1 schedule: {'pixels': '7'} is not a schedule")]
    for arrays, needle in cases:
        with pytest.raises(DeployError) as e:
            _load(so, tmp_path, _savez(arrays))
        assert needle in str(e.value) and "v.npz" in str(e.value), (needle, str(e.value))
    for data in (npz[:len(npz) // 2], b"not a zip at all", b""):
        with pytest.raises(DeployError, match="truncated or not a zip"):
            _load(so, tmp_path, data)
    buf = io.BytesIO()
    np.save(buf, p1)
    with pytest.raises(DeployError, match="a single .npy array"):
        _load(so, tmp_path, buf.getvalue())
    with pytest.raises(DeployError, match="is a parameter file: give the library"):
        TvmSubnet.load(tmp_path / "v.npz")


def test_so_is_checked_at_load(exported, tmp_path):
    from nasbnn_hw.deploy.tvm_net import DeployError, TvmSubnet
    so, npz = exported
    (tmp_path / "n.npz").write_bytes(npz)
    with pytest.raises(DeployError, match="n.so' does not exist"):
        TvmSubnet.load(tmp_path / "n.so")
    (tmp_path / "n.so").write_bytes(so.read_bytes()[:1000])
    with pytest.raises(DeployError, match="not the library n.npz was exported with"):
        TvmSubnet.load(tmp_path / "n.so")
    a = _arrays(npz)
    (tmp_path / "n.so").write_bytes(b"not a shared library")
    (tmp_path / "n.npz").write_bytes(_savez(_with_meta(a, {k: v for k, v in _meta(a).items()
                                                            if k != "library_sha256"})))
    with pytest.raises(DeployError, match="cannot load compiled subnet"):   # an old export: no checksum
        TvmSubnet.load(tmp_path / "n.so")


def _npz_variants(npz: bytes, rng: random.Random, n: int = 100):
    a = _arrays(npz)
    for _, data in byte_variants(npz, rng, 2 * n):
        yield data
    for _, m in value_variants(_meta(a), rng, n):
        yield _savez(_with_meta(a, json.dumps(m)))   # json writes NaN: the loader must refuse it
    for _ in range(n):
        k = rng.choice(sorted(a))
        if rng.random() < 0.5:
            yield _savez({x: v for x, v in a.items() if x != k})
        else:
            yield _savez({**a, k: rng.choice([a[k].astype(np.int8), a[k].ravel()[:1], np.zeros((2, 2))])})


def test_npz_fuzz_raises_only_nasbnn_errors(exported, tmp_path):
    so, npz = exported
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for data in _npz_variants(npz, rng):
        try:
            _load(so, tmp_path, data)
            outcomes["ok"] += 1
        except NasBnnError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 300, outcomes


# --- predictor JSON --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor_json(tmp_path_factory):
    from cost_models import LatencyPredictor
    from cost_models._layers import space_layer_configs
    from nasbnn_hw.core.space import get_space
    cfgs = space_layer_configs(get_space("small16"))
    lat = [1e-6 * (1 + c.bops() / 1e5 + c.flops() / 1e5) for c in cfgs]
    p = LatencyPredictor(n_estimators=4).fit(cfgs, lat, device="dev")
    p.held_out_ = {"layers": {"n": 1, "kendall_tau": float("nan")}}   # an undefined metric is stored as null
    path = tmp_path_factory.mktemp("pred") / "p.json"
    p.save(path)
    return path, cfgs


def test_predictor_json_is_validated_at_load(predictor_json, tmp_path):
    from cost_models import IncompatibleArtifactError, LatencyPredictor
    path, cfgs = predictor_json
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["metadata"]["held_out"]["layers"]["kendall_tau"] is None
    good = LatencyPredictor.load(path)
    assert np.isfinite(good.predict_layer_members(cfgs)).all()
    d = json.loads(text)

    def edited(fn):
        e = json.loads(text)
        fn(e)
        return json.dumps(e)
    cases = [(text.replace('"coef":[', '"coef":[NaN,', 1), "field 'base.coef[0]' is NaN"),
             (text.replace('"threshold":[', '"threshold":[Infinity,', 1), "field 'trees[0].threshold[0]' is Infinity"),
             (text.replace('"floor":', '"floor":1e999,"x":', 1), "field 'base.floor' is inf"),
             (edited(lambda e: e["correction"].update(slope="1.0")), "field 'correction.slope' must be a number"),
             (edited(lambda e: e["correction"].pop("n")), "missing field 'correction.n'"),
             (edited(lambda e: e.pop("base")), "missing field 'base.coef'"),
             (edited(lambda e: e["trees"][1].update(left="abc")), "field 'trees[1]'"),
             (edited(lambda e: e["trees"][0].update(value=[1e6] * len(e["trees"][0]["value"]))), "within +-50"),
             (edited(lambda e: e["base"].update(coef=e["base"]["coef"][:-1])), "field 'base.coef' must be"),
             (edited(lambda e: e["trees"].pop()), "holds 3 trees"),
             (edited(lambda e: e["metadata"].update(params={"n_estimators": "4"})), "metadata.params"),
             (edited(lambda e: e.update(metadata=[])), "field 'metadata' must be an object"),
             (edited(lambda e: e["metadata"].update(n_train_layers=None)), "metadata.n_train_layers"),
             (edited(lambda e: e["metadata"]["feature_schema"].update(names=5)), "feature schema"),
             ("[1, 2]", "is not a latency predictor"), ("{", "not a JSON predictor file"),
             ('{"a": 1' + "1" * 5000 + "}", "not a JSON predictor file"), ("\udcff", "not a JSON")]
    assert d["trees"]
    for i, (content, needle) in enumerate(cases):
        bad = tmp_path / f"bad{i}.json"
        bad.write_bytes(content.encode("utf-8", "surrogateescape"))
        with pytest.raises(IncompatibleArtifactError) as e:
            LatencyPredictor.load(bad)
        assert needle in str(e.value) and str(bad) in str(e.value), (needle, str(e.value))


def _predictor_variants(text: str, rng: random.Random, n: int = 100):
    raw = text.encode()
    for _, data in byte_variants(raw, rng, 2 * n):
        yield data
    for _, doc in value_variants(json.loads(text), rng, 2 * n):
        yield json.dumps(doc).encode()     # json writes NaN: the loader must refuse it


def test_predictor_fuzz_raises_only_nasbnn_errors(predictor_json, tmp_path):
    from cost_models import LatencyPredictor
    path, cfgs = predictor_json
    rng = random.Random(99)
    bad, refused = tmp_path / "fuzz.json", 0
    for data in _predictor_variants(path.read_text(), rng):
        bad.write_bytes(data)
        try:
            p = LatencyPredictor.load(bad)
        except NasBnnError:
            refused += 1
            continue
        assert np.isfinite(p.predict_layer_members(cfgs)).all()   # what loads predicts finite latencies
    assert refused > 250, refused

