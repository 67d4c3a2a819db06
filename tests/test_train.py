import json
import subprocess
import sys

import pytest
import torch

from nasbnn_hw import NasBnnError, get_space, largest, smallest
from nasbnn_hw.nn.checkpoint import load_supernet
from nasbnn_hw.data.sets import DataError, load_splits
from nasbnn_hw.train.evaluate import SubnetEvaluator, accuracy, calibration_batches, recalibrate_bn
from nasbnn_hw.nn.subnet_io import load_subnet, recalibrated_subnet, save_subnet
from nasbnn_hw.train.trainer import SupernetTrainer, TrainConfig, finetune

SPACE = get_space("small16")


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits", 16, 1)


def _cfg(**kw):
    base = dict(epochs=2, batch_size=32, max_steps_per_epoch=4, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_data_splits_are_deterministic_and_disjoint(digits):
    again = load_splits("digits", 16, 1)
    assert torch.equal(digits.val.images, again.val.images)
    assert digits.train.images.shape[1:] == (1, 16, 16)
    assert len(digits.train) + len(digits.val) == 1437 and len(digits.test) == 360
    with pytest.raises(DataError, match="unknown data source 'nope'"):
        load_splits("nope", 16, 1)
    with pytest.raises(DataError, match="does not exist"):
        load_splits("cifar10:/nonexistent", 16, 1)


def test_idx_and_cifar_and_imagefolder_loaders(tmp_path):
    import gzip
    import pickle
    import struct

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    d = tmp_path / "idx"
    d.mkdir()
    for prefix, n in (("train", 30), ("t10k", 10)):
        imgs = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        with gzip.open(d / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBIII", 0, 8, 3, n, 28, 28) + imgs.tobytes())
        with gzip.open(d / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 8, 1, n) + labels.tobytes())
    s = load_splits(str(d), 16, 1, val_fraction=0.2)
    assert len(s.train) == 24 and len(s.val) == 6 and len(s.test) == 10
    c = tmp_path / "cifar-10-batches-py"
    c.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(c / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}, f)
    s = load_splits(f"cifar10:{c}", 16, 3)
    assert s.train.images.shape[1:] == (3, 16, 16) and len(s.test) == 4
    f = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (f / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(f / cls / f"{i}.png")
    s = load_splits(f"imagefolder:{f}", 16, 1, val_fraction=0.34)
    assert s.train.num_classes == 2 and len(s.train) + len(s.val) == 6


def _small_idx_and_cifar(tmp_path):
    """(IDX directory, CIFAR directory) of a few random images each, in the standard file layouts."""
    import gzip
    import pickle
    import struct

    import numpy as np
    rng = np.random.default_rng(1)
    d = tmp_path / "idx"
    d.mkdir()
    for prefix, n in (("train", 12), ("t10k", 4)):
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(
            struct.pack(">HBBIII", 0, 8, 3, n, 8, 8) + rng.integers(0, 255, (n, 8, 8), dtype=np.uint8).tobytes()))
        (d / f"{prefix}-labels-idx1-ubyte").write_bytes(   # one of them uncompressed: both forms are read
            struct.pack(">HBBI", 0, 8, 1, n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes())
    c = tmp_path / "cifar-10-batches-py"
    c.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (c / name).write_bytes(pickle.dumps({b"batch_label": b"x", b"labels": [0, 1, 2],
                                             b"data": rng.integers(0, 255, (3, 3072), dtype=np.uint8)}))
    return d, c


def test_corrupt_idx_and_cifar_files_are_one_data_error(tmp_path):
    """Truncated, byte-flipped and mistyped IDX and CIFAR files end in one DataError line naming the file,
    never a traceback from numpy, gzip or pickle (seeded fuzz)."""
    import gzip
    import pickle
    import random

    import numpy as np

    from _fuzz import byte_variants
    d, c = _small_idx_and_cifar(tmp_path)
    load_splits(str(d), 8, 1)
    load_splits(f"cifar10:{c}", 8, 3)
    rng, errors, tried = random.Random(5), 0, 0

    def attempt(source, path, data):
        nonlocal errors, tried
        good = path.read_bytes()
        path.write_bytes(data)
        tried += 1
        try:
            load_splits(source, 8, 1)
        except DataError as e:
            assert "\n" not in str(e) and path.name in str(e), str(e)
            errors += 1
        finally:
            path.write_bytes(good)
    for path in sorted(d.iterdir()):
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for _, v in byte_variants(raw, rng, 25):
            attempt(str(d), path, gzip.compress(v) if path.suffix == ".gz" else v)
        for _, v in byte_variants(path.read_bytes(), rng, 8):   # the compressed stream itself
            attempt(str(d), path, v)
    for _, v in byte_variants((c / "data_batch_2").read_bytes(), rng, 40):
        attempt(f"cifar10:{c}", c / "data_batch_2", v)
    mistyped = [{b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]},       # not 32 x 32 x 3
                {b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]},    # not bytes
                {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]},         # one label short
                {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, -1, 2]},     # a negative class
                {b"data": np.zeros((3, 3072), np.uint8), b"labels": ["a", "b", "c"]},
                {b"data": np.zeros((3, 3072), np.uint8)}, [1, 2, 3], "text"]
    for doc in mistyped:
        attempt(f"cifar10:{c}", c / "test_batch", pickle.dumps(doc))
    assert errors >= len(mistyped) + 60 and tried > errors / 2


