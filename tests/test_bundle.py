"""The inference bundle (`export --format bundle`, `run`): built, run and checked against PyTorch on this CPU
and on the emulated aarch64 board; the runner's preprocessing against Pillow's and the data pipeline's, bit
for bit; its one-line errors on a truncated or damaged parameter file and a wrong input; `run` over a real
sshd with hostile names; the bundle directory's refusals."""
from __future__ import annotations

import getpass
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from device_profiles import load_profile
from nasbnn_hw.cli import main
from nasbnn_hw.core.sampling import largest, smallest
from nasbnn_hw.core.space import SearchSpace, get_space
from nasbnn_hw.data.transforms import EvalTransform, to_mode
from nasbnn_hw.deploy.bundle import (RUNNER_NAME, Preprocess, emulator_for, open_bundle, read_params, run_bundle,
                                     run_bundle_ssh, write_bundle, write_params)
from nasbnn_hw.deploy.tvm_net import DeployError, compile_subnet
from nasbnn_hw.nn.supernet import SuperBNN, extract_subnet

pytest.register_assert_rewrite("ssh_fixtures")
from ssh_fixtures import HOSTILE, assert_no_injection, need, profile_for  # noqa: E402

pytest_plugins = ["ssh_fixtures"]
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


def _subnet(space, pick=largest, seed=0):
    torch.manual_seed(seed)
    sup = SuperBNN(space)
    with torch.no_grad():   # BN statistics away from the defaults, so the folded parameters are not trivial
        for m in sup.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return extract_subnet(sup.eval(), pick(space)).eval()


def _ref(model, x: np.ndarray, batch: int) -> np.ndarray:
    with torch.no_grad():
        xs = np.concatenate([x, np.zeros((-len(x) % batch, *x.shape[1:]), np.float32)])
        return np.concatenate([model(torch.from_numpy(xs[i: i + batch])).numpy()
                               for i in range(0, len(xs), batch)])[: len(x)]


def _agree(got, ref):
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.fixture(scope="module")
def small16():
    model = _subnet(get_space("small16"))
    return model, compile_subnet(model, batch=2)


@pytest.fixture(scope="module")
def local_bundle(small16, tmp_path_factory):
    model, net = small16
    out = tmp_path_factory.mktemp("bundle") / "b"
    write_bundle(net, out, profile=load_profile("local"), labels=[f"class {i}" for i in range(10)])
    return model, out


def test_params_file_round_trip_and_damage(tmp_path):
    arrays = [np.arange(7, dtype=np.float32), np.ones((3, 2, 5), np.uint64), np.full((2, 2), -3, np.int32)]
    p = tmp_path / "params.bin"
    size = write_params(p, arrays)
    assert p.stat().st_size == size
    for a, b in zip(read_params(p), arrays):
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    with pytest.raises(DeployError, match="truncated"):
        read_params(p)
    p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(DeployError, match="checksum"):
        read_params(p)


def test_local_bundle_agrees_with_pytorch(local_bundle):
    """Batch 2, three inputs: two calls, the second half padded; logits, top-5 and labels."""
    model, out = local_bundle
    assert {p.name for p in out.iterdir()} >= {"model.so", "params.bin", "bundle.txt", RUNNER_NAME,
                                               f"{RUNNER_NAME}.c", "README.md", "labels.txt", "manifest.json"}
    x = np.random.default_rng(0).standard_normal((3, 1, 16, 16)).astype(np.float32)
    r = run_bundle(out, list(x), repeat=4)
    ref = _ref(model, x, 2)
    _agree(r.logits, ref)
    for (name, top), row in zip(r.top, ref):
        assert [c for c, _, _ in top] == list(np.argsort(-row)[:5])
        assert top[0][2] == f"class {int(row.argmax())}"
        p = np.exp(row - row.max())
        assert abs(top[0][1] - p.max() / p.sum()) < 1e-5
    assert r.latency["runs"] == 8 and r.latency["batch"] == 2 and 0 < r.latency["min"] <= r.latency["median"]
    bench = subprocess.run([str(out / RUNNER_NAME), "--benchmark", "--repeat", "7"], capture_output=True, text=True)
    assert bench.returncode == 0 and "runs=7 warmup=5" in bench.stdout


