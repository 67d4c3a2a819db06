"""Shared pieces of the runner tests: real servers (OpenSSH on 127.0.0.1 or in a network namespace),
small TVM kernels, device profiles pointing at the servers, and a campaign loop that stores results the way
the profiler does (skip stored keys, add each result at once), with checks for lost or duplicated rows."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from device_profiles import validate_profile
from nasbnn_hw.profiling.runners import BoardUnavailable, KernelError, KernelTimeout
from nasbnn_hw.profiling.runners.inputs import input_arrays
from nasbnn_hw.profiling.runners.local import LocalRunner
from nasbnn_hw.profiling.store import Measurement

import runner_kernels as rk
from sshd_server import SshServer, have_sshd, keygen, login_user

IS_ROOT = os.geteuid() == 0
IN_CI = bool(os.environ.get("CI"))
HOST_TARGET = {"kind": "llvm", "mcpu": "native"}
ARM_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
ARM_CC = "aarch64-linux-gnu-gcc"
DEV, TGT, TVMV = "testboard", "test-target", "test"
SHAPES = {"k0": (16, 32, 4), "k1": (32, 32, 8), "k2": (8, 64, 2), "big": (256, 256, 32)}


def need(ok: bool, reason: str) -> None:
    """Skip when a tool is missing locally; in CI (which installs everything, as root) fail instead."""
    if not ok:
        if IN_CI:
            pytest.fail(f"{reason} (CI installs it through .ci/run and runs as root)")
        pytest.skip(reason)


# ---- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def xor_kernels(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernels")
    libs = {k: rk.build_xor_popcount(*s, HOST_TARGET, d / f"{k}.so") for k, s in SHAPES.items()}
    return libs


@pytest.fixture(scope="session")
def ssh_client_key(tmp_path_factory):
    d = tmp_path_factory.mktemp("client")
    d.chmod(0o700)
    return keygen(d / "id_ed25519", "test-client")


def _server(request, ssh_client_key, **kw) -> SshServer:
    need(have_sshd(), "openssh-server is not installed (/usr/sbin/sshd)")
    d = Path(__import__("tempfile").mkdtemp(prefix="nasbnn-sshd-"))
    request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
    srv = SshServer(d, Path(str(ssh_client_key) + ".pub"), user=login_user(), **kw)
    request.addfinalizer(srv.stop)
    srv.start()
    return srv


@pytest.fixture
def ssh_board(request, ssh_client_key):
    return _server(request, ssh_client_key)


@pytest.fixture
def ssh_known_hosts(tmp_path, ssh_board):
    p = tmp_path / "known_hosts"
    p.write_text(ssh_board.known_hosts_line())
    return p


_NETNS_SEQ = [0]


@pytest.fixture
def netns_ssh_board(request, ssh_client_key, tmp_path):
    """sshd inside a network namespace, reached at 10.201.X.2 through a veth pair made for the test."""
    need(IS_ROOT, "network namespaces need root")
    need(shutil.which("ip") is not None, "iproute2 is not installed")
    _NETNS_SEQ[0] += 1
    idx = (os.getpid() * 7 + _NETNS_SEQ[0]) % 250
    ns, host_if, ns_if = f"nbt{idx}", f"nbh{idx}", f"nbb{idx}"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True)  # noqa: E731
    for stale in (["ip", "link", "del", host_if], ["ip", "netns", "del", ns]):
        subprocess.run(stale, capture_output=True)
    sh("ip", "netns", "add", ns)

    def teardown():
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    request.addfinalizer(teardown)
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    sh("ip", "link", "set", ns_if, "netns", ns)
    sh("ip", "addr", "add", f"10.201.{idx}.1/30", "dev", host_if)
    sh("ip", "link", "set", host_if, "up")
    sh("ip", "-n", ns, "addr", "add", f"10.201.{idx}.2/30", "dev", ns_if)
    sh("ip", "-n", ns, "link", "set", ns_if, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    srv = _server(request, ssh_client_key, host=f"10.201.{idx}.2", netns=ns)
    srv.ns, srv.host_if = ns, host_if
    kh = tmp_path / "known_hosts"
    kh.write_text(srv.known_hosts_line())
    srv.kh = kh
    return srv


HOSTILE = "we ird '$(touch PWNED1);\"`touch PWNED2`;touch PWNED3; x"   # a shell-injection payload as a name


@pytest.fixture
def hostile_remote_dir(ssh_board):
    """A remote_dir named by the payload, inside a fresh directory, both owned by the board's login user;
    removed afterwards."""
    base = Path(__import__("tempfile").mkdtemp(prefix="nasbnn-hostile-"))
    remote_dir = base / HOSTILE
    remote_dir.mkdir()
    if IS_ROOT:
        shutil.chown(base, ssh_board.user, ssh_board.user)
        shutil.chown(remote_dir, ssh_board.user, ssh_board.user)
    yield remote_dir
    shutil.rmtree(base, ignore_errors=True)


def assert_no_injection(user: str, *places: Path) -> None:
    """No PWNED* file appeared in the login user's home, /tmp, the current directory or `places`."""
    home = Path(os.path.expanduser(f"~{user}"))
    for where in (home, Path("/tmp"), Path.cwd(), *places):
        assert not list(where.glob("PWNED*")), f"shell injection happened in {where}"


