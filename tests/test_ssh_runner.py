"""Runners against real servers: correctness over SSH (loopback, non-root login) and on an emulated
aarch64 board (qemu-user), hostile names, host keys, SSH config aliases, a TVM RPC server, the local
runner and `devices check`. Kernels are real TVM builds checked against numpy. The fault matrix is in
test_ssh_faults.py."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from device_profiles import validate_profile
from nasbnn_hw.profiling.runners import BoardUnavailable, HostKeyError, KernelError, get_runner
from nasbnn_hw.profiling.runners.local import LocalRunner
from nasbnn_hw.profiling.runners.ssh import SSHRunner
from nasbnn_hw.profiling.runners.sshconn import fingerprint
from nasbnn_hw.profiling.store import MeasurementStore

import runner_kernels as rk

pytest.register_assert_rewrite("ssh_fixtures")     # its helpers assert too
from ssh_fixtures import (ARM_CC, ARM_TARGET, DEV, HOST_TARGET, HOSTILE, IS_ROOT, SHAPES, assert_no_injection,
                          assert_rows, campaign, items_for, need, profile_for)

pytest_plugins = ["ssh_fixtures"]     # fixtures: xor_kernels, ssh_client_key, ssh_board, ssh_known_hosts


# ---- correctness -------------------------------------------------------------------------------------------
def test_local_runner_matches_numpy(xor_kernels, tmp_path):
    store = MeasurementStore(tmp_path / "m.db")
    with LocalRunner(threads=1) as r:
        status, _, failed = campaign(r, items_for(xor_kernels), store)
    assert status == "completed" and not failed
    assert_rows(store, SHAPES)


def test_local_runner_reloads_a_rewritten_path(xor_kernels, tmp_path):
    """The dynamic loader caches by path: a new library at a used path must still be the one timed."""
    lib = tmp_path / "layer.so"
    with LocalRunner() as r:
        for key in ("k0", "k1"):
            shutil.copy(xor_kernels[key], lib)
            args = rk.xor_popcount_args(*SHAPES[key], rng=np.random.default_rng(5))
            t = r.time_library(lib, args, warmup=0, repeat=1, return_outputs=True)
            np.testing.assert_array_equal(t.outputs[0], rk.xor_popcount_ref(args[0].data, args[1].data))


def test_project_layers_over_ssh_match_local(ssh_board, ssh_client_key, ssh_known_hosts, tmp_path):
    """Real layers of the kernels package (8-bit stem, binary conv block) through the harness."""
    from nasbnn_hw.deploy.kernels.layer import build_layer
    from nasbnn_hw.core.layers import LayerConfig
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts, threads=2)
    with get_runner(prof) as r, LocalRunner(threads=2) as lr:
        for cfg in (LayerConfig("stem", 3, 16, 3, 1, 2, 16), LayerConfig("bconv", 32, 64, 3, 2, 2, 8)):
            lay = build_layer(cfg, target=prof)
            lib = lay.export(tmp_path / f"{cfg.key()}.so")
            remote = r.time_library(lib, lay.args, warmup=1, repeat=3, return_outputs=True)
            local = lr.time_library(lib, lay.args, warmup=1, repeat=3, return_outputs=True)
            np.testing.assert_array_equal(remote.outputs[0], local.outputs[0])
            np.testing.assert_array_equal(local.outputs[0], lay.run())


def test_ssh_runner_matches_numpy_and_local(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels, tmp_path):
    store = MeasurementStore(tmp_path / "m.db")
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts, threads=2)
    with get_runner(prof) as r:
        assert isinstance(r, SSHRunner)
        status, _, failed = campaign(r, items_for(xor_kernels), store)
        workdir = r._workdir
        assert workdir and workdir.startswith("/tmp/nasbnn-hw.")
        # the same generated inputs on both runners: identical outputs
        args = rk.xor_popcount_args(*SHAPES["k1"])
        o_ssh = r.time_library(xor_kernels["k1"], args, warmup=0, repeat=1, return_outputs=True).outputs[0]
        o_loc = LocalRunner().time_library(xor_kernels["k1"], args, warmup=0, repeat=1, return_outputs=True).outputs[0]
        np.testing.assert_array_equal(o_ssh, o_loc)
    assert status == "completed" and not failed
    assert_rows(store, SHAPES)
    assert not Path(workdir).exists(), "the remote work directory must be removed by close()"


def test_cost_per_measurement_ssh_vs_local(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels):
    """Printed for the record (`pytest -s`): wall time of one measurement of a tiny kernel, one thread."""
    args = rk.xor_popcount_args(*SHAPES["k0"])
    n, res = 10, {}
    with get_runner(profile_for(ssh_board, ssh_client_key, ssh_known_hosts, threads=1)) as r, \
            LocalRunner(threads=1) as lr:
        for name, runner in (("ssh", r), ("local", lr)):
            runner.time_library(xor_kernels["k0"], args, warmup=10, repeat=30)      # connect / load once
            walls, kernel = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                t = runner.time_library(xor_kernels["k0"], args, warmup=10, repeat=30)
                walls.append(time.perf_counter() - t0)
                kernel.append(t.median)
            res[name] = (np.median(walls), np.median(kernel))
    print(f"\nper measurement (warmup 10, repeat 30, 1 thread, 16x32x4-word XOR-popcount), median of {n}: "
          f"ssh loopback {res['ssh'][0] * 1e3:.1f} ms wall (kernel {res['ssh'][1] * 1e6:.2f} us), "
          f"local {res['local'][0] * 1e3:.2f} ms wall (kernel {res['local'][1] * 1e6:.2f} us)")
    assert res["ssh"][0] < 5.0 and res["ssh"][1] < 1e-3 and res["local"][1] < 1e-3


def test_output_after_the_exit_status_is_read(ssh_board, ssh_client_key, ssh_known_hosts):
    """OpenSSH sends a program's exit status when it is reaped, possibly before the last of its output (seen
    as a harness whose samples went missing): the runner reads to the end of the stream. Here the output
    comes from a child that outlives the shell, so the status is certain to arrive first."""
    with get_runner(profile_for(ssh_board, ssh_client_key, ssh_known_hosts)) as r:
        rc, out, err = r.run("sh -c '(sleep 0.5; echo late; echo late-err >&2) & echo early'")
    assert rc == 0 and out.split() == ["early", "late"] and err.strip() == "late-err"


def test_emulated_aarch64_board(ssh_board, ssh_client_key, ssh_known_hosts, tmp_path):
    need(shutil.which(ARM_CC) and shutil.which("qemu-aarch64"), "gcc-aarch64-linux-gnu and qemu-user are needed")
    libs = {k: rk.build_xor_popcount(*SHAPES[k], ARM_TARGET, tmp_path / f"{k}-aarch64.so", cc=ARM_CC)
            for k in ("k0", "k1")}
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts, target=ARM_TARGET, cross_compiler=ARM_CC, threads=2,
                       exec_wrapper=["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
                       timeouts={"connect": 5, "command": 60, "transfer": 10})
    store = MeasurementStore(tmp_path / "m.db")
    with get_runner(prof) as r:
        info = r.board_info()
        assert info["harness_arch"] == "aarch64" and info["uname_m"] == os.uname().machine
        status, _, failed = campaign(r, items_for(libs), store)
    assert status == "completed" and not failed
    assert_rows(store, libs)
    print("\nemulated aarch64 board (qemu-user): outputs match numpy; its times are meaningless as latency")


def test_harness_built_on_the_board_when_the_cross_built_one_cannot_start(ssh_board, ssh_client_key, ssh_known_hosts,
                                                                         xor_kernels, tmp_path, monkeypatch, caplog):
    """A board with an older C library than the cross toolchain's cannot start the uploaded harness; the
    runner then builds it there from source (the board has a compiler)."""
    monkeypatch.setenv("NASBNN_HW_CACHE", str(tmp_path / "cache"))
    fake_cc = tmp_path / "newer-libc-gcc"      # builds a program that fails like a too-new glibc binary
    fake_cc.write_text("""#!/bin/sh
