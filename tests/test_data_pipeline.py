"""The streaming image pipeline: torchvision-exact transforms, lazy folders, corrupt files, workers, memory."""
from __future__ import annotations

import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from nasbnn_hw.data.folder import FolderData, batches, fitness_split, scan_folder
from nasbnn_hw.data.sets import DataError
from nasbnn_hw.data.transforms import (CifarTrain, EvalTransform, TrainTransform, random_resized_crop_params,
                                       sample_rng)

REPO = Path(__file__).resolve().parents[1]


def _rgb(w: int, h: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return np.clip(base + r.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _write_truncated_jpeg(p: Path) -> None:
    Image.fromarray(_rgb(120, 90, 7)).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """root/{train,val}/{a,b,c}: RGB/L JPEG+PNG, CMYK JPEG, palette PNG, RGBA, 16-bit grey; 2 bad files in c."""
    root = tmp_path_factory.mktemp("imgs")
    for split, n in (("train", 4), ("val", 2)):
        for ci, c in enumerate("abc"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                a = _rgb(80 + 8 * i, 60 + 4 * ci, 100 * ci + i + (50 if split == "val" else 0))
                Image.fromarray(a).save(d / f"{c}_{i:02d}.{'jpg' if i % 2 else 'png'}")
            Image.fromarray(a).convert("L").save(d / f"{c}_10_grey.{'png' if ci % 2 else 'JPG'}")
    t = root / "train"
    Image.fromarray(_rgb(70, 50, 1)).convert("CMYK").save(t / "b" / "b_11_cmyk.jpg")
    Image.fromarray(np.full((40, 30), 40000, np.uint16)).save(t / "b" / "b_12_grey16.png")
    pal = Image.fromarray(_rgb(64, 48, 2)).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(t / "c" / "c_11_palette.png", transparency=0)
    Image.fromarray(_rgb(50, 50, 3)).convert("RGBA").save(t / "c" / "c_12_rgba.png")
    _write_truncated_jpeg(t / "c" / "c_13_trunc.jpg")
    Image.fromarray(_rgb(60, 60, 4)).save(t / "c" / "c_14_ok.png")
    (t / "c" / "c_15_notimage.png").write_text("this is not an image\n")
    (t / "c" / "notes.txt").write_text("ignored: not an image extension\n")
    return root


def _bad(info) -> list[int]:
    return [i for i, (p, _) in enumerate(info["train"]) if p.name in ("c_13_trunc.jpg", "c_15_notimage.png")]


def test_scan_layouts(folder, tmp_path):
    info = scan_folder(folder)
    assert info["classes"] == ["a", "b", "c"]
    tr, va = info["train"], info["val"]
    assert [p.name for p, _ in tr] == sorted(p.name for p, _ in tr)  # classes in order, files sorted
    assert [y for _, y in tr] == sorted(y for _, y in tr)
    assert len(tr) == 5 + 7 + 10 and len(va) == 9 and not any(p.name == "notes.txt" for p, _ in tr)
    assert any(p.name == "a_10_grey.JPG" for p, _ in tr)  # extensions are case-insensitive
    flat = scan_folder(folder / "train")  # class-per-folder: no val split
    assert flat["val"] is None and flat["classes"] == ["a", "b", "c"] and flat["train"] == tr
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        scan_folder(tmp_path / "empty")
    (tmp_path / "noimg" / "x").mkdir(parents=True)
    (tmp_path / "noimg" / "x" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="noimg"):
        scan_folder(tmp_path / "noimg")


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_range(folder, channels):
    info = scan_folder(folder)
    for tf in (TrainTransform(32), EvalTransform(32)):
        ds = FolderData(info["train"], info["classes"], 32, channels, tf)
        assert len(ds) == len(info["train"]) and ds.num_classes == 3
        assert ds.labels.dtype == torch.long and ds.labels.tolist() == [y for _, y in info["train"]]
        for i in range(len(ds)):
            x, y = ds[(0, i)]
            assert x.shape == (channels, 32, 32) and x.dtype == torch.float32 and 0 <= y < 3
            assert x.min() >= -1 and x.max() <= 1
        assert len(ds.skipped) == 2
    x, _ = FolderData(info["train"], info["classes"], 32, 3, EvalTransform(32))[(0, 0)]
    assert x.min() < -0.5 and x.max() > 0.5  # the gradient spans the range: normalisation is (v - .5) / .5


def test_determinism_per_seed_epoch_index(folder):
    info = scan_folder(folder)
    a = FolderData(info["train"], info["classes"], 32, 3, TrainTransform(32), seed=3)
    b = FolderData(info["train"], info["classes"], 32, 3, TrainTransform(32), seed=3)
    c = FolderData(info["train"], info["classes"], 32, 3, TrainTransform(32), seed=4)
    for i in (0, 5, 9):
        assert torch.equal(a[(2, i)][0], b[(2, i)][0])
        assert not torch.equal(a[(2, i)][0], a[(3, i)][0])  # a new epoch: new crops
        assert not torch.equal(a[(2, i)][0], c[(2, i)][0])
    assert sample_rng(1, 2, 3).random() == sample_rng(1, 2, 3).random() != sample_rng(1, 3, 3).random()
    with pytest.raises(DataError):
        sample_rng(0, -1, 0)


def test_eval_transform_resize_and_center_crop():
    # 768x512 with R = x // 2, G = y // 2: an exact 2x bilinear reduction to 384x256 gives R = c, G = r
    yy, xx = np.mgrid[0:512, 0:768]
    img = Image.fromarray(np.stack([(xx // 2) % 256, yy // 2, np.full_like(xx, 77)], -1).astype(np.uint8))
    tf = EvalTransform(224)
    assert tf.resize == 256
    x = tf(img, sample_rng(0, 0, 0))
    assert torch.equal(x, tf(img, sample_rng(5, 6, 7))) and torch.equal(x, tf(img, None))  # no randomness
    v = torch.round((x + 1) / 2 * 255).to(torch.int64)  # back to 8-bit levels
    top, left = 16, 80  # round((256 - 224) / 2), round((384 - 224) / 2)
    assert v.shape == (3, 224, 224)
    assert (v[0, 0, 0], v[1, 0, 0]) == (left, top)
    assert (v[0, 223, 223], v[1, 223, 223]) == ((left + 223) % 256, top + 223)
    assert (v[2] == 77).all()
    # no resize when the shorter side already is 256; the crop offset uses round(), like torchvision
    small = Image.fromarray(np.stack([xx[:256, :321] % 256, yy[:256, :321], xx[:256, :321] * 0], -1).astype(np.uint8))
    v = torch.round((tf(small) + 1) / 2 * 255).to(torch.int64)
    assert (v[0, 0, 0], v[1, 0, 0], v[0, 0, 223]) == (48, 16, (48 + 223) % 256)  # round(97 / 2) = 48
    assert EvalTransform(32).resize == 37 and EvalTransform(64, resize=80)(img).shape == (3, 64, 64)


def _reference_params(W, H, n, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """A vectorised Monte-Carlo of the definition: first of 10 accepted proposals, else the fallback."""
    r = np.random.default_rng(seed)
    s = r.uniform(*scale, (n, 10))
    ar = np.exp(r.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, 10)))
    w, h = np.round(np.sqrt(s * W * H * ar)), np.round(np.sqrt(s * W * H / ar))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.argmax(1)
    rows = np.arange(n)
    return w[rows, first], h[rows, first], ok.any(1)


def test_random_resized_crop_statistics():
    W, H, n = 500, 375, 20000
    got = np.array([random_resized_crop_params(W, H, sample_rng(0, 0, i)) for i in range(n)])
    top, left, h, w = got.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    frac = h * w / (W * H)
    fallback = (h == H) & (w == W)  # in_ratio 4/3 is inside the range: the fallback is the whole image
    assert fallback.mean() < 0.01
    f, r = frac[~fallback], w[~fallback] / h[~fallback]
    assert f.min() >= 0.08 - 0.01 and f.max() <= 1.0 and r.min() >= 0.75 - 0.02 and r.max() <= 4 / 3 + 0.02
    rw, rh, rok = _reference_params(W, H, n, 1)
    assert abs(frac.mean() - (rw * rh / (W * H)).mean()) < 0.015 and abs(fallback.mean() - (1 - rok.mean())) < 0.005
    assert 0.4 < frac.mean() < 0.6
    # below area 9/16 every ratio is accepted, so the log-ratio is uniform there (up to rounding)
    lr = np.log(r[f < 0.5])
    hist = np.histogram(lr, bins=8, range=(math.log(3 / 4), math.log(4 / 3)))[0] / len(lr)
    assert np.abs(hist - 1 / 8).max() < 0.02
    # and over all samples the log-ratio histogram follows the reference (larger ratios accepted more)
    lref = np.log(rw / rh)[rok]
    bins = dict(bins=8, range=(math.log(3 / 4) - 0.01, math.log(4 / 3) + 0.01))
    assert np.abs(np.histogram(np.log(r), **bins)[0] / len(r) - np.histogram(lref, **bins)[0] / len(lref)).max() < 0.015
    assert random_resized_crop_params(W, H, sample_rng(0, 0, 1)) == random_resized_crop_params(W, H, sample_rng(0, 0, 1))


def test_random_resized_crop_fallback():
    for i in range(50):  # no proposal fits in 1000x10: central crop clamped to ratio 4/3 (and 3/4 when tall)
        assert random_resized_crop_params(1000, 10, sample_rng(0, 0, i)) == (0, 493, 10, 13)
        assert random_resized_crop_params(10, 1000, sample_rng(0, 0, i)) == (493, 0, 13, 10)
    img = Image.fromarray(_rgb(1000, 10, 0))
    assert TrainTransform(24)(img, sample_rng(0, 0, 0)).shape == (3, 24, 24)


def test_corrupt_files_skipped_and_strict(folder, caplog):
    info = scan_folder(folder)
    bad = _bad(info)
    assert len(bad) == 2 and not ImageFile.LOAD_TRUNCATED_IMAGES
    ds = FolderData(info["train"], info["classes"], 32, 3, EvalTransform(32))
    with caplog.at_level(logging.WARNING, logger="nasbnn_hw.data"):
        for _ in range(2):
            for i in bad:
                x, y = ds[(0, i)]
                nx, ny = ds[(0, (i + 1) % len(ds))]  # replaced by the next readable file (wrapping), its label
                assert torch.equal(x, nx) and y == ny
    assert ds.skipped == {str(info["train"][i][0]) for i in bad}
    warned = [r.getMessage() for r in caplog.records if r.name == "nasbnn_hw.data"]
    assert len(warned) == 2 and any("c_13_trunc.jpg" in m for m in warned) and any("c_15_notimage" in m for m in warned)
    strict = FolderData(info["train"], info["classes"], 32, 3, EvalTransform(32), strict=True)
    with pytest.raises(DataError, match=r"c_13_trunc\.jpg.*(truncated|OSError)"):
        strict[(0, bad[0])]
    with pytest.raises(DataError, match="c_15_notimage.png"):
        strict[(0, bad[1])]
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # set elsewhere: the dataset resets it, truncation stays detected
    try:
        with pytest.raises(DataError, match="c_13_trunc"):
            FolderData(info["train"], info["classes"], 32, 3, strict=True)[(0, bad[0])]
        assert not ImageFile.LOAD_TRUNCATED_IMAGES
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    good = info["train"][0]
    missing = [(folder / "gone.jpg", 0), good]  # a missing file; a bad last file wraps to index 0
    ds2 = FolderData(missing, info["classes"], 32, 3, EvalTransform(32))
    assert torch.equal(ds2[(0, 0)][0], ds2[(0, 1)][0]) and ds2.skipped == {str(folder / "gone.jpg")}
    ds3 = FolderData([good, (folder / "gone.jpg", 2)], info["classes"], 32, 3, EvalTransform(32))
    assert ds3[(0, 1)][1] == good[1]
    with pytest.raises(DataError, match="gone.jpg"):
        FolderData(missing, info["classes"], 32, 3, strict=True)[(0, 0)]
    with pytest.raises(DataError, match="none of the 1"):
        FolderData(missing[:1], info["classes"], 32, 3)[(0, 0)]


def test_batches_workers_identical(folder):
    info = scan_folder(folder)
    ds = FolderData(info["train"], info["classes"], 32, 3, TrainTransform(32), seed=1)
    lists = [[0, 3, 5], [1, 2, 4, 6, 19], [7, 8, 20, 21], [9]]
    one = list(batches(ds, lists, epoch=3, workers=0))
    two = list(batches(ds, lists, epoch=3, workers=2))
    assert len(one) == len(two) == 4
    for (x0, y0), (x2, y2), idx in zip(one, two, lists):
        assert x0.dtype == torch.float32 and y0.dtype == torch.long and x0.shape == (len(idx), 3, 32, 32)
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
        assert torch.equal(x0, torch.stack([ds[(3, i)][0] for i in idx]))
    assert not torch.equal(next(iter(batches(ds, lists, epoch=4)))[0], one[0][0])
    with pytest.raises(DataError, match="empty"):
        list(batches(ds, [[0], []], epoch=0))


def test_fitness_split(folder):
    tr = scan_folder(folder)["train"]
    n_c = {c: sum(1 for _, y in tr if y == c) for c in range(3)}
    train, fit = fitness_split(tr, per_class=2, seed=0)
    assert {c: sum(1 for _, y in fit if y == c) for c in range(3)} == {c: min(2, n) for c, n in n_c.items()}
    assert set(train).isdisjoint(fit) and sorted(train + fit) == sorted(tr) and len(train) + len(fit) == len(tr)
    assert fitness_split(tr, per_class=2, seed=0) == (train, fit)
    assert [f for f in tr if f in set(fit)] == fit  # input order kept
    assert fitness_split(tr, per_class=2, seed=1)[1] != fit
    few = fitness_split(tr[:1] + tr[5:7], per_class=50)  # min(50, n_c): a whole small class is held out
    assert few[0] == [] and len(few[1]) == 3


def test_cifar_train():
    x = torch.randn(3, 32, 32)
    outs = [CifarTrain()(x, sample_rng(0, 0, i)) for i in range(40)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
    assert torch.equal(outs[3], CifarTrain()(x, sample_rng(0, 0, 3)))
    assert any((o == 0).all(1).any() for o in outs)  # zero padding visible in some crops
    flips = [CifarTrain(padding=0)(x, sample_rng(0, 0, i)) for i in range(20)]
    assert all(torch.equal(o, x) or torch.equal(o, x.flip(-1)) for o in flips)
    assert 0 < sum(torch.equal(o, x) for o in flips) < 20


_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from nasbnn_hw.data.folder import FolderData, batches, scan_folder
    from nasbnn_hw.data.transforms import TrainTransform
    torch.set_num_threads(1)
    info = scan_folder(sys.argv[1])
    ds = FolderData(info["train"], info["classes"], 64, 3, TrainTransform(64))
    n, total = len(ds), 0.0
    for x, y in batches(ds, [list(range(i, min(i + 50, n))) for i in range(0, n, 50)], epoch=0):
        total += float(x.sum())
    print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_memory_independent_of_dataset_size(tmp_path):
    blobs = []
    for k in range(8):  # a few distinct small PNGs (96x96 RGB), copied: quick to generate
        a = np.kron(np.random.default_rng(k).integers(0, 256, (12, 12, 3)), np.ones((8, 8, 1))).astype(np.uint8)
        Image.fromarray(a).save(tmp_path / "t.png")
        blobs.append((tmp_path / "t.png").read_bytes())
    rss = {}
    for n in (200, 2000):
        for i in range(n):
            d = tmp_path / str(n) / f"c{i % 4}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:05d}.png").write_bytes(blobs[i % 8])
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / str(n))], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        count, kb = map(int, out.stdout.split())
        assert count == n
        rss[n] = kb / 1024
    decoded_mb = 1800 * 3 * 64 * 64 * 4 / 2**20  # what the extra 1800 images would take decoded: ~84 MB
    assert decoded_mb > 80 and rss[2000] - rss[200] < 20, rss