def profile_for(srv, ssh_client_key, ssh_known_hosts, **kw):
    d = dict(name=DEV, runner="ssh", target=HOST_TARGET, host=srv.host, port=srv.port, user=srv.user,
             identity_file=str(ssh_client_key), known_hosts=str(ssh_known_hosts), ssh_config="", threads=1, warmup=1,
             repeat=3, retries=5, backoff=0.3, timeouts={"connect": 2, "command": 6, "transfer": 6})
    d.update(kw)
    return validate_profile(d, "test")


def items_for(libs, big_repeat=1):
    """Campaign items (key, lib, args, reference output, repeats). Small kernels get explicit inputs; the big
    one runs on the inputs the runner generates (same on every runner), also checked."""
    rng = np.random.default_rng(7)
    out = []
    for key, lib in libs.items():
        if key == "big":
            args = rk.xor_popcount_args(*SHAPES[key])
            a, b, _ = input_arrays(args)
            out.append((key, lib, args, rk.xor_popcount_ref(a, b), big_repeat))
        else:
            args = rk.xor_popcount_args(*SHAPES[key], rng=rng)
            out.append((key, lib, args, rk.xor_popcount_ref(args[0].data, args[1].data), 3))
    return out


def campaign(runner, items, store, before=None):
    """What a profiler does: skip stored keys, time, check, store at once. Stops on BoardUnavailable;
    a kernel that fails or hangs is skipped. Returns (status, message, failed keys)."""
    failed = []
    for key, lib, args, ref, repeat in items:
        if store.has(DEV, TGT, TVMV, "layer", key):
            continue
        if before:
            before(key)
        try:
            t = runner.time_library(lib, args, warmup=1, repeat=repeat, return_outputs=True)
        except BoardUnavailable as e:
            return "stopped", str(e), failed
        except (KernelError, KernelTimeout) as e:
            failed.append((key, str(e)))
            continue
        assert len(t.samples) == repeat and all(s > 0 for s in t.samples)
        np.testing.assert_array_equal(t.outputs[0], ref)
        assert store.add(Measurement(DEV, TGT, TVMV, "layer", key, {"key": key}, t.median, t.iqr, repeat, t.samples))
    return "completed", "", failed


def assert_rows(store, keys):
    rows = [m.key for m in store.query(device=DEV)]
    assert sorted(rows) == sorted(keys), "lost or duplicated rows"
    assert len(rows) == len(set(rows))


def big_repeat_for(seconds: float, libs) -> int:
    """Repeats of the big kernel that take about `seconds` here (so a fault lands inside the command)."""
    t = LocalRunner(threads=1).time_library(libs["big"], rk.xor_popcount_args(*SHAPES["big"]), warmup=1, repeat=5)
    return max(3, int(seconds / min(t.samples)))       # the fastest sample: the least disturbed by load


def work_dirs(user: str) -> set[Path]:
    """The runner's work directories on the (loopback) board that belong to `user`."""
    import pwd
    uid = pwd.getpwnam(user).pw_uid
    return {p for p in Path("/tmp").glob("nasbnn-hw.*") if p.stat().st_uid == uid}


def when_harness_runs(user: str, fault, undo=None, undo_after: float = 0.0):
    """In a thread: as soon as a harness process of `user` that is not running yet appears, call `fault()`
    (so the fault lands inside the command, whatever the machine's load); `undo()` `undo_after` s later."""
    from sshd_server import user_pids
    older = set(user_pids(user, "nasbnn-harness"))

    def watch():
        for _ in range(1000):
            if [p for p in user_pids(user, "nasbnn-harness") if p not in older]:
                fault()
                if undo:
                    later(undo_after, undo)
                return
            time.sleep(0.005)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def later(delay: float, fn):
    t = threading.Timer(delay, fn)
    t.daemon = True
    t.start()
    return t