out=""; while [ $# -gt 0 ]; do [ "$1" = "-o" ] && { out=$2; shift; }; shift; done
printf '#include <stdio.h>\\nint main(void) { fputs("nasbnn-harness: version GLIBC_2.99 not found\\\\n", stderr); return 1; }\\n' > "$out.c"
exec cc -o "$out" "$out.c"
""")
    fake_cc.chmod(0o755)
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts, cross_compiler=str(fake_cc))
    args = rk.xor_popcount_args(*SHAPES["k1"], rng=np.random.default_rng(2))
    with caplog.at_level("WARNING"), get_runner(prof) as r:
        t = r.time_library(xor_kernels["k1"], args, warmup=1, repeat=2, return_outputs=True)
    np.testing.assert_array_equal(t.outputs[0], rk.xor_popcount_ref(args[0].data, args[1].data))
    assert "GLIBC_2.99" in caplog.text and "built it there instead" in caplog.text


def test_kernel_failure_is_typed_and_workdir_removed(ssh_board, ssh_client_key, ssh_known_hosts, tmp_path, xor_kernels):
    bad = rk.build_library_without_main(tmp_path / "nomain.so")
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts)
    r = get_runner(prof)
    try:
        with pytest.raises(KernelError, match="no function 'main'"):
            r.time_library(bad, rk.xor_popcount_args(*SHAPES["k0"]), warmup=1, repeat=2)
        workdir = r._workdir
        assert Path(workdir).is_dir()
        # the runner still works after a failed kernel
        r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=1, repeat=2)
    finally:
        r.close()
    assert not Path(workdir).exists()


def test_day_old_orphaned_work_dirs_are_swept(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels, tmp_path):
    base = Path(__import__("tempfile").mkdtemp(prefix="nasbnn-sweep-"))
    try:
        old, fresh = base / "nasbnn-hw.old123", base / "nasbnn-hw.new123"
        for d in (base, old, fresh):
            d.mkdir(exist_ok=True)
            if IS_ROOT:
                shutil.chown(d, ssh_board.user, ssh_board.user)
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        with get_runner(profile_for(ssh_board, ssh_client_key, ssh_known_hosts, remote_dir=str(base))) as r:
            r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=0, repeat=1)
        assert sorted(p.name for p in base.iterdir()) == ["nasbnn-hw.new123"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_hostile_file_and_directory_names(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels, tmp_path,
                                         hostile_remote_dir):
    remote_dir = hostile_remote_dir
    lib = tmp_path / f"lib {HOSTILE}.so"
    shutil.copy(xor_kernels["k0"], lib)
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts, remote_dir=str(remote_dir))
    with get_runner(prof) as r:
        args = rk.xor_popcount_args(*SHAPES["k0"], rng=np.random.default_rng(1))
        t = r.time_library(lib, args, warmup=1, repeat=2, return_outputs=True)
        np.testing.assert_array_equal(t.outputs[0], rk.xor_popcount_ref(args[0].data, args[1].data))
        assert r._workdir.startswith(str(remote_dir) + "/nasbnn-hw.")
    assert list(remote_dir.iterdir()) == [], "work directory not removed"
    assert_no_injection(ssh_board.user, remote_dir.parent, remote_dir)


def test_ssh_config_alias(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels, tmp_path):
    """`host` is an alias: HostName, User, Port and IdentityFile come from the SSH config file."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host mypi\n  HostName {ssh_board.host}\n  User {ssh_board.user}\n  Port {ssh_board.port}\n"
                   f"  IdentityFile {ssh_client_key}\n")
    prof = validate_profile(dict(name=DEV, runner="ssh", target=HOST_TARGET, host="mypi", ssh_config=str(cfg),
                                 known_hosts=str(ssh_known_hosts), threads=1, timeouts={"connect": 3}), "test")
    with get_runner(prof) as r:
        assert (r.settings.hostname, r.settings.port, r.settings.user) == (ssh_board.host, ssh_board.port, ssh_board.user)
        args = rk.xor_popcount_args(*SHAPES["k0"], rng=np.random.default_rng(3))
        t = r.time_library(xor_kernels["k0"], args, warmup=0, repeat=2, return_outputs=True)
    np.testing.assert_array_equal(t.outputs[0], rk.xor_popcount_ref(args[0].data, args[1].data))


