"""The shipped `qemu-aarch64` device: cross-compiled kernels run under qemu-user through the board harness."""
from pathlib import Path

import numpy as np

from device_profiles import load_profile
from nasbnn_hw.cli import main
from nasbnn_hw.deploy.tvm_net import compile_random_subnet
from nasbnn_hw.profiling.runners import get_runner
from nasbnn_hw.core.sampling import largest
from nasbnn_hw.core.space import get_space
from nasbnn_hw.profiling.store import MeasurementStore


def test_emulated_board_runs_a_whole_subnet_like_the_local_cpu(tmp_path):
    space = get_space("small16")
    arch = largest(space)
    prof = load_profile("qemu-aarch64")
    board = get_runner(prof)
    x = np.random.default_rng(3).standard_normal((1, 1, 16, 16)).astype(np.float32)
    arm = compile_random_subnet(arch, space, target=prof, seed=5)
    here = compile_random_subnet(arch, space, target="local", seed=5)
    t = board.time_library(arm.export(tmp_path / "arm.so"), arm.arg_specs(x), warmup=0, repeat=2,
                           return_outputs=True)
    assert len(t.samples) == 2 and all(s > 0 for s in t.samples)
    (got,) = t.outputs
    ref = here(x)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max() and got.argmax() == ref.argmax()


def test_profile_on_the_emulated_board_is_stored_and_flagged(tmp_path, capsys):
    db = tmp_path / "emu.db"
    assert main(["profile", "--device", "qemu-aarch64", "--space", "small16", "--active", "--budget", "2",
                 "--store", str(db), "--quiet"]) == 0
    assert "NOT latency" in capsys.readouterr().err
    with MeasurementStore(db) as store:
        rows = store.query(device="qemu-aarch64")
    assert len(rows) == 2 and all("aarch64" in r.target for r in rows)


def test_two_devices_profiled_in_parallel_into_one_store(tmp_path, capsys):
    db = tmp_path / "both.db"
    assert main(["profile", "--device", "local", "--device", "qemu-aarch64", "--space", "small16", "--active",
                 "--budget", "2", "--store", str(db)]) == 0
    out = capsys.readouterr().out
    assert "[local]" in out and "[qemu-aarch64]" in out
    with MeasurementStore(db) as store:
        assert len(store.query(device="local")) == 2 and len(store.query(device="qemu-aarch64")) == 2


def test_devices_check_of_the_emulated_board_runs_its_harness_without_ssh(tmp_path, capsys):
    assert main(["devices", "check", "qemu-aarch64"]) == 0
    out = capsys.readouterr()
    assert "harness" in out.out and "runs under qemu-aarch64" in out.out and "arch aarch64" in out.out
    assert "SSH key" not in out.err and "times are not aarch64 latencies" in out.err
    bad = tmp_path / "emu.toml"    # the same board with an emulator that is not installed
    bad.write_text(Path(load_profile("qemu-aarch64").path).read_text()
                   .replace('"qemu-aarch64", "-L"', '"qemu-nonexistent-x", "-L"')
                   .replace('name = "qemu-aarch64"', 'name = "emu"'))
    assert main(["devices", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'qemu-nonexistent-x' is not installed" in err[0] and "qemu-user" in err[0]