def _killed_then_resumed(make, kill_at: int) -> SupernetTrainer:
    """Train with `make()`'s trainer until it is killed (^C) at global step `kill_at`; return a new trainer
    resumed from its last checkpoint, not yet fitted."""
    part = make()
    real_step = part.train_step

    def dying_step(x, y):
        if part.global_step == kill_at:
            raise KeyboardInterrupt
        return real_step(x, y)
    part.train_step = dying_step
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    resumed = make()
    assert resumed.resume()
    return resumed


def test_training_learns_and_resume_is_exact(tmp_path, digits):
    full = SupernetTrainer(SPACE, digits, _cfg(), tmp_path / "a", progress=False)
    hist = full.fit()
    assert len(hist) == 2 and hist[1]["teacher_loss"] < hist[0]["teacher_loss"] + 1.0

    # the same run, killed at step 7 (mid-epoch) with a checkpoint every 3 steps, then resumed
    resumed = _killed_then_resumed(lambda: SupernetTrainer(SPACE, digits, _cfg(checkpoint_every=3), tmp_path / "b",
                                                           progress=False), kill_at=7)
    assert (resumed.global_step, resumed.step_in_epoch) == (6, 2)
    resumed.fit()
    a, b = full.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(NasBnnError, match="trained with batch_size=32"):
        SupernetTrainer(SPACE, digits, _cfg(batch_size=16), tmp_path / "b", progress=False).resume()


def test_strategy_switches_change_training(tmp_path, digits):
    a = SupernetTrainer(SPACE, digits, _cfg(epochs=1), tmp_path / "a", progress=False)
    b = SupernetTrainer(SPACE, digits, _cfg(epochs=1, bi_teacher=False), tmp_path / "b", progress=False)
    a.fit(), b.fit()
    assert not torch.equal(a.net.fc.weight, b.net.fc.weight)


def test_eval_recalibration_finetune_and_subnet_file(tmp_path, digits):
    tr = SupernetTrainer(SPACE, digits, _cfg(epochs=2, max_steps_per_epoch=8), tmp_path / "t", progress=False)
    tr.fit()
    net = tr.net
    calib = calibration_batches(digits.train, 2, 64)
    ev = SubnetEvaluator(net, calib, digits.val)
    acc_l = ev(largest(SPACE))
    assert ev(largest(SPACE)) == acc_l and len(ev.cache) == 1
    assert 0 <= acc_l <= 100
    sub = recalibrated_subnet(net, smallest(SPACE), digits)
    recalibrate_bn(net, smallest(SPACE), calibration_batches(digits.train, 10, 256))
    assert accuracy(sub, digits.test)["top1"] == pytest.approx(accuracy(net, digits.test, arch=smallest(SPACE))["top1"])
    save_subnet(tmp_path / "s.pt", sub, net)
    back = load_subnet(tmp_path / "s.pt")
    x = digits.test.images[:8]
    with torch.no_grad():
        assert torch.equal(back(x), sub(x))
    ft, hist = finetune(net, smallest(SPACE), digits, epochs=1, lr=1e-3, batch_size=64, progress=False,
                        max_steps_per_epoch=5)
    assert len(hist) == 1 and ft.arch == smallest(SPACE)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nasbnn_hw.cli", *args], capture_output=True, text=True)