# ---- host keys ----------------------------------------------------------------------------------------------
def test_unknown_host_key_refused(ssh_board, ssh_client_key, tmp_path, xor_kernels):
    kh = tmp_path / "kh" / "known_hosts"
    prof = profile_for(ssh_board, ssh_client_key, kh)
    t0 = time.monotonic()
    with pytest.raises(HostKeyError, match="not in .*refusing.*--accept-new-host-key"):
        with get_runner(prof) as r:
            r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=0, repeat=1)
    assert time.monotonic() - t0 < 5, "a host-key refusal must not be retried"
    assert not kh.exists(), "nothing may be recorded without the explicit option"


def test_unknown_host_key_accepted_with_option(ssh_board, ssh_client_key, tmp_path, xor_kernels):
    kh = tmp_path / "kh" / "known_hosts"
    kh.parent.mkdir()
    other = "otherhost " + " ".join(Path(str(ssh_client_key) + ".pub").read_text().split()[:2])
    kh.write_text(other)                 # an existing file without a final newline
    prof = profile_for(ssh_board, ssh_client_key, kh)
    said = []
    with get_runner(prof, accept_new_host_key=True, notify=said.append) as r:
        r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=0, repeat=1)
    expected_fp = subprocess.run(["ssh-keygen", "-lf", str(ssh_board.host_key) + ".pub"], capture_output=True,
                                 text=True, check=True).stdout.split()[1]
    assert len(said) == 1 and expected_fp in said[0] and expected_fp.startswith("SHA256:")
    assert kh.read_text() == other + "\n" + ssh_board.known_hosts_line()
    with get_runner(prof) as r:          # recorded: the next connection needs no option
        r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=0, repeat=1)