def test_a_label_longer_than_the_runners_line_does_not_shift_the_others(small16, tmp_path):
    """The runner cuts a label at 511 bytes; the labels after it keep their classes."""
    _, net = small16
    labels = [f"class {i}" for i in range(10)]
    labels[0] = labels[4] = "L" * 700
    write_bundle(net, tmp_path / "b", profile=load_profile("local"), labels=labels)
    x = np.random.default_rng(1).standard_normal((6, 1, 16, 16)).astype(np.float32)
    r = run_bundle(tmp_path / "b", list(x), repeat=1)
    seen = {c: name for _, top in r.top for c, _, name in top}
    assert len(seen) >= 6
    for c, name in seen.items():
        assert name == ("L" * 511 if c in (0, 4) else f"class {c}")


def test_the_bundles_own_runner_rebuilds_from_its_one_source_file(local_bundle, tmp_path):
    """The README's build line works on the shipped source alone (as on a board)."""
    _, out = local_bundle
    b = tmp_path / "copy"
    shutil.copytree(out, b)
    (b / RUNNER_NAME).unlink()
    subprocess.run(["cc", "-O2", "-std=gnu11", "-o", RUNNER_NAME, f"{RUNNER_NAME}.c", "-rdynamic", "-ldl", "-lm",
                    "-lpthread"], cwd=b, check=True)
    x = np.zeros((1, 16, 16), np.float32)
    x.tofile(tmp_path / "x.raw")
    r = subprocess.run([str(b / RUNNER_NAME), str(tmp_path / "x.raw")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("input 0 ")


def _rgb_space(channels: int):
    d = get_space("small16").to_dict()
    d.update(in_channels=channels, name=f"small16-c{channels}")
    return SearchSpace.from_dict(d)


@pytest.mark.parametrize("channels", [3, 1])
def test_runner_preprocessing_is_the_data_pipelines_bit_for_bit(channels, tmp_path):
    """PPM/PGM (binary, ASCII, 16-bit) and uint8 .npy images of many sizes (down- and upscaled, smaller than
    the crop): the runner's input equals `EvalTransform` (Pillow bilinear resize, centre crop, 0.5/0.5)."""
    net = compile_subnet(_subnet(_rgb_space(channels), smallest))
    out = tmp_path / "b"
    write_bundle(net, out, preprocess=Preprocess.imagenet(16, channels))
    rng = np.random.default_rng(channels)
    files, refs = [], []
    for i, (w, h) in enumerate([(23, 19), (300, 257), (16, 16), (10, 40), (7, 5), (64, 63)]):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for mode, ext in (("RGB", "ppm"), ("L", "pgm")):
            im = img.convert(mode)
            f = tmp_path / f"im{i}.{ext}"
            im.save(f)
            files.append(f)
            refs.append(EvalTransform(16)(to_mode(im, channels)).numpy())
    grey = np.asarray(img.convert("L"))
    ascii_pgm = tmp_path / "ascii.pgm"   # P2, maxval 255
    ascii_pgm.write_text(f"P2\n# a comment\n{grey.shape[1]} {grey.shape[0]}\n255\n"
                         + "\n".join(" ".join(map(str, row)) for row in grey) + "\n")
    deep = tmp_path / "deep.pgm"          # P5, 16 bit (big-endian), values v * 257
    deep.write_bytes(f"P5 {grey.shape[1]} {grey.shape[0]} 65535\n".encode() + (grey.astype(">u2") * 257).tobytes())
    npy = tmp_path / "img.npy"
    np.save(npy, np.asarray(img))
    for f, im in ((ascii_pgm, img.convert("L")), (deep, img.convert("L")), (npy, img)):
        files.append(f)
        refs.append(EvalTransform(16)(to_mode(im, channels)).numpy())
    r = run_bundle(out, files, dump_inputs=True)
    for f, got, ref in zip(files, r.inputs, refs):
        assert np.array_equal(got, ref), f"{f.name}: max diff {np.abs(got - ref).max() * 127.5:.2f} levels"


def test_runner_errors_are_one_clear_line(local_bundle, tmp_path):
    """Run on the board without the host: a truncated or damaged params.bin, a wrong-size input, a bad option."""
    _, out = local_bundle
    b = tmp_path / "b"
    shutil.copytree(out, b)
    good = (b / "params.bin").read_bytes()
    x = tmp_path / "x.raw"
    np.zeros(256, np.float32).tofile(x)

    def runner(*args):
        r = subprocess.run([str(b / RUNNER_NAME), *map(str, args)], capture_output=True, text=True)
        return r.returncode, r.stderr.strip().splitlines()
    assert runner(x)[0] == 0
    (b / "params.bin").write_bytes(good[: len(good) // 2])
    rc, err = runner(x)
    assert rc == 3 and len(err) == 1 and "params.bin is truncated" in err[0] and str(len(good)) in err[0]
    (b / "params.bin").write_bytes(good[:-1] + bytes([good[-1] ^ 0x40]))
    rc, err = runner(x)
    assert rc == 3 and len(err) == 1 and "damaged" in err[0]
    (b / "params.bin").write_bytes(good)
    np.zeros(255, np.float32).tofile(x)
    rc, err = runner(x)
    assert rc == 2 and len(err) == 1 and "1020 bytes" in err[0] and "1 x 16 x 16 (1024 bytes)" in err[0]
    rc, err = runner("--top", "zero", x)
    assert rc == 2 and len(err) == 1 and "--top needs an integer" in err[0]
    np.save(tmp_path / "d.npy", np.zeros((3, 16, 16), np.float64))
    rc, err = runner(tmp_path / "d.npy")
    assert rc == 2 and len(err) == 1 and "dtype must be float32" in err[0]
    # through the host: the manifest's checksum catches the damage before anything runs
    (b / "params.bin").write_bytes(good[:100])
    with pytest.raises(DeployError, match="params.bin is not the file it was exported with"):
        run_bundle(b, [x])


def _npy(shape_text: str, descr: str, payload: bytes) -> bytes:
    """A .npy file (version 1) with this header's shape and dtype text, whatever the payload."""
    head = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}".encode()
    head += b" " * (-(10 + len(head) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head + payload


def test_runner_survives_hostile_inputs(local_bundle, tmp_path):
    """The board-side C runner parses images and .npy headers itself: truncated, byte-flipped and hostile
    inputs (dimensions whose product overflows, sizes past any memory) end in exit status 2 and one line,
    never a crash, a hang, or a read past a buffer (seeded fuzz)."""
    import io
    import random

    from _fuzz import byte_variants
    _, b = local_bundle
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (18, 20, 3), dtype=np.uint8)

    def npy(a):
        f = io.BytesIO()
        np.save(f, a)
        return f.getvalue()
    valid = {"p5.pgm": b"P5 20 18 255\n" + img[..., 0].tobytes(), "p6.ppm": b"P6\n# c\n20 18\n255\n" + img.tobytes(),
             "p2.pgm": b"P2 4 3 15\n" + " ".join(str(v % 16) for v in img[:3, :4, 0].ravel()).encode() + b"\n",
             "p5-16.pgm": b"P5 20 18 1000\n" + (img[..., 0].astype(">u2") * 3).tobytes(),
             "u8.npy": npy(img[..., 0]), "u8c.npy": npy(img), "f32.npy": npy(rng.random((1, 16, 16), np.float32))}
    hostile = {"overflow.npy": _npy("(4294967296, 4294967296)", "|u1", b"\0" * 64),
               "overflow3.npy": _npy("(4611686018427387904, 4, 1)", "|u1", b"\0" * 64),
               "huge.npy": _npy("(1048576, 1048576, 3)", "|u1", b"\0" * 64),
               "wide.npy": _npy("(1, 4294967297)", "|u1", b"\0" * 64),
               "negative.npy": _npy("(-4, -4)", "|u1", b"\0" * 64),
               "nine-dims.npy": _npy("(1, 1, 1, 1, 1, 1, 1, 1, 1)", "<f4", b"\0" * 64),
               "f32-overflow.npy": _npy("(4294967296, 4294967296, 256)", "<f4", b"\0" * 64),
               "open-shape.npy": _npy("(16, 16", "|u1", b"\0" * 256),
               "huge.pgm": b"P5 16777216 16777216 255\n\0", "zero.ppm": b"P6 0 5 255\n"}
    cases = [(f"{name} {what}", v) for name, data in valid.items() for what, v in byte_variants(data, random.Random(name), 24)]
    cases += [(name, v) for name, v in {**valid, **hostile}.items()]
    n_ok = 0
    for i, (what, data) in enumerate(cases):
        x = tmp_path / f"in{i}{Path(what.split()[0]).suffix}"
        x.write_bytes(data)
        r = subprocess.run([str(b / RUNNER_NAME), str(x)], capture_output=True, text=True, timeout=30)
        err = r.stderr.strip().splitlines()
        assert r.returncode in (0, 2), f"{what}: exit status {r.returncode}, {err[-3:]}"
        assert r.returncode == 0 or len(err) == 1, f"{what}: {err}"
        n_ok += r.returncode == 0
        if what in hostile:
            assert r.returncode == 2, f"{what} was accepted"
    assert n_ok >= len(valid)


def test_mistyped_manifest_is_one_deploy_error(local_bundle, tmp_path):
    """A hand-edited manifest.json (values of another type, keys dropped) ends in one DeployError line, never
    a traceback (seeded fuzz through `run_bundle`)."""
    import json
    import random

    from _fuzz import value_variants
    _, out = local_bundle
    b = tmp_path / "b"
    shutil.copytree(out, b)
    good = json.loads((b / "manifest.json").read_text())
    x = tmp_path / "x.raw"
    np.zeros(256, np.float32).tofile(x)
    n_err = 0
    for what, doc in value_variants(good, random.Random(11), 120):
        (b / "manifest.json").write_text(json.dumps(doc))
        try:
            run_bundle(b, [x])
        except DeployError as e:
            assert "\n" not in str(e), f"{what}: {e}"
            n_err += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"{what}: {type(e).__name__}: {e}") from e
    assert n_err > 10


def test_emulated_aarch64_bundle_agrees_with_pytorch(small16, tmp_path):
    need(emulator_for("aarch64") is not None and shutil.which("aarch64-linux-gnu-gcc") is not None,
         "qemu-user, libc6-dev-arm64-cross and gcc-aarch64-linux-gnu are needed")
    model = small16[0]
    prof = load_profile("rpi4")                      # 4 threads: the runner's pthread pool under emulation
    net = compile_subnet(model, target=prof, batch=1)
    out = tmp_path / "rpi4"
    write_bundle(net, out, profile=prof)
    assert open_bundle(out)["arch"] == "aarch64"
    x = np.random.default_rng(3).standard_normal((2, 1, 16, 16)).astype(np.float32)
    r = run_bundle(out, list(x), exec_wrapper=emulator_for("aarch64"))
    _agree(r.logits, _ref(model, x, 1))
    assert r.latency["threads"] == 4


def test_cli_export_bundle_and_run(checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "largest", "--format", "bundle",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nasbnn-run here vs PyTorch" in text and "same top-1: True" in text and "preprocessing of digits" in text
    # the digits pipeline: whole image to 16x16, normalised with its training mean/std; labels 0-9
    cfg = (out / "bundle.txt").read_text()
    assert "resize 0" in cfg and "gray mean" in cfg and "labels labels.txt" in cfg
    assert (out / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    img = tmp_path / f"{HOSTILE}.pgm"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)).save(img, format="PPM")
    assert main(["run", "--bundle", str(out), "--input", str(img), "--repeat", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(str(img) + "\n  1. ") and "latency on local: median" in text and "(3 runs" in text
    assert_no_injection(getpass.getuser(), tmp_path)
    # refusals, each one line, nothing touched
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "largest", "--format", "bundle",
                 "--out", str(out)]) == 2
    assert "exists already; pass --force" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--format", "bundle",
                 "--out", str(other), "--force"]) == 2
    assert "not a bundle" in capsys.readouterr().err and (other / "mine.txt").read_text() == "keep"
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--format", "bundle",
                 "--out", str(checkpoint.parent), "--force"]) == 2
    assert "holds the checkpoint" in capsys.readouterr().err and checkpoint.is_file()
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "bundle", "--device", "jetson-orin",
                 "--out", str(tmp_path / "gpu")]) == 2
    assert "CPU (llvm) targets only" in capsys.readouterr().err
    assert main(["run", "--bundle", str(out), "--device", "qemu-aarch64", "--input", str(img)]) == 2
    assert "built for x86_64" in capsys.readouterr().err
    bad = tmp_path / "short.raw"
    np.zeros(10, np.float32).tofile(bad)
    assert main(["run", "--bundle", str(out), "--input", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "short.raw" in err[0] and "40 bytes" in err[0]


def test_run_over_ssh_with_hostile_names(local_bundle, ssh_board, ssh_client_key, ssh_known_hosts, tmp_path,
                                         hostile_remote_dir):
    model, out = local_bundle
    remote_dir = hostile_remote_dir
    x = np.random.default_rng(5).standard_normal((2, 1, 16, 16)).astype(np.float32)
    files = []
    for i, xi in enumerate(x):
        f = tmp_path / f"in {i} {HOSTILE}.npy"
        np.save(f, xi)
        files.append(f)
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts, remote_dir=str(remote_dir),
                       timeouts={"connect": 5, "command": 60, "transfer": 10})
    from nasbnn_hw.profiling.runners.ssh import SSHRunner
    with SSHRunner(prof) as runner:
        r = run_bundle_ssh(runner, out, files, repeat=2)
    _agree(r.logits, _ref(model, x, 2))
    assert [name for name, _ in r.top] == [str(f) for f in files] and r.latency["runs"] == 2
    assert list(remote_dir.iterdir()) == [], "work directory not removed"
    assert_no_injection(ssh_board.user, remote_dir.parent, remote_dir, tmp_path)


def test_run_over_ssh_builds_the_runner_on_the_board_when_it_cannot_start(small16, ssh_board, ssh_client_key,
                                                                          ssh_known_hosts, tmp_path, caplog, monkeypatch):
    """A runner cross-built against a newer C library than the board's: built there from the bundle's source."""
    monkeypatch.setenv("NASBNN_HW_CACHE", str(tmp_path / "cache"))
    fake_cc = tmp_path / "newer-libc-gcc"
    fake_cc.write_text("""#!/bin/sh
out=""; while [ $# -gt 0 ]; do [ "$1" = "-o" ] && { out=$2; shift; }; shift; done
printf '#include <stdio.h>\\nint main(void) { fputs("./nasbnn-run: version GLIBC_2.99 not found\\\\n", stderr); return 1; }\\n' > "$out.c"
exec cc -o "$out" "$out.c"
""")
    fake_cc.chmod(0o755)
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts, cross_compiler=str(fake_cc),
                       timeouts={"connect": 5, "command": 60, "transfer": 10})
    model, net = small16
    out = tmp_path / "b"
    write_bundle(net, out, profile=prof)
    x = np.random.default_rng(6).standard_normal((1, 1, 16, 16)).astype(np.float32)
    from nasbnn_hw.profiling.runners.ssh import SSHRunner
    with caplog.at_level("WARNING"), SSHRunner(prof) as runner:
        r = run_bundle_ssh(runner, out, list(x))
    _agree(r.logits, _ref(model, x, 2))
    assert "built it there" in caplog.text


def test_cli_export_tvm_for_an_arm_board_is_checked_under_the_emulator(checkpoint, tmp_path, capsys):
    need(emulator_for("aarch64") is not None and shutil.which("aarch64-linux-gnu-gcc") is not None,
         "qemu-user, libc6-dev-arm64-cross and gcc-aarch64-linux-gnu are needed")
    assert main(["export", "--checkpoint", str(checkpoint), "--arch", "smallest", "--no-recalibrate", "--device",
                 "rpi4", "--out", str(tmp_path / "rpi4.so")]) == 0
    out = capsys.readouterr().out
    assert "TVM under qemu-aarch64 vs PyTorch" in out and "same top-1: True" in out
