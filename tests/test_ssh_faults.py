"""The fault matrix of the SSH runner against real servers: board killed (back later; or for good, then
resumed), frozen (SIGSTOP/SIGCONT), hung remote command, kernel that never returns, link down then up
(veth in a network namespace), 5% packet loss (nftables). Each runs a campaign of several measurements
into a MeasurementStore that must complete or stop with a clear message, with no lost or duplicated rows
and no work directory left on the board."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nasbnn_hw.profiling.runners import get_runner
from nasbnn_hw.profiling.store import MeasurementStore

import runner_kernels as rk

pytest.register_assert_rewrite("ssh_fixtures")     # its helpers assert too
from sshd_server import user_pids
from ssh_fixtures import (DEV, IS_ROOT, SHAPES, assert_rows, big_repeat_for, campaign, items_for, later, need,
                          profile_for, when_harness_runs, work_dirs)

pytest_plugins = ["ssh_fixtures"]     # fixtures: xor_kernels, ssh_client_key, ssh_board, ssh_known_hosts, netns_ssh_board


def test_board_killed_mid_campaign_and_back(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels, tmp_path):
    items = items_for(xor_kernels, big_repeat=big_repeat_for(0.4, xor_kernels))
    dirs_before = work_dirs(ssh_board.user)
    store = MeasurementStore(tmp_path / "m.db")

    def before(key):
        if key == "big":
            # power loss while the big kernel runs; back after a reboot (same port and host key)
            when_harness_runs(ssh_board.user, ssh_board.crash, ssh_board.start, 2.0)
    with get_runner(profile_for(ssh_board, ssh_client_key, ssh_known_hosts)) as r:
        status, msg, failed = campaign(r, items, store, before)
        assert r.reconnects >= 1
    assert status == "completed", msg
    assert not failed
    assert_rows(store, SHAPES)
    assert work_dirs(ssh_board.user) == dirs_before, "work directories left on the board"


def test_board_killed_campaign_stops_then_resumes(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels, tmp_path):
    items = items_for(xor_kernels, big_repeat=big_repeat_for(0.4, xor_kernels))
    store = MeasurementStore(tmp_path / "m.db")
    prof = profile_for(ssh_board, ssh_client_key, ssh_known_hosts, retries=2, backoff=0.2)
    done_before = [k for k, *_ in items[:[k for k, *_ in items].index("big")]]

    def before(key):
        if key == "big":
            when_harness_runs(ssh_board.user, ssh_board.crash)          # and stays down
    t0 = time.monotonic()
    with get_runner(prof) as r:
        status, msg, failed = campaign(r, items, store, before)
    assert status == "stopped"
    assert f"device '{DEV}'" in msg and "unavailable" in msg and "resume" in msg
    assert time.monotonic() - t0 < 20
    assert_rows(store, done_before)
    ssh_board.start()
    with get_runner(prof) as r:              # later: resume, measuring only what is missing
        status, msg, failed = campaign(r, items, store)
    assert status == "completed", msg
    assert_rows(store, SHAPES)


def test_board_frozen_then_resumed(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels, tmp_path):
    items = items_for(xor_kernels, big_repeat=big_repeat_for(0.4, xor_kernels))
    dirs_before = work_dirs(ssh_board.user)
    store = MeasurementStore(tmp_path / "m.db")

    def before(key):
        if key == "big":
            # SIGSTOP: the kernel still ACKs TCP, nothing answers
            when_harness_runs(ssh_board.user, ssh_board.freeze, ssh_board.thaw, 10.0)
    t0 = time.monotonic()
    with get_runner(profile_for(ssh_board, ssh_client_key, ssh_known_hosts, timeouts={"connect": 2, "command": 6, "transfer": 6})) as r:
        status, msg, failed = campaign(r, items, store, before)
    assert status == "completed", msg
    assert time.monotonic() - t0 > 8, "the freeze was not noticed"
    assert not failed
    assert_rows(store, SHAPES)
    assert work_dirs(ssh_board.user) == dirs_before, "work directories left on the board"


def test_hung_remote_command_is_killed_and_retried(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels, tmp_path):
    need(IS_ROOT or ssh_board.user == os.environ.get("USER", ssh_board.user),
         "signalling the board user's processes needs root or the same user")
    items = items_for(xor_kernels, big_repeat=big_repeat_for(0.4, xor_kernels))
    dirs_before = work_dirs(ssh_board.user)
    store = MeasurementStore(tmp_path / "m.db")
    stopped, older = [], set(user_pids(ssh_board.user, "nasbnn-harness"))

    def stop_harness():
        for _ in range(200):
            pids = [p for p in user_pids(ssh_board.user, "nasbnn-harness") if p not in older]
            if pids:
                os.kill(pids[0], 19)        # SIGSTOP the harness only: the board itself keeps answering
                stopped.append(pids[0])
                return
            time.sleep(0.01)

    def before(key):
        if key == "big":
            later(0.05, stop_harness)
    with get_runner(profile_for(ssh_board, ssh_client_key, ssh_known_hosts, timeouts={"connect": 2, "command": 6, "transfer": 6})) as r:
        status, msg, failed = campaign(r, items, store, before)
        assert r.reconnects == 0, "a hung command on a live board needs no reconnect"
    assert stopped, "the harness was not seen running"
    time.sleep(0.2)
    assert not Path(f"/proc/{stopped[0]}").exists(), "the hung process must be killed by PID"
    assert status == "completed" and not failed, (msg, failed)
    assert_rows(store, SHAPES)
    assert work_dirs(ssh_board.user) == dirs_before, "work directories left on the board"


def test_kernel_that_never_returns_times_out(ssh_board, ssh_client_key, ssh_known_hosts, xor_kernels, tmp_path):
    hang = rk.build_hanging_library(tmp_path / "hang.so")
    libs = {"k0": xor_kernels["k0"], "k1": xor_kernels["k1"]}
    items = items_for(libs)
    items.insert(1, ("hang", hang, rk.xor_popcount_args(*SHAPES["k0"]), None, 1))
    dirs_before = work_dirs(ssh_board.user)
    store = MeasurementStore(tmp_path / "m.db")
    with get_runner(profile_for(ssh_board, ssh_client_key, ssh_known_hosts, timeouts={"connect": 2, "command": 2, "transfer": 3})) as r:
        status, msg, failed = campaign(r, items, store)
    assert status == "completed"
    assert [k for k, _ in failed] == ["hang"] and "killed the hung process" in failed[0][1]
    assert_rows(store, libs)
    assert work_dirs(ssh_board.user) == dirs_before, "work directories left on the board"
    time.sleep(0.2)
    assert user_pids(ssh_board.user, "nasbnn-harness") == []


def test_link_down_then_up(netns_ssh_board, ssh_client_key, xor_kernels, tmp_path):
    srv = netns_ssh_board
    items = items_for(xor_kernels, big_repeat=big_repeat_for(0.4, xor_kernels))
    store = MeasurementStore(tmp_path / "m.db")
    link = lambda state: subprocess.run(["ip", "link", "set", srv.host_if, state], check=True)  # noqa: E731

    def before(key):
        if key == "big":
            when_harness_runs(srv.user, lambda: link("down"), lambda: link("up"), 8.5)
    t0 = time.monotonic()
    try:
        with get_runner(profile_for(srv, ssh_client_key, srv.kh, timeouts={"connect": 2, "command": 6, "transfer": 6})) as r:
            status, msg, failed = campaign(r, items, store, before)
    finally:
        link("up")
    assert time.monotonic() - t0 > 7.5, "the link outage was not noticed"
    assert status == "completed", msg
    assert not failed
    assert_rows(store, SHAPES)


def test_packet_loss_5_percent(netns_ssh_board, ssh_client_key, xor_kernels, tmp_path):
    srv = netns_ssh_board
    need(shutil.which("nft") is not None, "nftables is not installed")
    rules = f"""table inet nasbnnloss {{
      chain i {{ type filter hook input priority 0; policy accept; tcp dport {srv.port} numgen random mod 100 < 5 counter drop; }}
      chain o {{ type filter hook output priority 0; policy accept; tcp sport {srv.port} numgen random mod 100 < 5 counter drop; }}
    }}"""
    subprocess.run(["ip", "netns", "exec", srv.ns, "nft", "-f", "-"], input=rules, text=True, check=True)
    store = MeasurementStore(tmp_path / "m.db")
    prof = profile_for(srv, ssh_client_key, srv.kh, retries=6, timeouts={"connect": 10, "command": 20, "transfer": 20})
    t0 = time.monotonic()
    with get_runner(prof) as r:
        status, msg, failed = campaign(r, items_for(xor_kernels), store)
    listing = subprocess.run(["ip", "netns", "exec", srv.ns, "nft", "list", "table", "inet", "nasbnnloss"],
                             capture_output=True, text=True).stdout
    dropped = sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))
    print(f"\n5% loss each way: campaign of {len(SHAPES)} in {time.monotonic() - t0:.1f}s, {dropped} packets dropped")
    assert status == "completed", msg
    assert not failed
    assert dropped > 0
    assert_rows(store, SHAPES)