def test_changed_host_key_refused_even_with_accept_new(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels):
    old = ssh_known_hosts.read_text()
    ssh_board.new_host_key()
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts)
    for accept in (False, True):
        with pytest.raises(HostKeyError, match="CHANGED.*refusing"):
            with get_runner(prof, accept_new_host_key=accept) as r:
                r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=0, repeat=1)
    assert ssh_known_hosts.read_text() == old


def test_hashed_known_hosts_and_revoked_keys(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels):
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(ssh_known_hosts)], check=True, capture_output=True)
    assert ssh_known_hosts.read_text().startswith("|1|")
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts)
    with get_runner(prof) as r:          # a hashed entry still matches
        r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=0, repeat=1)
    kind, b64 = Path(str(ssh_board.host_key) + ".pub").read_text().split()[:2]
    for text in (f"@cert-authority * {kind} {b64}\n@revoked * {kind} {b64}\n",
                 ssh_board.known_hosts_line() + f"@revoked * {kind} {b64}\n"):
        ssh_known_hosts.write_text(text)
        with pytest.raises(HostKeyError, match="@revoked"):
            with get_runner(prof, accept_new_host_key=True) as r:
                r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=0, repeat=1)


def test_wrong_key_is_a_setup_error_not_retried(ssh_board, ssh_known_hosts, xor_kernels, tmp_path):
    from nasbnn_hw.profiling.runners import DeviceSetupError
    from sshd_server import keygen
    other = keygen(tmp_path / "other_key", "not-authorized")
    prof = profile_for(ssh_board, other, ssh_known_hosts)
    t0 = time.monotonic()
    with pytest.raises(DeviceSetupError, match="authentication .* failed"):
        with get_runner(prof) as r:
            r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=0, repeat=1)
    assert time.monotonic() - t0 < 5


def test_server_without_sftp_is_a_setup_error_that_names_sftp(request, ssh_client_key, xor_kernels, tmp_path):
    from nasbnn_hw.profiling.runners import DeviceSetupError
    from ssh_fixtures import _server
    srv = _server(request, ssh_client_key, sftp=False)
    kh = tmp_path / "known_hosts"
    kh.write_text(srv.known_hosts_line())
    t0 = time.monotonic()
    with pytest.raises(DeviceSetupError, match="offers no SFTP.*Subsystem sftp"):
        with get_runner(profile_for(srv, ssh_client_key, kh)) as r:
            r.time_library(xor_kernels["k0"], rk.xor_popcount_args(*SHAPES["k0"]), warmup=0, repeat=1)
    assert time.monotonic() - t0 < 5, "a missing subsystem is not a board that is down: no retries"


def test_fingerprint_matches_ssh_keygen(ssh_board):
    import paramiko
    key = paramiko.Ed25519Key.from_private_key_file(str(ssh_board.host_key))
    out = subprocess.run(["ssh-keygen", "-lf", str(ssh_board.host_key) + ".pub"], capture_output=True, text=True).stdout
    assert fingerprint(key) == out.split()[1]