def test_cli_train_eval(tmp_path):
    out = tmp_path / "run"
    r = _cli("train", "--space", "small16", "--data", "digits", "--epochs", "1", "--batch-size", "64",
             "--max-steps-per-epoch", "3", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert (out / "checkpoint.pt").exists() and json.loads((out / "train.log").read_text().splitlines()[0])["epoch"] == 1
    r = _cli("train", "--space", "small16", "--data", "digits", "--epochs", "1", "--out", str(out), "--quiet")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = _cli("eval", "--checkpoint", str(out / "checkpoint.pt"), "--arch", "largest,random:2", "--calib-batches", "2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(rows) == 3 and all(0 <= row["top1"] <= 100 for row in rows)
    ck = load_supernet(out / "checkpoint.pt")
    assert ck.extra["data_config"]["source"] == "digits"


def _image_folder(root, classes=3, per_class=12, size=20):
    """A small train/ + val/ folder of PNG and JPEG files, one of them truncated."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                im = Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8))
                im.save(d / f"{i}.png") if i % 2 else im.save(d / f"{i}.jpg", quality=90)
    bad = root / "train" / "c0" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    return root


def test_streamed_folder_training_resume_is_exact_with_workers(tmp_path):
    data = load_splits(f"imagefolder:{_image_folder(tmp_path / 'img')}", 16, 1, val_fraction=0.2)
    assert type(data.train).__name__ == "FolderData" and len(data.val) == 3 * 2 and len(data.test) == 6
    cfg = dict(epochs=2, batch_size=8, max_steps_per_epoch=3, seed=1, workers=2)
    full = SupernetTrainer(SPACE, data, _cfg(**cfg), tmp_path / "a", progress=False)
    full.fit()
    resumed = _killed_then_resumed(lambda: SupernetTrainer(SPACE, data, _cfg(checkpoint_every=2, **cfg),
                                                           tmp_path / "b", progress=False), kill_at=4)
    assert resumed.global_step == 4
    resumed.fit()
    a, b = full.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    acc = accuracy(full.net, data.test, arch=largest(SPACE), workers=1)   # streamed evaluation
    assert acc["n"] == 6 and 0 <= acc["top1"] <= 100
    calib = calibration_batches(data.train, 2, 4)
    assert len(calib) == 2 and [x.shape[0] for x in calib] == [4, 4]     # decoded again on each pass
    recalibrate_bn(full.net, largest(SPACE), calib)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["digits", "folder"])
def test_torchrun_two_processes_match_single_process(tmp_path, source):
    import os
    import shutil
    data = "digits" if source == "digits" else f"imagefolder:{_image_folder(tmp_path / 'img', per_class=40)}"
    common = ["train", "--space", "small16", "--data", data, "--epochs", "1",
              "--batch-size", "64" if source == "digits" else "16", "--workers", "1",
              "--max-steps-per-epoch", "3", "--quiet", "--threads", "1"]
    r = _cli(*common, "--out", str(tmp_path / "single"))
    assert r.returncode == 0, r.stderr
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={port}", "--master_addr=127.0.0.1", "-m", "nasbnn_hw.cli", *common,
                        "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_supernet(tmp_path / "single" / "checkpoint.pt").supernet.state_dict()
    b = load_supernet(tmp_path / "ddp" / "checkpoint.pt").supernet.state_dict()
    init = SupernetTrainer(SPACE, load_splits(data, 16, 1), _cfg(seed=0, batch_size=16), tmp_path / "x", progress=False)
    init_sd = init.net.state_dict()
    # binarisation makes float reduction order visible (a sign may flip), so compare the two runs'
    # difference with how far training moved the weights: they must agree far better than that.
    diff = moved = 0.0
    for k in a:
        if a[k].dtype.is_floating_point and "running" not in k:
            diff += (a[k] - b[k]).pow(2).sum().item()
            moved += (a[k] - init_sd[k]).pow(2).sum().item()
    assert moved > 0
    assert diff < 0.01 * moved, (diff, moved)


# --- devices and mixed precision -------------------------------------------------------------------
def test_device_resolution_and_refusals():
    from nasbnn_hw.train.device import check_amp, resolve_device
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "tpu:0"):
        with pytest.raises(NasBnnError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(NasBnnError, match="no CUDA GPU is available"):
            resolve_device("cuda:0")
        with pytest.raises(NasBnnError, match="fp16 needs a CUDA device"):
            check_amp("fp16", torch.device("cpu"))
    assert check_amp("bf16", torch.device("cpu")) == "bf16" and check_amp("", torch.device("cpu")) is None
    with pytest.raises(NasBnnError, match="--amp 'fp8'"):
        check_amp("fp8", torch.device("cpu"))


def test_cli_device_errors_before_reading_data(tmp_path):
    r = _cli("train", "--space", "small16", "--data", "imagefolder:/nonexistent", "--device", "tpu",
             "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--device 'tpu' is not allowed" in r.stderr and len(r.stderr.splitlines()) == 1


def test_bf16_autocast_and_channels_last_steps_on_cpu(tmp_path, digits):
    """bf16 autocast trains (finite losses close to float32's first step); channels-last gives float32's
    gradients within float tolerance."""
    x, y = digits.train.images[:16], digits.train.labels[:16]
    steps = {}
    for name, kw in (("fp32", {}), ("bf16", {"amp": "bf16"}), ("nhwc", {"channels_last": True})):
        tr = SupernetTrainer(SPACE, digits, _cfg(epochs=1, **kw), tmp_path / name, progress=False)
        m = tr.train_step(x, y)
        steps[name] = (m, {n: p.grad.clone() for n, p in tr.net.named_parameters() if p.grad is not None})
    (m32, g32), (m16, _), (mcl, gcl) = steps["fp32"], steps["bf16"], steps["nhwc"]
    assert all(torch.isfinite(torch.tensor(v)) for v in m16.values())
    assert abs(m16["teacher_loss"] - m32["teacher_loss"]) < 0.1 * abs(m32["teacher_loss"])
    assert m16["teacher_loss"] != m32["teacher_loss"]       # autocast really changed the arithmetic
    assert abs(mcl["teacher_loss"] - m32["teacher_loss"]) < 1e-5
    assert g32.keys() == gcl.keys()
    big = max((g32[k] - gcl[k]).abs().max().item() / (g32[k].abs().max().item() + 1e-12) for k in g32)
    assert big < 1e-3, big