# ---- TVM RPC ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _rpc_server(tmp_path):
    """A real `tvm.exec.rpc_server` on a free local port: yields (process, port); killed afterwards."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "rpc.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 1)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "bind to" not in (tmp_path / "rpc.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "rpc.log").read_text()
            time.sleep(0.2)
        yield proc, port
    finally:
        try:
            os.killpg(proc.pid, 9)           # the server and its forked session process
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()


def test_rpc_runner_against_local_server(xor_kernels, tmp_path):
    with _rpc_server(tmp_path) as (proc, port):
        prof = validate_profile(dict(name=DEV, runner="tvm-rpc", target=HOST_TARGET, host="127.0.0.1", port=port,
                                     retries=1, backoff=0.1), "test")
        store = MeasurementStore(tmp_path / "m.db")
        with get_runner(prof) as r:
            status, msg, failed = campaign(r, items_for({k: xor_kernels[k] for k in ("k0", "k1")}), store)
            assert status == "completed" and not failed
            assert_rows(store, ["k0", "k1"])
            os.killpg(proc.pid, 9)
            proc.wait()
            with pytest.raises(BoardUnavailable, match="TVM RPC .* unavailable"):
                r.time_library(xor_kernels["k2"], rk.xor_popcount_args(*SHAPES["k2"]), warmup=0, repeat=1)


def test_tune_over_tvm_rpc(tmp_path):
    """`tune` runs every candidate of a layer several times (a check, then interleaved rounds): each library is
    uploaded and loaded once per session; uploading it again rewrote a loaded file and crashed the server's
    session process after a dozen loads, which a reconnect could not recover."""
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.profiling.profiler import TimingSettings
    from nasbnn_hw.profiling.tuning import tune_layers
    with _rpc_server(tmp_path) as (proc, port):
        prof = validate_profile(dict(name="rpcdev", runner="tvm-rpc", target=HOST_TARGET, host="127.0.0.1",
                                     port=port, retries=1, backoff=0.1), "test")
        with MeasurementStore(tmp_path / "m.db") as st, get_runner(prof) as r:
            rep = tune_layers(get_space("small16"), "rpcdev", st, r, target=prof, limit=4, rounds=1,
                              timing=TimingSettings(warmup=1, repeat=3, min_sample_ms=1.0), progress=False)
            assert len(rep.tuned) == 4 and not rep.failed and r.reconnects == 0 and proc.poll() is None
            assert len(r._uploaded) == len(set(r._uploaded))   # no library uploaded twice


def test_rpc_runner_gives_up_on_a_server_that_never_answers(tmp_path):
    """A port that accepts connections but never speaks (a dead session process, a wrong service): each
    attempt ends at timeouts.connect, then BoardUnavailable, instead of blocking forever in rpc.connect."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])      # accept, then say nothing
            except OSError:
                pass
    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        prof = validate_profile(dict(name=DEV, runner="tvm-rpc", target=HOST_TARGET, host="127.0.0.1",
                                     port=srv.getsockname()[1], retries=1, backoff=0.1,
                                     timeouts={"connect": 1}), "test")
        t0 = time.monotonic()
        with get_runner(prof) as r, pytest.raises(BoardUnavailable, match="no RPC handshake .* within 1s"):
            r.time_library(_any_kernel(tmp_path), rk.xor_popcount_args(*SHAPES["k0"]),
                           warmup=0, repeat=1)
        assert time.monotonic() - t0 < 20 and len(held) >= 2   # two attempts, each given up after ~1 s
    finally:
        stop.set()
        th.join()
        for c in held:
            c.close()
        srv.close()


def _any_kernel(tmp_path):
    p = tmp_path / "k.so"
    p.write_bytes(b"not read before the connection")
    return p


# ---- CLI ------------------------------------------------------------------------------------------------
def test_cli_devices_check_over_ssh(ssh_board, ssh_client_key, ssh_known_hosts, tmp_path, capsys):
    from nasbnn_hw.cli import main
    d = tmp_path / "devices"
    d.mkdir()
    base = (f'runner = "ssh"\nhost = "{ssh_board.host}"\nport = {ssh_board.port}\nuser = "{ssh_board.user}"\n'
            f'identity_file = "{ssh_client_key}"\nknown_hosts = "{ssh_known_hosts}"\nssh_config = ""\n')
    (d / "mybox.toml").write_text(base + 'target = {kind = "llvm", mcpu = "native"}\n')
    (d / "wrongarch.toml").write_text(base + f'cross_compiler = "{ARM_CC}"\ntarget = {{kind = "llvm", '
                                      'mtriple = "aarch64-linux-gnu"}\n')
    assert main(["devices", "--devices-dir", str(d)]) == 0
    assert "mybox" in capsys.readouterr().out
    assert main(["devices", "--devices-dir", str(d), "check", "mybox"]) == 0
    out = capsys.readouterr().out
    assert f"uname -m: {os.uname().machine}" in out and "matches" in out
    if shutil.which(ARM_CC):
        assert main(["devices", "--devices-dir", str(d), "check", "wrongarch"]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "aarch64" in err
    if shutil.which(ARM_CC) and shutil.which("qemu-aarch64"):
        (d / "emu.toml").write_text(base + f'cross_compiler = "{ARM_CC}"\ntarget = {{kind = "llvm", '
                                    'mtriple = "aarch64-linux-gnu"}\n'
                                    'exec_wrapper = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]\n')
        assert main(["devices", "--devices-dir", str(d), "check", "emu"]) == 0
        captured = capsys.readouterr()
        assert "harness runs as aarch64" in captured.out and "emulation" in captured.err
